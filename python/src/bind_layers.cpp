// helix._core.layers: the CPU ops of a decoder layer (linear, rms_norm, rope, silu_mul, moe_route,
// moe_experts, embedding). Thin: each function views its NumPy arguments and calls the validated op.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "arrays.hpp"
#include "helix/ops/embedding.hpp"
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

}  // namespace

void bind_layers(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("layers", "CPU ops of a DeepSeek-V3 decoder layer");

  m.def(
      "linear",
      [](nb::handle x, nb::handle w, nb::handle out, bool accumulate, const std::string& isa) {
        HostArray xv = to_view(x, "x"), wv = to_view(w, "w");
        if (accumulate && out.is_none()) throw ArgumentError("argument 'out' is required when accumulate=True");
        HostArray yv = output(out, "out", {dim_or(xv, 0, 0), dim_or(wv, 0, 0)}, DType::Float32);
        {
          nb::gil_scoped_release release;  // weights stay alive through xv/wv's owners
          linear(xv.view, wv.view, yv.view, accumulate, isa);
        }
        return yv.owner;
      },
      "x"_a, "w"_a, "out"_a = nb::none(), "accumulate"_a = false, "isa"_a = "",
      "y[T, N] = x[T, K] @ w[N, K]^T (x float32, w float32 or bfloat16); with out= the result is written there,\n"
      "or added to it when accumulate=True. Returns y (out itself when given). isa: '' (best for this CPU:\n"
      "AMX tiles for bf16 weights at T >= LINEAR_AMX_MIN_TOKENS where usable, else linear_isa()), or 'amx', 'avx512', "
      "'avx2' or\n"
      "'portable' (tests and benchmarks; see linear_isas()).");

  m.def(
      "rms_norm",
      [](nb::handle x, nb::handle weight, float eps, nb::handle out) {
        HostArray xv = to_view(x, "x"), wv = to_view(weight, "weight");
        HostArray yv = output(out, "out", xv.view.shape, DType::Float32);
        rms_norm(xv.view, wv.view, eps, yv.view);
        return yv.owner;
      },
      "x"_a, "weight"_a, "eps"_a, "out"_a = nb::none(),
      "y[T, D] = x * rsqrt(mean(x^2, -1) + eps) * weight (float32). out may be x (in place). Returns y.");

  m.def(
      "rope",
      [](nb::handle x, nb::handle positions, nb::handle inv_freq, int64_t offset, float attention_factor) {
        HostArray xv = to_view(x, "x"), pv = to_view(positions, "positions"), fv = to_view(inv_freq, "inv_freq");
        if (!nb::cast<bool>(x.attr("flags").attr("writeable"))) throw ArgumentError("argument 'x' must be writeable");
        rope(xv.view, pv.view, fv.view, offset, attention_factor);
      },
      "x"_a, "positions"_a, "inv_freq"_a, "offset"_a = 0, "attention_factor"_a = 1.0f,
      "Rotates interleaved pairs of channels [offset, offset + 2 * len(inv_freq)) of x [T, S] or [T, H, S]\n"
      "(float32) in place by angle positions[t] * inv_freq[i] (positions int64 [T], inv_freq float32),\n"
      "cos and sin scaled by attention_factor.");

  m.def(
      "silu_mul",
      [](nb::handle gate_up, nb::handle out) {
        HostArray gv = to_view(gate_up, "gate_up");
        HostArray ov = output(out, "out", {dim_or(gv, 0, 0), dim_or(gv, 1, 0) / 2}, DType::Float32);
        silu_mul(gv.view, ov.view);
        return ov.owner;
      },
      "gate_up"_a, "out"_a = nb::none(), "out[T, F] = silu(gate_up[:, :F]) * gate_up[:, F:] (float32). Returns out.");

  m.def(
      "moe_route",
      [](nb::handle logits, nb::handle bias, int64_t top_k, int64_t n_group, int64_t topk_group, bool norm_topk_prob,
         float routed_scaling_factor) {
        HostArray lv = to_view(logits, "logits"), bv = to_view(bias, "bias");
        const int64_t T = dim_or(lv, 0, 0), k = std::max<int64_t>(top_k, 0);
        HostArray idx = zeros({T, k}, DType::Int32), weight = zeros({T, k}, DType::Float32);
        moe_route(lv.view, bv.view, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor, idx.view,
                  weight.view);
        return nb::make_tuple(idx.owner, weight.owner);
      },
      "logits"_a, "bias"_a, "top_k"_a, "n_group"_a, "topk_group"_a, "norm_topk_prob"_a = true,
      "routed_scaling_factor"_a = 1.0f,
      "DeepSeek-V3 noaux_tc routing. logits [T, E] float32 (h @ gate^T), bias [E] float32\n"
      "(e_score_correction_bias). Returns (topk_idx int32 [T, top_k] in descending biased score,\n"
      "topk_weight float32 [T, top_k]).");

  m.def(
      "moe_experts",
      [](nb::handle h, nb::handle topk_idx, nb::handle topk_weight, nb::handle gate_up, nb::handle down,
         int64_t local_first, nb::handle out) {
        HostArray hv = to_view(h, "h"), iv = to_view(topk_idx, "topk_idx"), wv = to_view(topk_weight, "topk_weight");
        HostArray gv = to_view(gate_up, "gate_up"), dv = to_view(down, "down");
        HostArray ov = output(out, "out", hv.view.shape, DType::Float32);
        {
          nb::gil_scoped_release release;
          moe_experts(hv.view, iv.view, wv.view, gv.view, dv.view, local_first, ov.view);
        }
        return ov.owner;
      },
      "h"_a, "topk_idx"_a, "topk_weight"_a, "gate_up"_a, "down"_a, "local_first"_a = 0, "out"_a = nb::none(),
      "Adds sum_k topk_weight[t,k] * down_e(silu(gate_e(h[t])) * up_e(h[t])) over the selected experts e in\n"
      "[local_first, local_first + n_local) into out [T, hidden] (zeros when not given). h [T, hidden] float32;\n"
      "topk_idx int32 [T, top_k]; topk_weight float32 [T, top_k]; gate_up [n_local, 2F, hidden] and\n"
      "down [n_local, hidden, F] float32 or bfloat16. Returns out.");

  m.def(
      "embedding",
      [](nb::handle ids, nb::handle table, int64_t vocab_start, nb::handle out) {
        HostArray iv = to_view(ids, "ids"), tv = to_view(table, "table");
        HostArray ov = output(out, "out", {dim_or(iv, 0, 0), dim_or(tv, 1, 0)}, DType::Float32);
        embedding(iv.view, tv.view, vocab_start, ov.view);
        return ov.owner;
      },
      "ids"_a, "table"_a, "vocab_start"_a = 0, "out"_a = nb::none(),
      "out[T, hidden] (float32) = table[ids - vocab_start] for ids in [vocab_start, vocab_start + len(table)),\n"
      "zeros otherwise. ids int64 [T]; table float32 or bfloat16 [V, hidden]. Returns out.");

  m.def("linear_isa", &linear_isa, "The SIMD path linear uses on this CPU: 'avx512', 'avx2' or 'portable'.");
  m.def("linear_isas", &linear_isas,
        "Every path linear(isa=...) accepts on this CPU and OS, best first: 'amx' (bf16 weights on AMX tiles,\n"
        "when usable), then the SIMD paths.");
  m.attr("LINEAR_AMX_MIN_TOKENS") = kLinearAmxMinTokens;
}

}  // namespace helix::bind
