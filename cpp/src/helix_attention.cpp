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

// Validation of everything helix_attention reads or writes; returns W, the exchanged width.
int64_t validate(const Communicator& cp_comm, const PagedKVCache& cache, const TensorView& q, const TensorView& new_kv,
                 const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                 int64_t kv_lora_rank, const TensorView& w_uv, const TensorView& out) {
  HELIX_CHECK_ARG(cp_comm.size() == cache.cp_size() && cp_comm.rank() == cache.cp_rank(),
                  "argument 'cache' is for CP rank ", cache.cp_rank(), " of ", cache.cp_size(),
                  " but the communicator is rank ", cp_comm.rank(), " of ", cp_comm.size());
  check_tensor(q, "q", 3, {DType::Float32, DType::BFloat16});
  const int64_t T = q.dim(0), H = q.dim(1), D = q.dim(2), cp = cp_comm.size();
  HELIX_CHECK_ARG(D == cache.head_dim(), "argument 'q' has width ", D, " but the cache holds rows of ",
                  cache.head_dim());
  HELIX_CHECK_ARG(kv_lora_rank > 0 && kv_lora_rank <= D, "argument 'kv_lora_rank' must be in (0, ", D, "], got ",
                  kv_lora_rank);
  HELIX_CHECK_ARG(H % cp == 0, "argument 'q' has ", H, " heads, not divisible by the CP size ", cp);
  check_tensor(new_kv, "new_kv", 2, {cache.dtype()});
  check_dim(new_kv, "new_kv", 0, T, "the number of query tokens");
  check_dim(new_kv, "new_kv", 1, D, "the cache row width");
  check_tensor(positions, "positions", 1, {DType::Int64});
  check_dim(positions, "positions", 0, T, "the number of query tokens");
  check_tensor(seq_ids, "seq_ids", 1, {DType::Int64});
  check_tensor(q_seq_index, "q_seq_index", 1, {DType::Int64});
  check_dim(q_seq_index, "q_seq_index", 0, T, "the number of query tokens");
  const int64_t B = seq_ids.dim(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = q_seq_index.ptr<int64_t>()[t];
    HELIX_CHECK_ARG(b >= 0 && b < B, "argument 'q_seq_index'[", t, "] = ", b, " is outside [0, ", B, ")");
    HELIX_CHECK_ARG(positions.ptr<int64_t>()[t] >= 0, "argument 'positions'[", t, "] is negative");
  }
  for (int64_t b = 0; b < B; ++b) {
    HELIX_CHECK_ARG(cache.has_sequence(seq_ids.ptr<int64_t>()[b]), "argument 'seq_ids'[", b,
                    "] = ", seq_ids.ptr<int64_t>()[b], " is not a sequence of the cache");
  }
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
  return W;
}

// Appends the owned rows of the batch to the cache, sequence by sequence, all or nothing.
void append_owned(PagedKVCache& cache, const TensorView& new_kv, const int64_t* positions, const int64_t* seq_ids,
                  const int64_t* q_seq_index, int64_t T, int64_t B) {
  const int64_t row_bytes = cache.row_bytes();
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(B));
  for (int64_t t = 0; t < T; ++t) {
    if (cache.owns(positions[t])) tokens[static_cast<size_t>(q_seq_index[t])].push_back(t);
  }
  int64_t needed = 0;
  std::vector<std::vector<int64_t>> pos(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t : tokens[b]) pos[b].push_back(positions[t]);
    needed += cache.blocks_needed(seq_ids[b], pos[b].data(), static_cast<int64_t>(pos[b].size()));
  }
  if (needed > cache.num_free_blocks()) {
    throw KVCacheFullError(detail::concat("KV cache of CP rank ", cache.cp_rank(), " needs ", needed,
                                          " more blocks for this step but has ", cache.num_free_blocks(), " free"));
  }
  std::vector<unsigned char> rows;
  const auto* src = static_cast<const unsigned char*>(new_kv.data);
  for (int64_t b = 0; b < B; ++b) {
    if (tokens[b].empty()) continue;
    rows.resize(tokens[b].size() * static_cast<size_t>(row_bytes));
    for (size_t i = 0; i < tokens[b].size(); ++i) {
      std::memcpy(rows.data() + i * row_bytes, src + tokens[b][i] * row_bytes, static_cast<size_t>(row_bytes));
    }
    cache.append(seq_ids[b], pos[b].data(), static_cast<int64_t>(pos[b].size()), rows.data());
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
  const int64_t W = validate(cp_comm, cache, q, new_kv, positions, seq_ids, q_seq_index, kv_lora_rank, w_uv, out);
  const int64_t T = q.dim(0), H = q.dim(1), R = kv_lora_rank, cp = cp_comm.size(), Hc = H / cp;
  const int64_t B = seq_ids.dim(0);
  HelixAttentionTimings local;
  double t0 = now();

  append_owned(cache, new_kv, positions.ptr<int64_t>(), seq_ids.ptr<int64_t>(), q_seq_index.ptr<int64_t>(), T, B);
  double t1 = now();
  local.append_s = t1 - t0;

  // Partial attention over the local shard: o_part [T, H, R], lse_part [T, H].
  std::vector<float> o_part(static_cast<size_t>(T * H * R)), lse_part(static_cast<size_t>(T * H));
  TensorView o_view{o_part.data(), DType::Float32, {T, H, R}};
  TensorView lse_view{lse_part.data(), DType::Float32, {T, H}};
  paged_mla_attention(q, positions, cache, seq_ids, q_seq_index, scale, kv_lora_rank, o_view, lse_view);
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
