// helix._core.cuda_bench: the CUDA benchmarks' entry points (cuda/bench.hpp, internal: not the runtime's C++
// API), for python/helix/bench/cuda_ops.py. Device-resident data timed with CUDA events; each returns
// {ms, bytes, flops} per call. Without CUDA or a GPU they raise helix.HelixError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "../../cuda/bench.hpp"
#include "helix/error.hpp"
#include "helix/ops/moe_experts.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

cuda::AttentionKernel parse_attention_kernel(const std::string& name);  // bind_ops.cpp

namespace {

nb::dict bench_dict(const cuda::BenchResult& r) {
  nb::dict d;
  d["ms"] = r.ms;
  d["bytes"] = r.bytes;
  d["flops"] = r.flops;
  return d;
}

}  // namespace

void bind_cuda_bench(nb::module_& m) {
  nb::module_ c = m.def_submodule("cuda_bench", "CUDA kernel benchmarks (device-resident data, CUDA events)");
  c.def(
      "bench_copy", [](size_t bytes, int iters) { return bench_dict(cuda::bench_copy(bytes, iters)); }, "bytes"_a,
      "iters"_a = 20, "Device-to-device copy of `bytes` (read + write counted): the bandwidth ceiling.");
  c.def(
      "bench_gemm_bf16",
      [](int64_t m, int64_t n, int64_t k, int iters) { return bench_dict(cuda::bench_gemm_bf16(m, n, k, iters)); },
      "m"_a, "n"_a, "k"_a, "iters"_a = 20, "A bf16 cuBLAS GEMM [m, k] x [k, n]: the arithmetic ceiling.");
  c.def(
      "bench_paged_mla_attention",
      [](int64_t batch, int64_t context, int64_t heads, int64_t D, int64_t R, const std::string& kernel, int iters,
         int num_splits) {
        HELIX_CHECK_ARG(num_splits >= 0, "argument 'num_splits' must be >= 0 (0: the launch's plan), got ", num_splits);
        return bench_dict(cuda::bench_paged_mla_attention(batch, context, heads, D, R, parse_attention_kernel(kernel),
                                                          iters, num_splits));
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
        HELIX_CHECK_ARG(moe_experts_supported(T, top_k, n_local, hidden, F) && top_k <= n_local,
                        "bench_moe_experts: shape T=", T, " top_k=", top_k, " n_local=", n_local, " hidden=", hidden,
                        " F=", F, " is not one moe_experts takes (and top_k <= n_local)");
        return bench_dict(cuda::bench_moe_experts(T, top_k, n_local, hidden, F, iters));
      },
      "T"_a, "top_k"_a, "n_local"_a, "hidden"_a, "F"_a, "iters"_a = 10);
}

}  // namespace helix::bind
