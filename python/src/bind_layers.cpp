// The ops of a decoder layer, bound twice with one signature: helix._core.layers runs them on the CPU and
// helix._core.cuda on the GPU (host arrays in and out, through DeviceCall). Each function views its NumPy
// arguments, validates them with the op's check_<op>_args for its device, and runs <op>_cpu or
// cuda::launch_<op> (cpp/include/helix/ops/<op>.hpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <string>

#include "arrays.hpp"
#include "device_call.hpp"
#include "helix/ops/embedding.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/kv_append.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

// An output argument: a new array (zeros) when `obj` is None, else `obj` itself, which must be writeable.
HostArray output(nb::handle obj, const char* name, const std::vector<int64_t>& shape, DType dtype) {
  if (obj.is_none()) return zeros(shape, dtype);
  HostArray a = to_view(obj, name);
  if (!nb::cast<bool>(obj.attr("flags").attr("writeable"))) {
    throw ArgumentError(detail::concat("argument '", name, "' must be writeable"));
  }
  return a;
}

int64_t dim_or(const HostArray& a, int64_t axis, int64_t fallback) {
  return a.view.ndim() > axis ? a.view.dim(axis) : fallback;
}

nb::object linear_py(Device dev, nb::handle x, nb::handle w, nb::handle out, bool accumulate, const std::string& isa) {
  HostArray xv = to_view(x, "x"), wv = to_view(w, "w");
  if (accumulate && out.is_none()) throw ArgumentError("argument 'out' is required when accumulate=True");
  HostArray yv = output(out, "out", {dim_or(xv, 0, 0), dim_or(wv, 0, 0)}, DType::Float32);
  LinearParams p = check_linear_args(xv.view, wv.view, yv.view, accumulate, dev);
  if (dev == Device::Cpu) {
    nb::gil_scoped_release release;  // the arrays stay alive through xv/wv/yv's owners
    isa.empty() ? linear_cpu(p) : linear_cpu_isa(p, isa);
    return yv.owner;
  }
  HELIX_CHECK_ARG(isa.empty() || isa == "cublas", "argument 'isa' must be '' or 'cublas' on cuda, got '", isa, "'");
  DeviceCall c;
  p.x = c.in<const void>(xv.view);
  p.w = c.in<const void>(wv.view);
  p.y = c.out<void>(yv.view);
  cuda::launch_linear(p, nullptr);
  c.finish();
  return yv.owner;
}

nb::object head_linear_py(Device dev, nb::handle x, nb::handle w, nb::handle out) {
  HostArray xv = to_view(x, "x"), wv = to_view(w, "w");
  HostArray yv = output(out, "out", {dim_or(xv, 0, 0), dim_or(xv, 1, 0), dim_or(wv, 1, 0)}, DType::Float32);
  HeadLinearParams p = check_head_linear_args(xv.view, wv.view, yv.view, dev);
  if (dev == Device::Cpu) {
    nb::gil_scoped_release release;
    head_linear_cpu(p);
    return yv.owner;
  }
  DeviceCall c;
  p.x = c.in<const void>(xv.view);
  p.w = c.in<const void>(wv.view);
  p.y = c.out<float>(yv.view);
  cuda::launch_head_linear(p, nullptr);
  c.finish();
  return yv.owner;
}

nb::object rms_norm_py(Device dev, nb::handle x, nb::handle weight, float eps, nb::handle out) {
  HostArray xv = to_view(x, "x"), wv = to_view(weight, "weight");
  HostArray yv = output(out, "out", xv.view.shape, xv.view.dtype);
  RmsNormParams p = check_rms_norm_args(xv.view, wv.view, eps, yv.view, dev);
  if (dev == Device::Cpu) {
    rms_norm_cpu(p);
    return yv.owner;
  }
  DeviceCall c;
  p.x = c.in<const void>(xv.view);
  p.w = c.in<const void>(wv.view);
  p.y = c.out<void>(yv.view);
  cuda::launch_rms_norm(p, nullptr);
  c.finish();
  return yv.owner;
}

