// The argument checks of the ops (helix/ops/<op>.hpp): the boundary where the bindings and the engine
// validate, once, and fill the Params that `<op>_cpu` and `cuda::launch_<op>` run without checking.
// Each check also says which dtypes and shapes the chosen device runs.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "helix/ops/attention.hpp"
#include "helix/ops/embedding.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/kv_append.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/merge_states.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"

namespace helix {

namespace {

// The float dtypes an elementwise op stores: float32 everywhere, bfloat16 on CUDA as well.
void check_float_tensor(const TensorView& t, const char* name, int64_t ndim, Device device) {
  if (device == Device::Cpu) {
    check_tensor(t, name, ndim, {DType::Float32});
  } else {
    check_tensor(t, name, ndim, {DType::Float32, DType::BFloat16});
  }
}

void check_not_overlapping(const TensorView& out, const char* out_name, const TensorView& in, const char* in_name) {
  HELIX_CHECK_ARG(!overlaps(out, in), "argument '", out_name, "' must not overlap '", in_name, "'");
}

}  // namespace

RmsNormParams check_rms_norm_args(const TensorView& x, const TensorView& weight, float eps, const TensorView& y,
                                  Device device) {
  check_float_tensor(x, "x", 2, device);
  check_tensor(weight, "weight", 1, {x.dtype});
  check_tensor(y, "out", 2, {x.dtype});
  const int64_t T = x.dim(0), D = x.dim(1);
  check_dim(weight, "weight", 0, D, "x.shape[1] (D)");
  check_dim(y, "out", 0, T, "x.shape[0] (T)");
  check_dim(y, "out", 1, D, "x.shape[1] (D)");
  HELIX_CHECK_ARG(eps > 0.f && std::isfinite(eps), "argument 'eps' must be a positive finite number, got ", eps);
  HELIX_CHECK_ARG(x.data == y.data || !overlaps(x, y), "argument 'out' must be 'x' itself or not overlap it");
  return RmsNormParams{x.data, weight.data, y.data, T, D, D, D, eps, x.dtype};
}

RopeParams check_rope_args(const TensorView& x, const TensorView& positions, const TensorView& inv_freq, int64_t offset,
                           float attention_factor, Device device) {
  HELIX_CHECK_ARG(x.ndim() == 2 || x.ndim() == 3, "argument 'x' must have shape [T, S] or [T, H, S], got ",
                  shape_str(x.shape));
  check_float_tensor(x, "x", x.ndim(), device);
  check_tensor(positions, "positions", 1, {DType::Int64});
  check_tensor(inv_freq, "inv_freq", 1, {DType::Float32});
  const int64_t T = x.dim(0), H = x.ndim() == 3 ? x.dim(1) : 1, S = x.dim(-1);
  const int64_t P = 2 * inv_freq.dim(0);
  check_dim(positions, "positions", 0, T, "x.shape[0] (T)");
  HELIX_CHECK_ARG(offset >= 0 && offset + P <= S, "argument 'offset' (", offset, ") must satisfy 0 <= offset and ",
                  "offset + rope_dim (", P, ") <= x.shape[-1] (", S, ")");
  HELIX_CHECK_ARG(std::isfinite(attention_factor), "argument 'attention_factor' must be finite");
  return RopeParams{
      x.data, positions.ptr<const int64_t>(), inv_freq.ptr<const float>(), T, H, S, offset, P, attention_factor,
      x.dtype};
}

SiluMulParams check_silu_mul_args(const TensorView& gate_up, const TensorView& out, Device device) {
  check_float_tensor(gate_up, "gate_up", 2, device);
  check_tensor(out, "out", 2, {gate_up.dtype});
  const int64_t T = gate_up.dim(0), F2 = gate_up.dim(1);
  HELIX_CHECK_ARG(F2 % 2 == 0, "argument 'gate_up' must have an even last dimension (2F), got ",
                  shape_str(gate_up.shape));
  check_dim(out, "out", 0, T, "gate_up.shape[0] (T)");
  check_dim(out, "out", 1, F2 / 2, "gate_up.shape[1] / 2 (F)");
  check_not_overlapping(out, "out", gate_up, "gate_up");
  return SiluMulParams{gate_up.data, out.data, T, F2 / 2, gate_up.dtype};
}

MoeRouteParams check_moe_route_args(const TensorView& logits, const TensorView& bias, int64_t top_k, int64_t n_group,
                                    int64_t topk_group, bool norm_topk_prob, float routed_scaling_factor,
                                    const TensorView& topk_idx, const TensorView& topk_weight, Device device) {
  check_tensor(logits, "logits", 2, {DType::Float32});
  check_tensor(bias, "bias", 1, {DType::Float32});
  check_tensor(topk_idx, "topk_idx", 2, {DType::Int32});
  check_tensor(topk_weight, "topk_weight", 2, {DType::Float32});
  const int64_t T = logits.dim(0), E = logits.dim(1);
  check_dim(bias, "bias", 0, E, "logits.shape[1] (number of experts)");
  HELIX_CHECK_ARG(n_group >= 1 && E % n_group == 0, "argument 'n_group' (", n_group,
                  ") must be >= 1 and divide the number of experts (", E, ")");
  HELIX_CHECK_ARG(topk_group >= 1 && topk_group <= n_group, "argument 'topk_group' (", topk_group,
                  ") must be in [1, n_group = ", n_group, "]");
  const int64_t eligible = topk_group * (E / n_group);
  HELIX_CHECK_ARG(top_k >= 1 && top_k <= eligible, "argument 'top_k' (", top_k,
                  ") must be in [1, topk_group * experts per group = ", eligible, "]");
  HELIX_CHECK_ARG(std::isfinite(routed_scaling_factor), "argument 'routed_scaling_factor' must be finite");
  if (device == Device::Cuda) {
    HELIX_CHECK_ARG(E <= kMoeRouteMaxExperts && n_group <= kMoeRouteMaxGroups, "argument 'logits': the CUDA router ",
                    "takes at most ", kMoeRouteMaxExperts, " experts in at most ", kMoeRouteMaxGroups, " groups, got ",
                    E, " experts in ", n_group, " groups (use device 'cpu')");
  }
  check_dim(topk_idx, "topk_idx", 0, T, "logits.shape[0] (T)");
  check_dim(topk_idx, "topk_idx", 1, top_k, "top_k");
  check_dim(topk_weight, "topk_weight", 0, T, "logits.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 1, top_k, "top_k");
  return MoeRouteParams{logits.ptr<const float>(),
                        bias.ptr<const float>(),
                        topk_idx.ptr<int32_t>(),
                        topk_weight.ptr<float>(),
                        T,
                        E,
                        top_k,
                        n_group,
                        topk_group,
                        norm_topk_prob,
                        routed_scaling_factor};
}

MoeExpertsParams check_moe_experts_args(const TensorView& h, const TensorView& topk_idx, const TensorView& topk_weight,
                                        const TensorView& gate_up, const TensorView& down, int64_t local_first,
                                        const TensorView& out, Device device) {
  check_tensor(h, "h", 2, {DType::Float32});
  check_tensor(topk_idx, "topk_idx", 2, {DType::Int32});
  check_tensor(topk_weight, "topk_weight", 2, {DType::Float32});
  check_tensor(gate_up, "gate_up", 3, {DType::Float32, DType::BFloat16});
  if (device == Device::Cpu) {
    check_tensor(down, "down", 3, {DType::Float32, DType::BFloat16});
  } else {
    check_tensor(down, "down", 3, {gate_up.dtype});  // the device path reads one weight dtype
  }
  const int64_t T = h.dim(0), hidden = h.dim(1), top_k = topk_idx.dim(1), n_local = gate_up.dim(0);
  check_dim(topk_idx, "topk_idx", 0, T, "h.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 0, T, "h.shape[0] (T)");
  check_dim(topk_weight, "topk_weight", 1, top_k, "topk_idx.shape[1] (top_k)");
  HELIX_CHECK_ARG(gate_up.dim(1) % 2 == 0, "argument 'gate_up' must have shape [n_local, 2F, hidden], got ",
                  shape_str(gate_up.shape));
  const int64_t F = gate_up.dim(1) / 2;
  check_dim(gate_up, "gate_up", 2, hidden, "h.shape[1] (hidden)");
  check_dim(down, "down", 0, n_local, "gate_up.shape[0] (n_local)");
  check_dim(down, "down", 1, hidden, "h.shape[1] (hidden)");
  check_dim(down, "down", 2, F, "gate_up.shape[1] / 2 (F)");
  HELIX_CHECK_ARG(local_first >= 0, "argument 'local_first' must be >= 0, got ", local_first);
  check_tensor(out, "out", 2, {DType::Float32});
  check_dim(out, "out", 0, T, "h.shape[0] (T)");
  check_dim(out, "out", 1, hidden, "h.shape[1] (hidden)");
  check_not_overlapping(out, "out", h, "h");
  if (device == Device::Cuda) {
    HELIX_CHECK_ARG(moe_experts_supported(T, top_k, n_local, hidden, F), "moe_experts: shape T=", T, " top_k=", top_k,
                    " n_local=", n_local, " hidden=", hidden, " F=", F,
                    " is not one the device path takes (T <= ", kMoeExpertsMaxTokens,
                    ", T * top_k <= 1024, n_local <= 1024, hidden and F multiples of 8)");
  }
  MoeExpertsParams p;
  p.h = h.ptr<const float>();
  p.topk_idx = topk_idx.ptr<const int32_t>();
  p.topk_weight = topk_weight.ptr<const float>();
  p.gate_up = gate_up.data;
  p.down = down.data;
  p.out = out.ptr<float>();
  p.T = T;
  p.top_k = top_k;
  p.hidden = hidden;
  p.F = F;
  p.local_first = local_first;
  p.n_local = n_local;
  p.gate_up_dtype = gate_up.dtype;
  p.down_dtype = down.dtype;
  return p;
}

LinearParams check_linear_args(const TensorView& x, const TensorView& w, const TensorView& out, bool accumulate,
                               Device device) {
  if (device == Device::Cpu) {
    check_tensor(x, "x", 2, {DType::Float32});
    check_tensor(w, "w", 2, {DType::Float32, DType::BFloat16});
    check_tensor(out, "out", 2, {DType::Float32});
  } else {
    check_tensor(x, "x", 2, {DType::Float32, DType::BFloat16});
    check_tensor(w, "w", 2, {x.dtype});  // cuBLAS takes both inputs in one dtype
    if (x.dtype == DType::BFloat16) {
      check_tensor(out, "out", 2, {DType::Float32, DType::BFloat16});
    } else {
      check_tensor(out, "out", 2, {DType::Float32});
    }
  }
  const int64_t T = x.dim(0), K = x.dim(1), N = w.dim(0);
  check_dim(w, "w", 1, K, "x.shape[1] (K)");
  check_dim(out, "out", 0, T, "x.shape[0] (T)");
  check_dim(out, "out", 1, N, "w.shape[0] (N)");
  check_not_overlapping(out, "out", x, "x");
  check_not_overlapping(out, "out", w, "w");
  return LinearParams{x.data, w.data, out.data, T, N, K, K, N, w.dtype, accumulate, x.dtype, out.dtype};
}

HeadLinearParams check_head_linear_args(const TensorView& x, const TensorView& w, const TensorView& out,
                                        Device device) {
  if (device == Device::Cpu) {
    check_tensor(x, "x", 3, {DType::Float32});
    check_tensor(w, "w", 3, {DType::Float32, DType::BFloat16});
  } else {
    check_tensor(x, "x", 3, {DType::Float32, DType::BFloat16});
    check_tensor(w, "w", 3, {x.dtype});
  }
  check_tensor(out, "out", 3, {DType::Float32});
  const int64_t T = x.dim(0), H = x.dim(1), K = x.dim(2), N = w.dim(1);
  check_dim(w, "w", 0, H, "x.shape[1] (H)");
  check_dim(w, "w", 2, K, "x.shape[2] (K)");
  check_dim(out, "out", 0, T, "x.shape[0] (T)");
  check_dim(out, "out", 1, H, "x.shape[1] (H)");
  check_dim(out, "out", 2, N, "w.shape[1] (N)");
  check_not_overlapping(out, "out", x, "x");
  check_not_overlapping(out, "out", w, "w");
  return HeadLinearParams{x.data, w.data, out.ptr<float>(), T, H, N, K, H * K, K, H * N, N, w.dtype, x.dtype};
}

EmbeddingParams check_embedding_args(const TensorView& ids, const TensorView& table, int64_t vocab_start,
                                     const TensorView& out, Device) {
  check_tensor(ids, "ids", 1, {DType::Int64});
  check_tensor(table, "table", 2, {DType::Float32, DType::BFloat16});
  check_tensor(out, "out", 2, {DType::Float32});
  const int64_t T = ids.dim(0), hidden = table.dim(1);
  check_dim(out, "out", 0, T, "ids.shape[0] (T)");
  check_dim(out, "out", 1, hidden, "table.shape[1] (hidden)");
  HELIX_CHECK_ARG(vocab_start >= 0, "argument 'vocab_start' must be >= 0, got ", vocab_start);
  return EmbeddingParams{
      ids.ptr<const int64_t>(), table.data, out.ptr<float>(), T, table.dim(0), hidden, vocab_start, table.dtype};
}

MergeStatesParams check_merge_states_args(const TensorView& o_parts, const TensorView& lse_parts, const TensorView& o,
                                          const TensorView& lse, Device device) {
  HELIX_CHECK_ARG(o_parts.ndim() >= 2, "argument 'o_parts' must have shape [N, ..., D], got ",
                  shape_str(o_parts.shape));
  check_tensor(o_parts, "o_parts", o_parts.ndim(), {DType::Float32});
  const std::vector<int64_t> rows(o_parts.shape.begin(), o_parts.shape.end() - 1);  // [N, ...]
  const std::vector<int64_t> out_rows(rows.begin() + 1, rows.end());                // [...]
  check_tensor(lse_parts, "lse_parts", lse_parts.ndim(), {DType::Float32});
  HELIX_CHECK_ARG(lse_parts.shape == rows,
                  "argument 'lse_parts' must have shape o_parts.shape[:-1] = ", shape_str(rows), ", got ",
                  shape_str(lse_parts.shape));
  check_tensor(o, "o", o.ndim(), {DType::Float32});
  check_tensor(lse, "lse", lse.ndim(), {DType::Float32});
  const int64_t N = o_parts.dim(0), D = o_parts.dim(-1);
  std::vector<int64_t> o_shape = out_rows;
  o_shape.push_back(D);
  HELIX_CHECK_ARG(o.shape == o_shape, "argument 'o' must have shape ", shape_str(o_shape), ", got ",
                  shape_str(o.shape));
  HELIX_CHECK_ARG(lse.shape == out_rows, "argument 'lse' must have shape ", shape_str(out_rows), ", got ",
                  shape_str(lse.shape));
  for (const auto& [out, name] : {std::pair{&o, "o"}, std::pair{&lse, "lse"}}) {
    HELIX_CHECK_ARG(!overlaps(*out, o_parts) && !overlaps(*out, lse_parts), "argument '", name,
                    "' must not overlap the inputs o_parts / lse_parts");
  }
  HELIX_CHECK_ARG(!overlaps(o, lse), "arguments 'o' and 'lse' must not overlap");
  if (device == Device::Cuda) {
    HELIX_CHECK_ARG(N >= 1 && N <= kMergeStatesMaxParts, "argument 'o_parts': the number of parts must be in [1, ",
                    kMergeStatesMaxParts, "] on cuda, got ", N);
  }
  int64_t M = 1;
  for (int64_t s : out_rows) M *= s;
  return MergeStatesParams{
      o_parts.ptr<const float>(), lse_parts.ptr<const float>(), o.ptr<float>(), lse.ptr<float>(), N, M, D};
}

KvAppendParams check_kv_append_args(const TensorView& pool, const TensorView& rows, const TensorView& dst_rows,
                                    Device) {
  check_tensor(pool, "pool", 3, {DType::Float32, DType::BFloat16});
  check_tensor(rows, "rows", 2, {pool.dtype});
  check_tensor(dst_rows, "dst_rows", 1, {DType::Int64});
  check_dim(rows, "rows", 1, pool.dim(2), "D (pool.shape[2])");
  check_dim(dst_rows, "dst_rows", 0, rows.dim(0), "n (rows.shape[0])");
  check_not_overlapping(pool, "pool", rows, "rows");
  const int64_t num_rows = pool.dim(0) * pool.dim(1);
  for (int64_t i = 0; i < dst_rows.dim(0); ++i) {
    const int64_t r = dst_rows.ptr<const int64_t>()[i];
    HELIX_CHECK_ARG(r < num_rows, "argument 'dst_rows': entry ", i, " is ", r, ", outside the pool's ", num_rows,
                    " rows");
  }
  return KvAppendParams{pool.data, rows.data, dst_rows.ptr<const int64_t>(), rows.dim(0),
                        pool.dim(2) * dtype_size(pool.dtype)};
}

namespace {

void check_scale_and_rank(float scale, int64_t kv_lora_rank, int64_t D) {
  HELIX_CHECK_ARG(std::isfinite(scale) && scale > 0.f, "argument 'scale' must be finite and > 0, got ", scale);
  HELIX_CHECK_ARG(kv_lora_rank > 0 && kv_lora_rank <= D, "argument 'kv_lora_rank' must be in (0, D] with D = ", D,
                  " (q.shape[2]), got ", kv_lora_rank);
}

// q and the keys in the dtypes the device runs: cpu each f32|bf16; cuda one dtype and D <= 1024.
void check_attention_dtypes(const TensorView& q, const TensorView& kv, const char* kv_name, Device device) {
  check_tensor(q, "q", 3, {DType::Float32, DType::BFloat16});
  if (device == Device::Cpu) {
    check_tensor(kv, kv_name, kv.ndim(), {DType::Float32, DType::BFloat16});
  } else {
    check_tensor(kv, kv_name, kv.ndim(), {q.dtype});  // one dtype for the kernels' q and key loads
    HELIX_CHECK_ARG(q.dim(2) <= 1024, "argument 'q': D must be <= 1024 on cuda, got ", q.dim(2));
  }
}

}  // namespace

MlaShape check_mla_attention_args(const TensorView& q, const TensorView& kv, const TensorView& q_pos,
                                  const TensorView& kv_pos, float scale, int64_t kv_lora_rank, Device device) {
  HELIX_CHECK_ARG(q.ndim() == 3, "argument 'q' must have 3 dimensions [T, H, D], got shape ", shape_str(q.shape));
  HELIX_CHECK_ARG(kv.ndim() == 2, "argument 'kv' must have 2 dimensions [S, D], got shape ", shape_str(kv.shape));
  check_attention_dtypes(q, kv, "kv", device);
  check_tensor(q_pos, "q_pos", 1, {DType::Int64});
  check_tensor(kv_pos, "kv_pos", 1, {DType::Int64});
  MlaShape s{q.dim(0), q.dim(1), q.dim(2), kv_lora_rank, kv.dim(0)};
  check_dim(kv, "kv", 1, s.D, "q.shape[2] (D)");
  check_dim(q_pos, "q_pos", 0, s.T, "q.shape[0] (T)");
  check_dim(kv_pos, "kv_pos", 0, s.S, "kv.shape[0] (S)");
  check_scale_and_rank(scale, kv_lora_rank, s.D);
  return s;
}

PagedMlaAttentionParams check_paged_mla_attention_args(const TensorView& q, const TensorView& q_pos,
                                                       const TensorView& q_seq, const TensorView& pool,
                                                       const TensorView& block_tables, const TensorView& kv_pos,
                                                       const TensorView& num_slots, float scale, int64_t kv_lora_rank,
                                                       int num_splits, const TensorView& o, const TensorView& lse,
                                                       Device device) {
  HELIX_CHECK_ARG(q.ndim() == 3, "argument 'q' must have 3 dimensions [T, H, D], got shape ", shape_str(q.shape));
  HELIX_CHECK_ARG(pool.ndim() == 3, "argument 'pool' must have 3 dimensions [num_blocks, tokens_per_block, D], got ",
                  shape_str(pool.shape));
  check_attention_dtypes(q, pool, "pool", device);
  check_tensor(q_pos, "q_pos", 1, {DType::Int64});
  check_tensor(q_seq, "q_seq", 1, {DType::Int64});
  check_tensor(block_tables, "block_tables", 2, {DType::Int32});
  check_tensor(kv_pos, "kv_pos", 2, {DType::Int64});
  check_tensor(num_slots, "num_slots", 1, {DType::Int64});
  const int64_t T = q.dim(0), H = q.dim(1), D = pool.dim(2), B = num_slots.dim(0);
  const int64_t num_blocks = pool.dim(0), tpb = pool.dim(1), max_blocks = block_tables.dim(1);
  check_dim(q, "q", 2, D, "pool.shape[2] (the key width D)");
  HELIX_CHECK_ARG(tpb >= 1, "argument 'pool' needs tokens_per_block (pool.shape[1]) >= 1");
  check_dim(q_pos, "q_pos", 0, T, "q.shape[0] (T)");
  check_dim(q_seq, "q_seq", 0, T, "q.shape[0] (T)");
  check_dim(block_tables, "block_tables", 0, B, "len(num_slots) (B)");
  check_dim(kv_pos, "kv_pos", 0, num_blocks, "pool.shape[0] (num_blocks)");
  check_dim(kv_pos, "kv_pos", 1, tpb, "pool.shape[1] (tokens_per_block)");
  check_scale_and_rank(scale, kv_lora_rank, D);
  const int64_t* seq = q_seq.ptr<const int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    HELIX_CHECK_ARG(seq[t] >= 0 && seq[t] < B, "argument 'q_seq': q_seq[", t, "] = ", seq[t], " is not in [0, ", B,
                    ") (len(num_slots))");
  }
  int64_t max_num_slots = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = num_slots.ptr<const int64_t>()[b];
    HELIX_CHECK_ARG(n >= 0 && n <= max_blocks * tpb, "argument 'num_slots': num_slots[", b, "] = ", n,
                    " is not in [0, ", max_blocks * tpb, "] (the block table's slots)");
    max_num_slots = std::max(max_num_slots, n);
    for (int64_t k = 0; k < (n + tpb - 1) / tpb; ++k) {
      const int32_t blk = block_tables.ptr<const int32_t>()[b * max_blocks + k];
      HELIX_CHECK_ARG(blk >= 0 && blk < num_blocks, "argument 'block_tables': [", b, ", ", k, "] = ", blk,
                      " is outside the pool [0, ", num_blocks, ")");
    }
  }
  HELIX_CHECK_ARG(device == Device::Cuda ? num_splits >= 0 && num_splits <= 256 : num_splits == 0,
                  "argument 'num_splits' must be ", device == Device::Cuda ? "in [0, 256]" : "0 on the cpu", ", got ",
                  num_splits);
  check_tensor(o, "o", 3, {DType::Float32});
  check_tensor(lse, "lse", 2, {DType::Float32});
  HELIX_CHECK_ARG(o.shape == (std::vector<int64_t>{T, H, kv_lora_rank}), "argument 'o' must have shape ",
                  shape_str({T, H, kv_lora_rank}), ", got ", shape_str(o.shape));
  HELIX_CHECK_ARG(lse.shape == (std::vector<int64_t>{T, H}), "argument 'lse' must have shape ", shape_str({T, H}),
                  ", got ", shape_str(lse.shape));
  PagedMlaAttentionParams p;
  p.q = q.data;
  p.q_pos = q_pos.ptr<const int64_t>();
  p.q_seq = seq;
  p.pool = pool.data;
  p.block_tables = block_tables.ptr<const int32_t>();
  p.kv_pos = kv_pos.ptr<const int64_t>();
  p.num_slots = num_slots.ptr<const int64_t>();
  p.o = o.ptr<float>();
  p.lse = lse.ptr<float>();
  p.T = T;
  p.H = H;
  p.D = D;
  p.R = kv_lora_rank;
  p.B = B;
  p.max_blocks = max_blocks;
  p.tokens_per_block = tpb;
  p.max_num_slots = max_num_slots;
  p.scale = scale;
  p.num_splits = num_splits;
  p.q_dtype = q.dtype;
  p.kv_dtype = pool.dtype;
  return p;
}

}  // namespace helix
