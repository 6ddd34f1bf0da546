#include "helix/helix_attention.hpp"

#include <chrono>
#include <cstring>
#include <vector>

#include "helix/ops/attention.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/merge_states.hpp"

namespace helix {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Validation of every argument of the PagedKVCache overload but the step's positions and sequences
// (BlockTable::plan_step checks those).
void validate(const Communicator& cp_comm, const PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
              const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
              int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out) {
  const BlockTable& table = cache.table();
  HELIX_CHECK_ARG(cp_comm.size() == table.cp_size() && cp_comm.rank() == table.cp_rank(),
                  "argument 'cache' is for CP rank ", table.cp_rank(), " of ", table.cp_size(),
                  " but the communicator is rank ", cp_comm.rank(), " of ", cp_comm.size());
  check_tensor(q, "q", 3, {DType::Float32, DType::BFloat16});
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
}

// Partial attention of every token over the keys its sequence has on this rank: o [T, H, R], lse [T, H].
void local_attention(const BlockTable& table, const KVPool& pool, const StepTokens& step, const TensorView& q,
                     float scale, int64_t R, float* o, float* lse) {
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(step.B));  // the query tokens of each sequence
  for (int64_t t = 0; t < step.T; ++t) tokens[step.q_seq_index[t]].push_back(t);
  MlaAttentionParams p;
  p.q = q.data;
  p.q_pos = step.positions;
  p.o = o;
  p.lse = lse;
  p.T = step.T;
  p.H = q.dim(1);
  p.D = q.dim(2);
  p.R = R;
  p.scale = scale;
  p.q_dtype = q.dtype;
  for (int64_t b = 0; b < step.B; ++b) {
    if (tokens[b].empty()) continue;
    p.tokens = tokens[b].data();
    p.num_tokens = static_cast<int64_t>(tokens[b].size());
    paged_mla_attention_cpu(p, pool, table.view(step.seq_ids[b]));
  }
}

}  // namespace

int64_t helix_exchange_bytes(int64_t cp, int64_t T, int64_t H_tp, int64_t width) {
  return (cp - 1) * T * (H_tp / cp) * (width + 1) * 4;
}

void helix_attention(Communicator& cp_comm, PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
                     const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index, float scale,
                     int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                     HelixAttentionTimings* timings) {
  validate(cp_comm, cache, q, new_kv, positions, seq_ids, q_seq_index, kv_lora_rank, w_uv, out);
  const StepTokens step{positions.ptr<int64_t>(), q_seq_index.ptr<int64_t>(), seq_ids.ptr<int64_t>(), q.dim(0),
                        seq_ids.dim(0)};
  StepPlan plan = cache.table().plan_step(step);
  const std::vector<int64_t> new_rows = cache.table().commit_step(plan);
  try {
    helix_attention(cp_comm, cache.table(), cache.pool(), step, new_rows.data(), q, new_kv, scale, kv_lora_rank, w_uv,
                    out, timings);
  } catch (...) {
    cache.table().undo_step(plan);
    throw;
  }
}

void helix_attention(Communicator& cp_comm, const BlockTable& table, KVPool& pool, const StepTokens& step,
                     const int64_t* new_rows, const TensorView& q, const TensorView& new_kv, float scale,
                     int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out,
                     HelixAttentionTimings* timings) {
  const int64_t T = q.dim(0), H = q.dim(1), R = kv_lora_rank, cp = cp_comm.size(), Hc = H / cp;
  const int64_t W = out.dim(2);
  HelixAttentionTimings local;
  double t0 = now();

  pool.write_rows(new_rows, T, new_kv.data);
  double t1 = now();
  local.append_s = t1 - t0;

  // Partial attention over the local shard: o_part [T, H, R], lse_part [T, H].
  std::vector<float> o_part(static_cast<size_t>(T * H * R)), lse_part(static_cast<size_t>(T * H));
  local_attention(table, pool, step, q, scale, R, o_part.data(), lse_part.data());
  double t2 = now();
  local.attention_s = t2 - t1;

  // Optional W_UV before the exchange: values [T, H, W].
  std::vector<float> projected;
  const float* values = o_part.data();
  if (w_uv.data != nullptr) {
    projected.resize(static_cast<size_t>(T * H * W));
    HeadLinearParams hp;
    hp.x = o_part.data();
    hp.w = w_uv.data;
    hp.w_dtype = w_uv.dtype;
    hp.y = projected.data();
    hp.T = T;
    hp.H = H;
    hp.N = W;
    hp.K = R;
    hp.ldx = H * R;
    hp.x_head_stride = R;
    hp.ldy = H * W;
    hp.y_head_stride = W;
    head_linear_cpu(hp);
    values = projected.data();
  }
  double t3 = now();
  local.project_s = t3 - t2;

  // Pack: block c = [T, Hc, W] values of head chunk c, then [T, Hc] lse. One message per destination.
  const int64_t block = T * Hc * (W + 1);
  std::vector<float> send(static_cast<size_t>(cp * block)), recv(static_cast<size_t>(cp * block));
  for (int64_t c = 0; c < cp; ++c) {
    float* dst = send.data() + c * block;
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(dst + t * Hc * W, values + (t * H + c * Hc) * W, static_cast<size_t>(Hc * W) * 4);
      std::memcpy(dst + T * Hc * W + t * Hc, lse_part.data() + t * H + c * Hc, static_cast<size_t>(Hc) * 4);
    }
  }
  cp_comm.all_to_all(send.data(), recv.data(), static_cast<size_t>(block) * 4);
  double t4 = now();
  local.exchange_s = t4 - t3;

  // Unpack the cp partial states of this rank's chunk: o_parts [cp, T*Hc, W], lse_parts [cp, T*Hc].
  std::vector<float> o_parts(static_cast<size_t>(cp * T * Hc * W)), lse_parts(static_cast<size_t>(cp * T * Hc));
  for (int64_t c = 0; c < cp; ++c) {
    const float* src = recv.data() + c * block;
    std::memcpy(o_parts.data() + c * T * Hc * W, src, static_cast<size_t>(T * Hc * W) * 4);
    std::memcpy(lse_parts.data() + c * T * Hc, src + T * Hc * W, static_cast<size_t>(T * Hc) * 4);
  }
  std::vector<float> lse_out(static_cast<size_t>(T * Hc));
  MergeStatesParams mp;
  mp.o_parts = o_parts.data();
  mp.lse_parts = lse_parts.data();
  mp.o = out.ptr<float>();
  mp.lse = lse_out.data();
  mp.N = cp;
  mp.M = T * Hc;
  mp.D = W;
  merge_states_cpu(mp);
  local.merge_s = now() - t4;
  if (timings) *timings = local;
}

}  // namespace helix
