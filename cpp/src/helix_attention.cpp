// The Helix attention step on the CPU, the pieces both devices build the same way, and the step of a
// PagedKVCache-held layer (contract: helix/helix_attention.hpp; the CUDA twin: cuda/helix_attention.cu).
#include "helix/helix_attention.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "helix/helix_attention_expanded.hpp"
#include "helix/ops/kv_append.hpp"
#include "helix/ops/merge_states.hpp"

namespace helix {

namespace {

// Every argument of helix_attention_on_cache but the step's positions and sequences (BlockTable::plan_step
// checks those), in the dtypes the device runs.
void validate(const Communicator& cp_comm, const PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
              const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index, float scale,
              int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out, const TensorView& q_expanded,
              const TensorView& w_uk, Device device) {
  const BlockTable& table = cache.table();
  HELIX_CHECK_ARG(std::isfinite(scale) && scale > 0.f, "argument 'scale' must be finite and > 0, got ", scale);
  HELIX_CHECK_ARG(cp_comm.size() == table.cp_size() && cp_comm.rank() == table.cp_rank(),
                  "argument 'cache' is for CP rank ", table.cp_rank(), " of ", table.cp_size(),
                  " but the communicator is rank ", cp_comm.rank(), " of ", cp_comm.size());
  if (device == Device::Cpu) {
    check_tensor(q, "q", 3, {DType::Float32, DType::BFloat16});
  } else {
    check_tensor(q, "q", 3, {cache.pool().dtype()});  // the CUDA kernels read q and keys in one dtype
  }
  const int64_t T = q.dim(0), H = q.dim(1), D = q.dim(2), cp = cp_comm.size();
  HELIX_CHECK_ARG(D == cache.pool().head_dim(), "argument 'q' has width ", D, " but the cache holds rows of ",
                  cache.pool().head_dim());
  HELIX_CHECK_ARG(kv_lora_rank > 0 && kv_lora_rank <= D, "argument 'kv_lora_rank' must be in (0, ", D, "], got ",
                  kv_lora_rank);
  HELIX_CHECK_ARG(H % cp == 0, "argument 'q' has ", H, " heads, not divisible by the CP size ", cp);
  check_tensor(new_kv, "new_kv", 2, {cache.pool().dtype()});
  check_dim(new_kv, "new_kv", 0, T, "the number of query tokens");
  check_dim(new_kv, "new_kv", 1, D, "the cache row width");
  check_tensor(positions, "positions", 1, {DType::Int64});
  check_dim(positions, "positions", 0, T, "the number of query tokens");
  check_tensor(seq_ids, "seq_ids", 1, {DType::Int64});
  check_tensor(q_seq_index, "q_seq_index", 1, {DType::Int64});
  check_dim(q_seq_index, "q_seq_index", 0, T, "the number of query tokens");
  int64_t W = kv_lora_rank;
  if (w_uv.data != nullptr) {
    check_tensor(w_uv, "w_uv", 3, {DType::Float32, DType::BFloat16});
    check_dim(w_uv, "w_uv", 0, H, "the number of heads of q");
    check_dim(w_uv, "w_uv", 2, kv_lora_rank, "kv_lora_rank");
    W = w_uv.dim(1);
  }
  check_tensor(out, "out", 3, {DType::Float32});
  check_dim(out, "out", 0, T, "the number of query tokens");
  check_dim(out, "out", 1, H / cp, "the heads of one chunk (H_tp / cp)");
  check_dim(out, "out", 2, W, "the exchanged width");
  HELIX_CHECK_ARG((q_expanded.data == nullptr) == (w_uk.data == nullptr),
                  "arguments 'q_expanded' and 'w_uk' (the expanded form's inputs) must be given together");
  if (w_uk.data != nullptr) {
    check_tensor(w_uk, "w_uk", 3, {DType::Float32, DType::BFloat16});
    check_dim(w_uk, "w_uk", 0, H, "the number of heads of q");
    check_dim(w_uk, "w_uk", 1, kv_lora_rank, "kv_lora_rank");
    check_tensor(q_expanded, "q_expanded", 3, {DType::Float32});
    check_dim(q_expanded, "q_expanded", 0, T, "the number of query tokens");
    check_dim(q_expanded, "q_expanded", 1, H, "the number of heads of q");
    check_dim(q_expanded, "q_expanded", 2, w_uk.dim(2) + D - kv_lora_rank, "qk_nope_head_dim + the rope dim");
  }
}

}  // namespace

PagedMlaAttentionParams local_attention_params(const HelixAttentionParams& p, float* o_part, float* lse_part) {
  PagedMlaAttentionParams a;
  a.q = p.q;
  a.q_pos = p.q_pos;
  a.q_seq = p.q_seq;
  a.pool = p.pool;
  a.block_tables = p.block_tables;
  a.kv_pos = p.kv_pos;
  a.num_slots = p.num_slots;
  a.o = o_part;
  a.lse = lse_part;
  a.T = p.T;
  a.H = p.H;
  a.D = p.D;
  a.R = p.R;
  a.B = p.B;
  a.max_blocks = p.max_blocks;
  a.tokens_per_block = p.tokens_per_block;
  a.max_num_slots = p.max_num_slots;
  a.scale = p.scale;
  a.q_dtype = p.q_dtype;
  a.kv_dtype = p.kv_dtype;
  return a;
}

HeadLinearParams wuv_params(const HelixAttentionParams& p, const void* o_part, DType o_dtype, float* values) {
  return HeadLinearParams{o_part,    p.w_uv, values,    p.T, p.H,          p.W,    p.R,
                          p.H * p.R, p.R,    p.H * p.W, p.W, p.w_uv_dtype, o_dtype};
}

int64_t helix_exchange_bytes(int64_t cp, int64_t T, int64_t H_tp, int64_t width) {
  return (cp - 1) * T * (H_tp / cp) * (width + 1) * 4;
}

namespace {

// The workspace of helix_attention_cpu, in float counts: o_part [T, H, R], lse_part [T, H], values [T, H, W]
// (with W_UV), then with cp > 1 send and recv [cp, T * Hc * (W + 1)] and o_parts [cp, T * Hc, W],
// lse_parts [cp, T * Hc]; lse_out [T * Hc]. Each piece starts on a 64-byte boundary.
struct CpuWorkspace {
  float *o_part, *lse_part, *values, *send, *recv, *o_parts, *lse_parts, *lse_out;
  size_t floats = 0;
  CpuWorkspace(const HelixAttentionParams& p, int64_t cp, float* base) {
    const int64_t T = p.T, H = p.H, Hc = H / cp, W = p.W, block = T * Hc * (W + 1);
    const auto take = [&](int64_t n) {
      float* at = base == nullptr ? nullptr : base + floats;
      floats += (static_cast<size_t>(n) + 15) & ~size_t{15};
      return at;
    };
    o_part = take(T * H * p.R);
    lse_part = take(T * H);
    values = p.w_uv != nullptr ? take(T * H * W) : o_part;
    const int64_t exchanged = cp > 1 ? cp * block : 0;
    send = take(exchanged);
    recv = take(exchanged);
    o_parts = cp > 1 ? take(cp * T * Hc * W) : values;
    lse_parts = cp > 1 ? take(cp * T * Hc) : lse_part;
    lse_out = take(T * Hc);
  }
};

}  // namespace

size_t helix_attention_workspace_bytes_cpu(const HelixAttentionParams& p, int64_t cp) {
  return CpuWorkspace(p, cp, nullptr).floats * sizeof(float);
}

void helix_attention_cpu(const HelixAttentionParams& p, Communicator& cp_comm, const HelixStageMark& mark) {
  const int64_t T = p.T, H = p.H, W = p.W, cp = cp_comm.size(), Hc = H / cp;
  const auto done = [&](HelixStage stage) {
    if (mark) mark(stage);
  };
  std::vector<float> owned;  // the workspace when the caller gave none
  float* base = static_cast<float*>(p.workspace);
  if (base == nullptr) {
    owned.resize(helix_attention_workspace_bytes_cpu(p, cp) / sizeof(float));
    base = owned.data();
  }
  const CpuWorkspace ws(p, cp, base);

  const bool expanded = choose_attention_form(p) == AttentionForm::Expanded;
  HELIX_CHECK(expanded || p.q != nullptr, "helix_attention: the absorbed form needs the absorbed queries q");
  kv_append_cpu(KvAppendParams{p.pool, p.new_kv, p.new_rows, T, p.D * dtype_size(p.kv_dtype)});
  done(HelixStage::Append);
  if (expanded) {
    expanded_attention_cpu(p, ws.values, ws.lse_part);  // values [T, H, W]: W_UV applied when W = Dv
    done(HelixStage::Attention);
  } else {
    paged_mla_attention_cpu(local_attention_params(p, ws.o_part, ws.lse_part));
    done(HelixStage::Attention);
    if (p.w_uv != nullptr) head_linear_cpu(wuv_params(p, ws.o_part, DType::Float32, ws.values));
  }
  done(HelixStage::Project);

  // o_parts [cp, T*Hc, W], lse_parts [cp, T*Hc]: the cp partial states of this rank's head chunk (one CP
  // rank: its own state, no exchange).
  if (cp > 1) {
    // Pack: block c = [T, Hc, W] values of head chunk c, then [T, Hc] lse. One message per destination.
    const int64_t block = T * Hc * (W + 1);
    for (int64_t c = 0; c < cp; ++c) {
      float* dst = ws.send + c * block;
      for (int64_t t = 0; t < T; ++t) {
        std::memcpy(dst + t * Hc * W, ws.values + (t * H + c * Hc) * W, static_cast<size_t>(Hc * W) * 4);
        std::memcpy(dst + T * Hc * W + t * Hc, ws.lse_part + t * H + c * Hc, static_cast<size_t>(Hc) * 4);
      }
    }
    cp_comm.all_to_all(ws.send, ws.recv, static_cast<size_t>(block) * 4);
    done(HelixStage::Exchange);
    for (int64_t c = 0; c < cp; ++c) {
      const float* src = ws.recv + c * block;
      std::memcpy(ws.o_parts + c * T * Hc * W, src, static_cast<size_t>(T * Hc * W) * 4);
      std::memcpy(ws.lse_parts + c * T * Hc, src + T * Hc * W, static_cast<size_t>(T * Hc) * 4);
    }
  }
  merge_states_cpu(MergeStatesParams{ws.o_parts, ws.lse_parts, p.out, ws.lse_out, cp, T * Hc, W});
  done(HelixStage::Merge);
}

void helix_attention_on_cache(Communicator& cp_comm, PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
                              const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                              float scale, int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                              const TensorView& q_expanded, const TensorView& w_uk, Device device,
                              const std::function<void(const HelixAttentionParams&)>& run) {
  validate(cp_comm, cache, q, new_kv, positions, seq_ids, q_seq_index, scale, kv_lora_rank, w_uv, out, q_expanded, w_uk,
           device);
  BlockTable& table = cache.table();
  const StepTokens step{positions.ptr<int64_t>(), q_seq_index.ptr<int64_t>(), seq_ids.ptr<int64_t>(), q.dim(0),
                        seq_ids.dim(0)};
  StepPlan plan = table.plan_step(step);
  const std::vector<int64_t> new_rows = table.commit_step(plan);
  try {
    const BatchView batch = table.batch_view(step.seq_ids, step.B);
    HelixAttentionParams p;
    p.q = q.data;
    p.new_kv = new_kv.data;
    p.new_rows = new_rows.data();
    p.q_pos = step.positions;
    p.q_seq = step.q_seq_index;
    p.pool = cache.pool().data();
    p.block_tables = batch.block_tables.data();
    p.kv_pos = table.row_positions();
    p.num_slots = batch.num_slots.data();
    p.w_uv = w_uv.data;
    p.out = out.ptr<float>();
    p.T = step.T;
    p.H = q.dim(1);
    p.D = q.dim(2);
    p.R = kv_lora_rank;
    p.W = out.dim(2);
    p.B = step.B;
    p.max_blocks = batch.max_blocks;
    p.tokens_per_block = table.tokens_per_block();
    p.max_num_slots = batch.max_num_slots;
    p.scale = scale;
    p.q_dtype = q.dtype;
    p.kv_dtype = cache.pool().dtype();
    p.w_uv_dtype = w_uv.data != nullptr ? w_uv.dtype : DType::Float32;
    if (w_uk.data != nullptr) {
      p.q_expanded = q_expanded.ptr<float>();
      p.w_uk = w_uk.data;
      p.w_uk_dtype = w_uk.dtype;
      p.Dn = w_uk.dim(2);
    }
    run(p);
  } catch (...) {
    table.undo_step(plan);
    throw;
  }
}

}  // namespace helix