void rope_py(Device dev, nb::handle x, nb::handle positions, nb::handle inv_freq, int64_t offset,
             float attention_factor) {
  HostArray xv = to_view(x, "x"), pv = to_view(positions, "positions"), fv = to_view(inv_freq, "inv_freq");
  if (!nb::cast<bool>(x.attr("flags").attr("writeable"))) throw ArgumentError("argument 'x' must be writeable");
  RopeParams p = check_rope_args(xv.view, pv.view, fv.view, offset, attention_factor, dev);
  if (dev == Device::Cpu) {
    rope_cpu(p);
    return;
  }
  DeviceCall c;
  p.x = c.out<void>(xv.view);
  p.pos = c.in<const int64_t>(pv.view);
  p.inv_freq = c.in<const float>(fv.view);
  cuda::launch_rope(p, nullptr);
  c.finish();
}

nb::object silu_mul_py(Device dev, nb::handle gate_up, nb::handle out) {
  HostArray gv = to_view(gate_up, "gate_up");
  HostArray ov = output(out, "out", {dim_or(gv, 0, 0), dim_or(gv, 1, 0) / 2}, gv.view.dtype);
  SiluMulParams p = check_silu_mul_args(gv.view, ov.view, dev);
  if (dev == Device::Cpu) {
    silu_mul_cpu(p);
    return ov.owner;
  }
  DeviceCall c;
  p.gate_up = c.in<const void>(gv.view);
  p.out = c.out<void>(ov.view);
  cuda::launch_silu_mul(p, nullptr);
  c.finish();
  return ov.owner;
}

nb::tuple moe_route_py(Device dev, nb::handle logits, nb::handle bias, int64_t top_k, int64_t n_group,
                       int64_t topk_group, bool norm_topk_prob, float routed_scaling_factor) {
  HostArray lv = to_view(logits, "logits"), bv = to_view(bias, "bias");
  const int64_t T = dim_or(lv, 0, 0), k = std::max<int64_t>(top_k, 0);
  HostArray idx = zeros({T, k}, DType::Int32), weight = zeros({T, k}, DType::Float32);
  MoeRouteParams p = check_moe_route_args(lv.view, bv.view, top_k, n_group, topk_group, norm_topk_prob,
                                          routed_scaling_factor, idx.view, weight.view, dev);
  if (dev == Device::Cpu) {
    moe_route_cpu(p);
  } else {
    DeviceCall c;
    p.logits = c.in<const float>(lv.view);
    p.bias = c.in<const float>(bv.view);
    p.topk_idx = c.out<int32_t>(idx.view);
    p.topk_weight = c.out<float>(weight.view);
    cuda::launch_moe_route(p, nullptr);
    c.finish();
  }
  return nb::make_tuple(idx.owner, weight.owner);
}

nb::object moe_experts_py(Device dev, nb::handle h, nb::handle topk_idx, nb::handle topk_weight, nb::handle gate_up,
                          nb::handle down, int64_t local_first, nb::handle out) {
  HostArray hv = to_view(h, "h"), iv = to_view(topk_idx, "topk_idx"), wv = to_view(topk_weight, "topk_weight");
  HostArray gv = to_view(gate_up, "gate_up"), dv = to_view(down, "down");
  HostArray ov = output(out, "out", hv.view.shape, DType::Float32);
  MoeExpertsParams p = check_moe_experts_args(hv.view, iv.view, wv.view, gv.view, dv.view, local_first, ov.view, dev);
  if (dev == Device::Cpu) {
    nb::gil_scoped_release release;
    moe_experts_cpu(p);
    return ov.owner;
  }
  DeviceCall c;
  p.h = c.in<const float>(hv.view);
  p.topk_idx = c.in<const int32_t>(iv.view);
  p.topk_weight = c.in<const float>(wv.view);
  p.gate_up = c.in<const void>(gv.view);
  p.down = c.in<const void>(dv.view);
  p.out = c.out<float>(ov.view);
  p.workspace = c.scratch(cuda::moe_experts_workspace_bytes(p));
  cuda::launch_moe_experts(p, nullptr);
  c.finish();
  return ov.owner;
}

nb::object embedding_py(Device dev, nb::handle ids, nb::handle table, int64_t vocab_start, nb::handle out) {
  HostArray iv = to_view(ids, "ids"), tv = to_view(table, "table");
  HostArray ov = output(out, "out", {dim_or(iv, 0, 0), dim_or(tv, 1, 0)}, DType::Float32);
  EmbeddingParams p = check_embedding_args(iv.view, tv.view, vocab_start, ov.view, dev);
  if (dev == Device::Cpu) {
    embedding_cpu(p);
    return ov.owner;
  }
  DeviceCall c;
  p.ids = c.in<const int64_t>(iv.view);
  p.table = c.in<const void>(tv.view);
  p.out = c.out<float>(ov.view);
  cuda::launch_embedding(p, nullptr);
  c.finish();
  return ov.owner;
}

