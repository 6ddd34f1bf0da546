// helix._core.cuda: the CUDA backend's status, plus one test entry point per kernel. Each entry point
// validates its NumPy inputs, copies them to the device, runs one kernel, and copies the result back,
// so that pytest can compare every CUDA op with its CPU twin or a float64 reference. Without CUDA or
// without a GPU they raise helix.HelixError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "engine_step.hpp"
#include "helix/cuda.hpp"
#include "helix/cuda_engine.hpp"
#include "helix/engine_common.hpp"
#include "helix/ops/moe_experts.hpp"

namespace nb = nanobind;

namespace helix::bind {

namespace {

using cuda::DeviceBuffer;

DeviceBuffer upload(const TensorView& v) {
  DeviceBuffer b(static_cast<size_t>(std::max<int64_t>(v.nbytes(), 1)));
  b.copy_from_host(v.data, static_cast<size_t>(v.nbytes()));
  return b;
}

nb::object download(const DeviceBuffer& b, const std::vector<int64_t>& shape, DType dtype) {
  HostArray out = new_array(shape, dtype);
  b.copy_to_host(out.view.data, static_cast<size_t>(out.view.nbytes()));
  return out.owner;
}

cuda::AttentionKernel parse_kernel(const std::string& name) {
  if (name == "auto") return cuda::AttentionKernel::Auto;
  if (name == "simple") return cuda::AttentionKernel::Simple;
  if (name == "tensor_core") return cuda::AttentionKernel::TensorCore;
  throw ArgumentError("argument 'kernel' must be 'auto', 'simple' or 'tensor_core', got '" + name + "'");
}

DType parse_float_dtype(const std::string& name, const char* arg) {
  if (name == "float32") return DType::Float32;
  if (name == "bfloat16") return DType::BFloat16;
  throw ArgumentError(detail::concat("argument '", arg, "' must be 'float32' or 'bfloat16', got '", name, "'"));
}

const int64_t* i64(const TensorView& v) { return v.ptr<const int64_t>(); }

// Runs paged attention on host-validated arrays (shared by mla_attention and paged_mla_attention).
nb::tuple run_attention(const TensorView& q, const TensorView& q_pos, const TensorView& q_seq, const TensorView& pool,
                        const TensorView& block_tables, const TensorView& kv_pos, const TensorView& num_slots,
                        float scale, int64_t R, const std::string& kernel, int num_splits) {
  const auto kind = parse_kernel(kernel);
  cuda::require_device();
  const int64_t T = q.dim(0), H = q.dim(1), D = q.dim(2);
  DeviceBuffer d_q = upload(q), d_q_pos = upload(q_pos), d_q_seq = upload(q_seq), d_pool = upload(pool),
               d_tables = upload(block_tables), d_kv_pos = upload(kv_pos), d_num_slots = upload(num_slots);
  DeviceBuffer d_o(static_cast<size_t>(std::max<int64_t>(T * H * R * 4, 4))),
      d_lse(static_cast<size_t>(std::max<int64_t>(T * H * 4, 4)));
  cuda::PagedMlaAttentionParams p;
  p.q = d_q.as<bf16_t>();
  p.q_pos = d_q_pos.as<int64_t>();
  p.q_seq = d_q_seq.as<int64_t>();
  p.pool = d_pool.as<bf16_t>();
  p.block_tables = d_tables.as<int32_t>();
  p.kv_pos = d_kv_pos.as<int64_t>();
  p.num_slots = d_num_slots.as<int64_t>();
  p.o = d_o.as<float>();
  p.lse = d_lse.as<float>();
  p.T = T;
  p.H = H;
  p.D = D;
  p.R = R;
  p.B = num_slots.dim(0);
  p.max_blocks = block_tables.dim(1);
  p.tokens_per_block = pool.dim(1);
  for (int64_t b = 0; b < p.B; ++b) p.max_num_slots = std::max(p.max_num_slots, i64(num_slots)[b]);
  p.scale = scale;
  p.num_splits = num_splits;
  DeviceBuffer ws(static_cast<size_t>(std::max<int64_t>(cuda::attention_workspace_floats(p) * 4, 4)));
  p.workspace = ws.as<float>();
  cuda::launch_paged_mla_attention(p, kind, nullptr);
  return nb::make_tuple(download(d_o, {T, H, R}, DType::Float32), download(d_lse, {T, H}, DType::Float32));
}

void check_attention_common(const TensorView& q, const TensorView& q_pos, int64_t D, int64_t R) {
  check_tensor(q, "q", 3, {DType::BFloat16});
  check_tensor(q_pos, "q_pos", 1, {DType::Int64});
  check_dim(q_pos, "q_pos", 0, q.dim(0), "T (q.shape[0])");
  check_dim(q, "q", 2, D, "D (the key width)");
  HELIX_CHECK_ARG(R >= 1 && R <= D, "argument 'kv_lora_rank' must be in [1, D=", D, "], got ", R);
  HELIX_CHECK_ARG(D <= 1024, "argument 'q': D must be <= 1024, got ", D);
}

nb::tuple mla_attention(nb::handle q_obj, nb::handle kv_obj, nb::handle q_pos_obj, nb::handle kv_pos_obj, float scale,
                        int64_t kv_lora_rank, const std::string& kernel, int num_splits) {
  HostArray q = to_view(q_obj, "q"), kv = to_view(kv_obj, "kv"), q_pos = to_view(q_pos_obj, "q_pos"),
            kv_pos = to_view(kv_pos_obj, "kv_pos");
  check_tensor(kv.view, "kv", 2, {DType::BFloat16});
  check_tensor(kv_pos.view, "kv_pos", 1, {DType::Int64});
  check_dim(kv_pos.view, "kv_pos", 0, kv.view.dim(0), "S (kv.shape[0])");
  check_attention_common(q.view, q_pos.view, kv.view.dim(1), kv_lora_rank);
  // The contiguous keys are one sequence whose pool is kv itself, viewed as blocks of 64 rows (the
  // last block partial: its missing rows are never read).
  const int64_t S = kv.view.dim(0), D = kv.view.dim(1), T = q.view.dim(0), tpb = 64;
  const int64_t nb = std::max<int64_t>((S + tpb - 1) / tpb, 1);
  std::vector<int32_t> table(nb);
  for (int64_t i = 0; i < nb; ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int64_t> q_seq(T, 0), num_slots{S};
  TensorView tables_v{table.data(), DType::Int32, {1, nb}};
  TensorView q_seq_v{q_seq.data(), DType::Int64, {T}};
  TensorView num_slots_v{num_slots.data(), DType::Int64, {1}};
  // Pool row s holds key s, so the positions are kv_pos itself, padded like the pool.
  std::vector<int64_t> pool_pos(static_cast<size_t>(nb * tpb), 0);
  std::copy_n(i64(kv_pos.view), S, pool_pos.data());
  TensorView kv_pos_v{pool_pos.data(), DType::Int64, {nb, tpb}};
  if (S % tpb == 0 && S > 0) {
    TensorView pool_v{kv.view.data, DType::BFloat16, {nb, tpb, D}};
    return run_attention(q.view, q_pos.view, q_seq_v, pool_v, tables_v, kv_pos_v, num_slots_v, scale, kv_lora_rank,
                         kernel, num_splits);
  }
  // Pad the pool to whole blocks so the device copy covers every row the block table addresses.
  std::vector<bf16_t> padded(static_cast<size_t>(nb * tpb * D), 0);
  std::copy_n(kv.view.ptr<const bf16_t>(), S * D, padded.data());
  TensorView padded_v{padded.data(), DType::BFloat16, {nb, tpb, D}};
  return run_attention(q.view, q_pos.view, q_seq_v, padded_v, tables_v, kv_pos_v, num_slots_v, scale, kv_lora_rank,
                       kernel, num_splits);
}

nb::tuple paged_mla_attention(nb::handle q_obj, nb::handle q_pos_obj, nb::handle q_seq_obj, nb::handle pool_obj,
                              nb::handle tables_obj, nb::handle kv_pos_obj, nb::handle num_slots_obj, float scale,
                              int64_t kv_lora_rank, const std::string& kernel, int num_splits) {
  HostArray q = to_view(q_obj, "q"), q_pos = to_view(q_pos_obj, "q_pos"), q_seq = to_view(q_seq_obj, "q_seq"),
            pool = to_view(pool_obj, "pool"), tables = to_view(tables_obj, "block_tables"),
            kv_pos = to_view(kv_pos_obj, "kv_pos"), num_slots = to_view(num_slots_obj, "num_slots");
  check_tensor(pool.view, "pool", 3, {DType::BFloat16});
  check_tensor(tables.view, "block_tables", 2, {DType::Int32});
  check_tensor(kv_pos.view, "kv_pos", 2, {DType::Int64});
  check_dim(kv_pos.view, "kv_pos", 0, pool.view.dim(0), "num_blocks (pool.shape[0])");
  check_dim(kv_pos.view, "kv_pos", 1, pool.view.dim(1), "tokens_per_block (pool.shape[1])");
  check_tensor(num_slots.view, "num_slots", 1, {DType::Int64});
  check_tensor(q_seq.view, "q_seq", 1, {DType::Int64});
  check_attention_common(q.view, q_pos.view, pool.view.dim(2), kv_lora_rank);
  check_dim(q_seq.view, "q_seq", 0, q.view.dim(0), "T (q.shape[0])");
  const int64_t B = num_slots.view.dim(0), num_blocks = pool.view.dim(0), tpb = pool.view.dim(1);
  check_dim(tables.view, "block_tables", 0, B, "B (num_slots.shape[0])");
  HELIX_CHECK_ARG(tpb >= 1, "argument 'pool' needs tokens_per_block >= 1");
  HELIX_CHECK_ARG(pool.view.dim(2) % 8 == 0, "argument 'pool': D must be a multiple of 8 (16-byte rows), got ",
                  pool.view.dim(2));
  const int64_t max_blocks = tables.view.dim(1);
  for (int64_t t = 0; t < q.view.dim(0); ++t) {
    const int64_t b = i64(q_seq.view)[t];
    HELIX_CHECK_ARG(b >= 0 && b < B, "argument 'q_seq': entry ", t, " is ", b, ", outside [0, ", B, ")");
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = i64(num_slots.view)[b];
    HELIX_CHECK_ARG(n >= 0 && n <= max_blocks * tpb, "argument 'num_slots': entry ", b, " is ", n,
                    ", more than the block table's ", max_blocks * tpb, " slots");
    for (int64_t k = 0; k < (n + tpb - 1) / tpb; ++k) {
      const int32_t blk = tables.view.ptr<const int32_t>()[b * max_blocks + k];
      HELIX_CHECK_ARG(blk >= 0 && blk < num_blocks, "argument 'block_tables': [", b, ", ", k, "] = ", blk,
                      " is outside the pool [0, ", num_blocks, ")");
    }
  }
  return run_attention(q.view, q_pos.view, q_seq.view, pool.view, tables.view, kv_pos.view, num_slots.view, scale,
                       kv_lora_rank, kernel, num_splits);
}

nb::tuple merge_states(nb::handle o_obj, nb::handle lse_obj) {
  HostArray o_parts = to_view(o_obj, "o_parts"), lse_parts = to_view(lse_obj, "lse_parts");
  const TensorView& ov = o_parts.view;
  const TensorView& lv = lse_parts.view;
  HELIX_CHECK_ARG(ov.ndim() >= 2 && ov.dtype == DType::Float32, "argument 'o_parts' must be float32 [N, ..., D], got ",
                  dtype_name(ov.dtype), " ", shape_str(ov.shape));
  HELIX_CHECK_ARG(lv.dtype == DType::Float32 && std::vector<int64_t>(ov.shape.begin(), ov.shape.end() - 1) == lv.shape,
                  "argument 'lse_parts' must be float32 of shape o_parts.shape[:-1] = ",
                  shape_str(std::vector<int64_t>(ov.shape.begin(), ov.shape.end() - 1)), ", got ", shape_str(lv.shape));
  const int64_t N = ov.dim(0), D = ov.dim(-1);
  HELIX_CHECK_ARG(N >= 1 && N <= 256, "argument 'o_parts': the number of parts must be in [1, 256], got ", N);
  const int64_t M = lv.numel() / N;
  cuda::require_device();
  DeviceBuffer d_o_parts = upload(ov), d_lse_parts = upload(lv);
  DeviceBuffer d_o(static_cast<size_t>(std::max<int64_t>(M * D * 4, 4))),
      d_lse(static_cast<size_t>(std::max<int64_t>(M * 4, 4)));
  MergeStatesParams p;
  p.o_parts = d_o_parts.as<float>();
  p.lse_parts = d_lse_parts.as<float>();
  p.o = d_o.as<float>();
  p.lse = d_lse.as<float>();
  p.N = N;
  p.M = M;
  p.D = D;
  cuda::launch_merge_states(p, nullptr);
  return nb::make_tuple(download(d_o, std::vector<int64_t>(ov.shape.begin() + 1, ov.shape.end()), DType::Float32),
                        download(d_lse, std::vector<int64_t>(lv.shape.begin() + 1, lv.shape.end()), DType::Float32));
}

nb::object kv_append(nb::handle pool_obj, nb::handle rows_obj, nb::handle dst_obj) {
  HostArray pool = to_view(pool_obj, "pool"), rows = to_view(rows_obj, "rows"), dst = to_view(dst_obj, "dst_rows");
  check_tensor(pool.view, "pool", 3, {DType::Float32, DType::BFloat16});
  check_tensor(rows.view, "rows", 2, {pool.view.dtype});
  check_tensor(dst.view, "dst_rows", 1, {DType::Int64});
  check_dim(rows.view, "rows", 1, pool.view.dim(2), "D (pool.shape[2])");
  check_dim(dst.view, "dst_rows", 0, rows.view.dim(0), "n (rows.shape[0])");
  const int64_t pool_rows = pool.view.dim(0) * pool.view.dim(1);
  for (int64_t i = 0; i < dst.view.dim(0); ++i) {
    const int64_t r = i64(dst.view)[i];
    HELIX_CHECK_ARG(r >= 0 && r < pool_rows, "argument 'dst_rows': entry ", i, " is ", r, ", outside [0, ", pool_rows,
                    ")");
  }
  cuda::require_device();
  DeviceBuffer d_pool = upload(pool.view), d_rows = upload(rows.view), d_dst = upload(dst.view);
  cuda::KvAppendParams p;
  p.pool = d_pool.data();
  p.rows = d_rows.data();
  p.dst_rows = d_dst.as<int64_t>();
  p.n = rows.view.dim(0);
  p.row_bytes = pool.view.dim(2) * dtype_size(pool.view.dtype);
  cuda::launch_kv_append(p, nullptr);
  return download(d_pool, pool.view.shape, pool.view.dtype);
}

nb::object rms_norm(nb::handle x_obj, nb::handle w_obj, float eps) {
  HostArray x = to_view(x_obj, "x"), w = to_view(w_obj, "weight");
  check_tensor(x.view, "x", 2, {DType::Float32, DType::BFloat16});
  check_tensor(w.view, "weight", 1, {x.view.dtype});
  check_dim(w.view, "weight", 0, x.view.dim(1), "N (x.shape[1])");
  cuda::require_device();
  DeviceBuffer d_x = upload(x.view), d_w = upload(w.view),
               d_out(static_cast<size_t>(std::max<int64_t>(x.view.nbytes(), 1)));
  cuda::RmsNormParams p;
  p.x = d_x.data();
  p.weight = d_w.data();
  p.out = d_out.data();
  p.T = x.view.dim(0);
  p.N = x.view.dim(1);
  p.eps = eps;
  p.dtype = x.view.dtype;
  cuda::launch_rms_norm(p, nullptr);
  return download(d_out, x.view.shape, x.view.dtype);
}

nb::object rope(nb::handle x_obj, nb::handle pos_obj, nb::handle freq_obj, float attention_factor, int64_t offset) {
  HostArray x = to_view(x_obj, "x"), pos = to_view(pos_obj, "positions"), freq = to_view(freq_obj, "inv_freq");
  check_tensor(x.view, "x", 3, {DType::Float32, DType::BFloat16});
  check_tensor(pos.view, "positions", 1, {DType::Int64});
  check_tensor(freq.view, "inv_freq", 1, {DType::Float32});
  check_dim(pos.view, "positions", 0, x.view.dim(0), "T (x.shape[0])");
  const int64_t P = 2 * freq.view.dim(0);
  HELIX_CHECK_ARG(offset >= 0 && offset + P <= x.view.dim(2), "arguments 'offset' + 2 * len(inv_freq) = ", offset + P,
                  " exceed the row width ", x.view.dim(2));
  cuda::require_device();
  DeviceBuffer d_x = upload(x.view), d_pos = upload(pos.view), d_freq = upload(freq.view);
  cuda::RopeParams p;
  p.x = d_x.data();
  p.positions = d_pos.as<int64_t>();
  p.inv_freq = d_freq.as<float>();
  p.T = x.view.dim(0);
  p.heads = x.view.dim(1);
  p.width = x.view.dim(2);
  p.offset = offset;
  p.P = P;
  p.attention_factor = attention_factor;
  p.dtype = x.view.dtype;
  cuda::launch_rope(p, nullptr);
  return download(d_x, x.view.shape, x.view.dtype);
}

nb::object silu_mul(nb::handle gate_obj, nb::handle up_obj) {
  HostArray gate = to_view(gate_obj, "gate"), up = to_view(up_obj, "up");
  check_tensor(gate.view, "gate", 2, {DType::Float32, DType::BFloat16});
  check_tensor(up.view, "up", 2, {gate.view.dtype});
  HELIX_CHECK_ARG(up.view.shape == gate.view.shape, "argument 'up' must have gate's shape ", shape_str(gate.view.shape),
                  ", got ", shape_str(up.view.shape));
  cuda::require_device();
  DeviceBuffer d_g = upload(gate.view), d_u = upload(up.view),
               d_out(static_cast<size_t>(std::max<int64_t>(gate.view.nbytes(), 1)));
  cuda::SiluMulParams p;
  p.gate = d_g.data();
  p.up = d_u.data();
  p.out = d_out.data();
  p.T = gate.view.dim(0);
  p.I = gate.view.dim(1);
  p.gate_stride = p.I;
  p.up_stride = p.I;
  p.dtype = gate.view.dtype;
  cuda::launch_silu_mul(p, nullptr);
  return download(d_out, gate.view.shape, gate.view.dtype);
}

nb::tuple moe_route(nb::handle logits_obj, nb::handle bias_obj, int64_t n_group, int64_t topk_group, int64_t top_k,
                    float routed_scaling_factor, bool norm_topk_prob) {
  HostArray logits = to_view(logits_obj, "logits"), bias = to_view(bias_obj, "bias");
  check_tensor(logits.view, "logits", 2, {DType::Float32});
  check_tensor(bias.view, "bias", 1, {DType::Float32});
  const int64_t T = logits.view.dim(0), E = logits.view.dim(1);
  check_dim(bias.view, "bias", 0, E, "E (logits.shape[1])");
  HELIX_CHECK_ARG(E <= 1024, "argument 'logits': at most 1024 experts, got ", E);
  HELIX_CHECK_ARG(n_group >= 1 && n_group <= 32 && E % n_group == 0,
                  "argument 'n_group' must be in [1, 32] and divide E=", E, ", got ", n_group);
  HELIX_CHECK_ARG(topk_group >= 1 && topk_group <= n_group, "argument 'topk_group' must be in [1, n_group], got ",
                  topk_group);
  HELIX_CHECK_ARG(top_k >= 1 && top_k <= topk_group * (E / n_group),
                  "argument 'top_k' must be in [1, topk_group * E / n_group], got ", top_k);
  cuda::require_device();
  DeviceBuffer d_logits = upload(logits.view), d_bias = upload(bias.view),
               d_w(static_cast<size_t>(std::max<int64_t>(T * top_k * 4, 4))),
               d_ids(static_cast<size_t>(std::max<int64_t>(T * top_k * 8, 8)));
  cuda::MoeRouteParams p;
  p.logits = d_logits.as<float>();
  p.bias = d_bias.as<float>();
  p.weights = d_w.as<float>();
  p.ids = d_ids.as<int64_t>();
  p.T = T;
  p.E = E;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.top_k = top_k;
  p.routed_scaling_factor = routed_scaling_factor;
  p.norm_topk_prob = norm_topk_prob;
  cuda::launch_moe_route(p, nullptr);
  return nb::make_tuple(download(d_w, {T, top_k}, DType::Float32), download(d_ids, {T, top_k}, DType::Int64));
}

nb::object moe_experts(nb::handle h_obj, nb::handle idx_obj, nb::handle w_obj, nb::handle gate_up_obj,
                       nb::handle down_obj, int64_t local_first) {
  HostArray h = to_view(h_obj, "h"), idx = to_view(idx_obj, "topk_idx"), wt = to_view(w_obj, "topk_weight"),
            gate_up = to_view(gate_up_obj, "gate_up"), down = to_view(down_obj, "down");
  const auto [T, top_k, hidden, F, n_local] =
      check_moe_experts_args(h.view, idx.view, wt.view, gate_up.view, down.view, DType::Int64);
  check_tensor(down.view, "down", 3, {gate_up.view.dtype});  // the device path takes one weight dtype
  HELIX_CHECK_ARG(cuda::moe_experts_supported(T, top_k, n_local, hidden, F), "moe_experts: shape T=", T,
                  " top_k=", top_k, " n_local=", n_local, " hidden=", hidden, " F=", F,
                  " is not one the device path takes (T <= ", cuda::kMoeExpertsMaxTokens,
                  ", T * top_k <= 1024, n_local <= 1024, hidden and F multiples of 8)");
  cuda::require_device();
  DeviceBuffer d_h = upload(h.view), d_idx = upload(idx.view), d_w = upload(wt.view), d_gu = upload(gate_up.view),
               d_down = upload(down.view), d_out(static_cast<size_t>(h.view.nbytes()));
  d_out.fill_zero();
  cuda::MoeExpertsParams p;
  p.h = d_h.as<float>();
  p.topk_idx = d_idx.as<int64_t>();
  p.topk_weight = d_w.as<float>();
  p.gate_up = d_gu.data();
  p.down = d_down.data();
  p.out = d_out.as<float>();
  p.T = T;
  p.top_k = top_k;
  p.hidden = hidden;
  p.F = F;
  p.local_first = local_first;
  p.n_local = n_local;
  p.dtype = gate_up.view.dtype;
  DeviceBuffer ws(cuda::moe_experts_workspace_bytes(p));
  p.workspace = ws.data();
  cuda::launch_moe_experts(p, nullptr);
  return download(d_out, {T, hidden}, DType::Float32);
}

nb::object linear(nb::handle x_obj, nb::handle w_obj, const std::string& out_dtype) {
  HostArray x = to_view(x_obj, "x"), w = to_view(w_obj, "weight");
  check_tensor(x.view, "x", 2, {DType::BFloat16});
  check_tensor(w.view, "weight", 2, {DType::BFloat16});
  check_dim(w.view, "weight", 1, x.view.dim(1), "K (x.shape[1])");
  const DType yd = parse_float_dtype(out_dtype, "out_dtype");
  cuda::require_device();
  const int64_t T = x.view.dim(0), N = w.view.dim(0);
  DeviceBuffer d_x = upload(x.view), d_w = upload(w.view),
               d_y(static_cast<size_t>(std::max<int64_t>(T * N * dtype_size(yd), 4)));
  cuda::LinearParams p;
  p.x = d_x.as<bf16_t>();
  p.w = d_w.as<bf16_t>();
  p.y = d_y.data();
  p.T = T;
  p.K = x.view.dim(1);
  p.N = N;
  p.y_dtype = yd;
  cuda::linear(p, nullptr);
  cuda::synchronize();
  return download(d_y, {T, N}, yd);
}

// Every collective of a one-rank NCCL communicator on x (float32 [n]); each result must equal x.
nb::dict nccl_collectives_one_rank(nb::handle x_obj) {
  HostArray x = to_view(x_obj, "x");
  check_tensor(x.view, "x", 1, {DType::Float32});
  cuda::require_device();
  if (!cuda::built_with_nccl()) throw Error("helix was built without NCCL");
  const int64_t n = x.view.dim(0);
  const size_t bytes = static_cast<size_t>(n * 4);
  cuda::Stream stream;
  auto comm = cuda::make_nccl_communicator(0, 1, cuda::nccl_unique_id(), stream.handle());
  HELIX_CHECK(comm->rank() == 0 && comm->size() == 1, "NCCL one-rank communicator has rank ", comm->rank(), " size ",
              comm->size());
  nb::dict out;
  // upload() and fill_zero() default to the legacy stream, which `stream` (non-blocking) does not wait
  // for: finish them before NCCL runs on `stream`.
  DeviceBuffer src = upload(x.view), dst(std::max<size_t>(bytes, 4));
  DeviceBuffer reduced = upload(x.view);
  cuda::synchronize();
  comm->all_reduce_sum(reduced.data(), n, DType::Float32);
  out["all_reduce_sum"] = download(reduced, {n}, DType::Float32);
  comm->all_gather(src.data(), dst.data(), bytes);
  out["all_gather"] = download(dst, {n}, DType::Float32);
  dst.fill_zero(stream.handle());
  comm->all_to_all(src.data(), dst.data(), bytes);
  out["all_to_all"] = download(dst, {n}, DType::Float32);
  DeviceBuffer bc = upload(x.view);
  cuda::synchronize();
  comm->broadcast(bc.data(), bytes, 0);
  out["broadcast"] = download(bc, {n}, DType::Float32);
  comm->barrier();
  auto sub = comm->split(0, 0);
  DeviceBuffer sub_buf = upload(x.view);
  cuda::synchronize();
  sub->all_reduce_sum(sub_buf.data(), n, DType::Float32);
  out["split_all_reduce_sum"] = download(sub_buf, {n}, DType::Float32);
  return out;
}

nb::dict timings_dict(const EngineTimings& t) {
  nb::dict d;
  d["attention_s"] = t.attention_s;
  d["exchange_s"] = t.exchange_s;
  d["linear_s"] = t.linear_s;
  d["moe_s"] = t.moe_s;
  d["allreduce_s"] = t.allreduce_s;
  d["other_s"] = t.other_s;
  d["steps"] = t.steps;
  return d;
}

void bind_cuda_engine(nb::module_& c) {
  using namespace nb::literals;
  using cuda::CudaEngine;
  nb::class_<CudaEngine>(c, "CudaEngine",
                         "The decoder engine of one rank on one GPU: helix._core.Engine's contract (same config, "
                         "weights, step), with weights, KV cache and the Helix step on the device and NCCL "
                         "between ranks.")
      .def(
          "__init__",
          [](CudaEngine* self, const EngineConfig& config, Communicator& world, int device, const std::string& comm) {
            HELIX_CHECK_ARG(comm == "nccl" || comm == "host", "argument 'comm' must be 'nccl' or 'host', got '", comm,
                            "'");
            nb::gil_scoped_release release;  // the NCCL bootstrap (or the split) is collective over `world`
            new (self) CudaEngine(config, world, device, comm == "nccl" ? cuda::CudaComm::Nccl : cuda::CudaComm::Host);
          },
          "config"_a, "world"_a, "device"_a = 0, "comm"_a = "nccl",
          "comm: 'nccl' (one GPU per rank) or 'host' (collectives over `world`, device buffers staged through "
          "host memory: ranks may share a GPU).")
      .def(
          "set_weight",
          [](CudaEngine& e, const std::string& name, nb::handle w) {
            HostArray a = to_view(w, name.c_str());
            e.set_weight(name, a.view);
          },
          "name"_a, "weight"_a)
      .def("check_weights", &CudaEngine::check_weights)
      .def("expected_weights", &CudaEngine::expected_weights)
      .def(
          "expected_weight_shapes",
          [](const CudaEngine& e) {
            nb::dict d;
            for (const auto& [name, w] : expected_weight_shapes(e.config())) {
              d[name.c_str()] = nb::make_tuple(nb::cast(w.shape), w.matrix);
            }
            return d;
          },
          "{name: (shard shape, is_matrix)}: matrices may be float32 or bfloat16, the rest is float32.")
      .def("add_sequence", &CudaEngine::add_sequence, "seq_id"_a, "reserve_tokens"_a = 0)
      .def("free_sequence", &CudaEngine::free_sequence, "seq_id"_a)
      .def_prop_ro("num_free_blocks", &CudaEngine::num_free_blocks)
      .def_prop_ro("num_kv_blocks", &CudaEngine::num_kv_blocks)
      .def_prop_ro("device", &CudaEngine::device)
      .def_prop_ro("device_bytes", &CudaEngine::device_bytes)
      .def_prop_ro("block_table", &CudaEngine::block_table, nb::rv_policy::reference_internal,
                   "This rank's KV bookkeeping (a BlockTable shared by every layer's device pool).")
      .def(
          "fill_sequence_random",
          [](CudaEngine& e, int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
            nb::gil_scoped_release release;
            e.fill_sequence_random(seq_id, num_tokens, seed, scale);
          },
          "seq_id"_a, "num_tokens"_a, "seed"_a = 0, "scale"_a = 1.f,
          "Benchmark aid: positions [0, num_tokens) of an empty sequence with random rows, straight into "
          "every layer's device pool.")
      .def("step", &engine_step<CudaEngine>, "tokens"_a, "positions"_a, "seq_ids"_a, "q_seq_index"_a, "logit_rows"_a,
           "One forward pass on the GPU: tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L]\n"
           "-> logits [L, vocab_size] float32 (host), identical on every rank.")
      .def_prop_ro("timings", [](const CudaEngine& e) { return timings_dict(e.timings()); });

  c.def(
      "nccl_communicator",
      [](Communicator& bootstrap, int device) {
        nb::gil_scoped_release release;
        cuda::set_device(device);
        return cuda::make_nccl_host_communicator(bootstrap);
      },
      "bootstrap"_a, "device"_a = 0,
      "An NCCL communicator over bootstrap's ranks (collective: rank 0 makes the unique id and broadcasts it "
      "over `bootstrap`, e.g. helix.comm.world()), on CUDA device `device`. Its collectives take NumPy "
      "arrays like any helix Communicator (staged through device memory).");
  c.def("set_device", &cuda::set_device, "device"_a, "Makes `device` current for this thread.");
}

nb::dict bench_dict(const cuda::BenchResult& r) {
  nb::dict d;
  d["ms"] = r.ms;
  d["bytes"] = r.bytes;
  d["flops"] = r.flops;
  return d;
}

}  // namespace

void bind_cuda(nb::module_& m) {
  using namespace nb::literals;
  nb::module_ c = m.def_submodule("cuda", "CUDA backend: status, one test entry point per kernel, benchmarks");
  c.def("built_with_cuda", &cuda::built_with_cuda, "True when the runtime was compiled with the CUDA backend.");
  c.def("built_with_nccl", &cuda::built_with_nccl, "True when the runtime was compiled with NCCL.");
  c.def("built_with_cublas", &cuda::built_with_cublas, "True when the runtime was compiled with cuBLAS.");
  c.def("device_count", &cuda::device_count, "Number of visible CUDA devices (0 without a GPU).");
  c.def("emulated", &cuda::emulated,
        "True when the CUDA backend is the SIMT emulator (cuda/ running on the CPU): results are checked, "
        "timings mean nothing.");
  c.def("device_name", [] { return std::string(cuda::device_name()); }, "Name of the current CUDA device.");
  c.def("multiprocessor_count", &cuda::multiprocessor_count, "SMs of the current CUDA device.");
  c.def("tensor_core_attention_supported", &cuda::tensor_core_attention_supported, "D"_a, "R"_a,
        "True when the tensor-core attention kernel handles key width D and value width R.");
  c.def("mla_attention", &mla_attention, "q"_a, "kv"_a, "q_pos"_a, "kv_pos"_a, "scale"_a, "kv_lora_rank"_a,
        "kernel"_a = "auto", "num_splits"_a = 0,
        "Partial MLA attention on the GPU over contiguous keys. q [T,H,D] bf16, kv [S,D] bf16, q_pos [T] i64, "
        "kv_pos [S] i64 -> (o [T,H,R] f32, lse [T,H] f32).");
  c.def("paged_mla_attention", &paged_mla_attention, "q"_a, "q_pos"_a, "q_seq"_a, "pool"_a, "block_tables"_a,
        "kv_pos"_a, "num_slots"_a, "scale"_a, "kv_lora_rank"_a, "kernel"_a = "auto", "num_splits"_a = 0,
        "Paged partial MLA attention on the GPU. q [T,H,D] bf16, q_pos [T] i64, q_seq [T] i64, "
        "pool [num_blocks, tokens_per_block, D] bf16, block_tables [B, max_blocks] i32, "
        "kv_pos [num_blocks, tokens_per_block] i64 (position of each pool row), num_slots [B] i64 -> (o [T,H,R] f32, "
        "lse [T,H] f32).");
  c.def("merge_states", &merge_states, "o_parts"_a, "lse_parts"_a,
        "LSE merge on the GPU. o_parts [N,...,D] f32, lse_parts [N,...] f32 -> (o [...,D], lse [...]).");
  c.def("kv_append", &kv_append, "pool"_a, "rows"_a, "dst_rows"_a,
        "Returns a copy of pool [num_blocks, tpb, D] with pool row dst_rows[i] set to rows[i].");
  c.def("rms_norm", &rms_norm, "x"_a, "weight"_a, "eps"_a = 1e-6f, "RMSNorm of x [T,N] (f32 or bf16).");
  c.def("rope", &rope, "x"_a, "positions"_a, "inv_freq"_a, "attention_factor"_a = 1.f, "offset"_a = 0,
        "Interleaved RoPE on channels [offset, offset + 2*len(inv_freq)) of x [T, heads, width]; returns a copy.");
  c.def("silu_mul", &silu_mul, "gate"_a, "up"_a, "silu(gate) * up for gate, up [T, I] (f32 or bf16).");
  c.def("moe_experts", &moe_experts, "h"_a, "topk_idx"_a, "topk_weight"_a, "gate_up"_a, "down"_a, "local_first"_a = 0,
        "The routed experts of a decode step on the GPU (twin of helix._core.layers.moe_experts): h [T, hidden] f32, "
        "topk_idx [T, top_k] i64, topk_weight [T, top_k] f32, gate_up [n_local, 2F, hidden] and down "
        "[n_local, hidden, F] f32 or bf16 -> out [T, hidden] f32.");
  c.def("moe_route", &moe_route, "logits"_a, "bias"_a, "n_group"_a, "topk_group"_a, "top_k"_a,
        "routed_scaling_factor"_a = 1.f, "norm_topk_prob"_a = true,
        "DeepSeek noaux_tc routing of logits [T,E] f32 -> (weights [T,top_k] f32, ids [T,top_k] i64).");
  c.def("linear", &linear, "x"_a, "weight"_a, "out_dtype"_a = "float32",
        "x [T,K] bf16 @ weight [N,K]^T bf16 through cuBLAS (fp32 compute) -> [T,N].");
  c.def("nccl_collectives_one_rank", &nccl_collectives_one_rank, "x"_a,
        "Runs every collective of a one-rank NCCL communicator on x [n] f32; returns the results by name.");
  c.def(
      "bench_copy", [](size_t bytes, int iters) { return bench_dict(cuda::bench_copy(bytes, iters)); }, "bytes"_a,
      "iters"_a = 20);
  c.def(
      "bench_gemm_bf16",
      [](int64_t m, int64_t n, int64_t k, int iters) { return bench_dict(cuda::bench_gemm_bf16(m, n, k, iters)); },
      "m"_a, "n"_a, "k"_a, "iters"_a = 20);
  c.def(
      "bench_paged_mla_attention",
      [](int64_t batch, int64_t context, int64_t heads, int64_t D, int64_t R, const std::string& kernel, int iters,
         int num_splits) {
        HELIX_CHECK_ARG(num_splits >= 0, "argument 'num_splits' must be >= 0 (0: the launch's plan), got ", num_splits);
        return bench_dict(
            cuda::bench_paged_mla_attention(batch, context, heads, D, R, parse_kernel(kernel), iters, num_splits));
      },
      "batch"_a, "context"_a, "heads"_a = 128, "D"_a = 576, "R"_a = 512, "kernel"_a = "auto", "iters"_a = 10,
      "num_splits"_a = 0);
  c.def(
      "bench_merge_states",
      [](int64_t N, int64_t M, int64_t D, int iters) { return bench_dict(cuda::bench_merge_states(N, M, D, iters)); },
      "N"_a, "M"_a, "D"_a, "iters"_a = 20);
  c.def(
      "bench_moe_experts",
      [](int64_t T, int64_t top_k, int64_t n_local, int64_t hidden, int64_t F, int iters) {
        HELIX_CHECK_ARG(cuda::moe_experts_supported(T, top_k, n_local, hidden, F) && top_k <= n_local,
                        "bench_moe_experts: shape T=", T, " top_k=", top_k, " n_local=", n_local, " hidden=", hidden,
                        " F=", F, " is not one moe_experts takes (and top_k <= n_local)");
        return bench_dict(cuda::bench_moe_experts(T, top_k, n_local, hidden, F, iters));
      },
      "T"_a, "top_k"_a, "n_local"_a, "hidden"_a, "F"_a, "iters"_a = 10);
  bind_cuda_engine(c);
}

}  // namespace helix::bind