nb::object kv_append_py(Device dev, nb::handle pool, nb::handle rows, nb::handle dst_rows) {
  HostArray pv = to_view(pool, "pool"), rv = to_view(rows, "rows"), dv = to_view(dst_rows, "dst_rows");
  HostArray out = new_array(pv.view.shape, pv.view.dtype);  // a copy of the pool, the rows written into it
  std::memcpy(out.view.data, pv.view.data, static_cast<size_t>(pv.view.nbytes()));
  KvAppendParams p = check_kv_append_args(out.view, rv.view, dv.view, dev);
  if (dev == Device::Cpu) {
    kv_append_cpu(p);
    return out.owner;
  }
  DeviceCall c;
  p.pool = c.out<void>(out.view);
  p.rows = c.in<const void>(rv.view);
  p.dst_rows = c.in<const int64_t>(dv.view);
  cuda::launch_kv_append(p, nullptr);
  c.finish();
  return out.owner;
}

}  // namespace

void bind_layer_ops(nb::module_& m, Device dev) {
  m.def(
      "linear",
      [dev](nb::handle x, nb::handle w, nb::handle out, bool accumulate, const std::string& isa) {
        return linear_py(dev, x, w, out, accumulate, isa);
      },
      "x"_a, "w"_a, "out"_a = nb::none(), "accumulate"_a = false, "isa"_a = "",
      "y[T, N] = x[T, K] @ w[N, K]^T; with out= the result is written there, or added to it when\n"
      "accumulate=True. Returns y (out itself when given). Dtypes (cpu): x float32, w float32 or bfloat16,\n"
      "out float32; (cuda) x and w of one dtype, out float32 (or bfloat16 with bfloat16 inputs).\n"
      "isa: '' (the device's best path at the process's linear_precision()); cpu: a name of linear_isas();\n"
      "cuda: 'cublas'.");
  m.def(
      "head_linear", [dev](nb::handle x, nb::handle w, nb::handle out) { return head_linear_py(dev, x, w, out); },
      "x"_a, "w"_a, "out"_a = nb::none(),
      "Per-head linear: out[t, h, :] = w[h] @ x[t, h, :] for x [T, H, K], w [H, N, K] -> out [T, H, N] float32\n"
      "(cpu: x float32, w float32 or bfloat16; cuda: x and w of one dtype). Returns out.");
  m.def(
      "rms_norm",
      [dev](nb::handle x, nb::handle weight, float eps, nb::handle out) {
        return rms_norm_py(dev, x, weight, eps, out);
      },
      "x"_a, "weight"_a, "eps"_a = 1e-6f, "out"_a = nb::none(),
      "y[T, D] = x * rsqrt(mean(x^2, -1) + eps) * weight (float32; cuda also bfloat16: x, weight and out of\n"
      "one dtype). out may be x (in place). Returns y.");
  m.def(
      "rope",
      [dev](nb::handle x, nb::handle positions, nb::handle inv_freq, int64_t offset, float attention_factor) {
        rope_py(dev, x, positions, inv_freq, offset, attention_factor);
      },
      "x"_a, "positions"_a, "inv_freq"_a, "offset"_a = 0, "attention_factor"_a = 1.0f,
      "Rotates interleaved pairs of channels [offset, offset + 2 * len(inv_freq)) of x [T, S] or [T, H, S]\n"
      "(float32; cuda also bfloat16) in place by angle positions[t] * inv_freq[i] (positions int64 [T],\n"
      "inv_freq float32), cos and sin scaled by attention_factor. Returns None.");
  m.def(
      "silu_mul", [dev](nb::handle gate_up, nb::handle out) { return silu_mul_py(dev, gate_up, out); }, "gate_up"_a,
      "out"_a = nb::none(),
      "out[T, F] = silu(gate_up[:, :F]) * gate_up[:, F:] (float32; cuda also bfloat16). Returns out.");
  m.def(
      "moe_route",
      [dev](nb::handle logits, nb::handle bias, int64_t top_k, int64_t n_group, int64_t topk_group, bool norm_topk_prob,
            float routed_scaling_factor) {
        return moe_route_py(dev, logits, bias, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor);
      },
      "logits"_a, "bias"_a, "top_k"_a, "n_group"_a, "topk_group"_a, "norm_topk_prob"_a = true,
      "routed_scaling_factor"_a = 1.0f,
      "DeepSeek-V3 noaux_tc routing. logits [T, E] float32 (h @ gate^T), bias [E] float32\n"
      "(e_score_correction_bias). Returns (topk_idx int32 [T, top_k] in descending biased score,\n"
      "topk_weight float32 [T, top_k]).");
  m.def(
      "moe_experts",
      [dev](nb::handle h, nb::handle topk_idx, nb::handle topk_weight, nb::handle gate_up, nb::handle down,
            int64_t local_first,
            nb::handle out) { return moe_experts_py(dev, h, topk_idx, topk_weight, gate_up, down, local_first, out); },
      "h"_a, "topk_idx"_a, "topk_weight"_a, "gate_up"_a, "down"_a, "local_first"_a = 0, "out"_a = nb::none(),
      "Adds sum_k topk_weight[t,k] * down_e(silu(gate_e(h[t])) * up_e(h[t])) over the selected experts e in\n"
      "[local_first, local_first + n_local) into out [T, hidden] (zeros when not given). h [T, hidden] float32;\n"
      "topk_idx int32 [T, top_k]; topk_weight float32 [T, top_k]; gate_up [n_local, 2F, hidden] and\n"
      "down [n_local, hidden, F] float32 or bfloat16 (cuda: one dtype, T <= 16). Returns out.");
  m.def(
      "embedding",
      [dev](nb::handle ids, nb::handle table, int64_t vocab_start, nb::handle out) {
        return embedding_py(dev, ids, table, vocab_start, out);
      },
      "ids"_a, "table"_a, "vocab_start"_a = 0, "out"_a = nb::none(),
      "out[T, hidden] (float32) = table[ids - vocab_start] for ids in [vocab_start, vocab_start + len(table)),\n"
      "zeros otherwise. ids int64 [T]; table float32 or bfloat16 [V, hidden]. Returns out.");
  m.def(
      "kv_append",
      [dev](nb::handle pool, nb::handle rows, nb::handle dst_rows) { return kv_append_py(dev, pool, rows, dst_rows); },
      "pool"_a, "rows"_a, "dst_rows"_a,
      "A copy of pool [num_blocks, tokens_per_block, D] (float32 or bfloat16) with pool row dst_rows[i] set to\n"
      "rows[i] [n, D] for every dst_rows[i] >= 0 (int64 [n]; negative entries are skipped).");
}

void bind_layers(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("layers", "CPU ops of a DeepSeek-V3 decoder layer (twins: helix._core.cuda)");
  bind_layer_ops(m, Device::Cpu);
  m.def("linear_isa", &linear_isa, "The SIMD path linear uses on this CPU: 'avx512', 'avx2' or 'portable'.");
  m.def("linear_isas", &linear_isas,
        "Every path linear(isa=...) accepts on this CPU and OS, fastest first: 'amx_bf16', 'amx' (bf16 weights\n"
        "on AMX tiles, x rounded to bf16 / split into bf16 hi + lo; when usable), 'avx512_bf16',\n"
        "'avx512_bf16_split' (the same with AVX512_BF16), then the SIMD paths.");
  m.def(
      "set_linear_precision",
      [](const std::string& precision) {
        HELIX_CHECK_ARG(precision == "float32" || precision == "bf16",
                        "argument 'precision' must be 'float32' or 'bf16', got '", precision, "'");
        set_linear_precision(precision == "bf16" ? LinearPrecision::Bf16 : LinearPrecision::Float32);
      },
      "precision"_a,
      "The process-wide compute precision of linear with bfloat16 weights on the cpu: 'float32' (default,\n"
      "float32-grade) or 'bf16' (x rounded to bf16 in calls of >= LINEAR_BF16_MIN_TOKENS tokens: one bf16\n"
      "product per multiply-add, ~2^-9 relative per x element).");
  m.def(
      "linear_precision", [] { return linear_precision() == LinearPrecision::Bf16 ? "bf16" : "float32"; },
      "The compute precision set by set_linear_precision: 'float32' or 'bf16'.");
  m.attr("LINEAR_AMX_MIN_TOKENS") = kLinearAmxMinTokens;
  m.attr("LINEAR_BF16_MIN_TOKENS") = kLinearBf16MinTokens;
}

}  // namespace helix::bind
