// helix._core.ops: the attention kernels (helix/ops/attention.hpp). Thin: views in, outputs allocated here,
// validation and work in the C++ op, GIL released around the kernel.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <string>

#include "arrays.hpp"
#include "helix/kv_cache.hpp"
#include "helix/ops/attention.hpp"

namespace nb = nanobind;

namespace helix::bind {

namespace {

nb::tuple mla_attention_py(nb::handle q, nb::handle kv, nb::handle q_pos, nb::handle kv_pos, float scale,
                           int64_t kv_lora_rank) {
  HostArray q_a = to_view(q, "q"), kv_a = to_view(kv, "kv");
  HostArray qp_a = to_view(q_pos, "q_pos"), kp_a = to_view(kv_pos, "kv_pos");
  const MlaShape s = check_mla_attention_args(q_a.view, kv_a.view, qp_a.view, kp_a.view, scale, kv_lora_rank);
  HostArray o = new_array({s.T, s.H, s.R}, DType::Float32);
  HostArray lse = new_array({s.T, s.H}, DType::Float32);
  {
    nb::gil_scoped_release release;
    mla_attention(q_a.view, kv_a.view, qp_a.view, kp_a.view, scale, kv_lora_rank, o.view, lse.view);
  }
  return nb::make_tuple(o.owner, lse.owner);
}

nb::tuple paged_mla_attention_py(nb::handle q, nb::handle q_pos, const PagedKVCache& cache, nb::handle seq_ids,
                                 nb::handle q_seq_index, float scale, int64_t kv_lora_rank) {
  HostArray q_a = to_view(q, "q"), qp_a = to_view(q_pos, "q_pos");
  HostArray ids_a = to_view(seq_ids, "seq_ids"), idx_a = to_view(q_seq_index, "q_seq_index");
  const MlaShape s = check_paged_mla_attention_args(q_a.view, qp_a.view, cache.pool(), cache.table(), ids_a.view,
                                                    idx_a.view, scale, kv_lora_rank);
  HostArray o = new_array({s.T, s.H, s.R}, DType::Float32);
  HostArray lse = new_array({s.T, s.H}, DType::Float32);
  {
    nb::gil_scoped_release release;
    paged_mla_attention(q_a.view, qp_a.view, cache.pool(), cache.table(), ids_a.view, idx_a.view, scale, kv_lora_rank,
                        o.view, lse.view);
  }
  return nb::make_tuple(o.owner, lse.owner);
}

MlaKernelPath parse_path(const std::string& name) {
  std::string names;
  for (MlaKernelPath p : kMlaKernelPaths) {
    if (mla_kernel_path_name(p) == name) return p;
    names += (names.empty() ? "'" : ", '") + std::string(mla_kernel_path_name(p)) + "'";
  }
  throw ArgumentError("argument 'path' must be one of " + names + ", got '" + name + "'");
}

// Every kernel path: name -> "" where it runs here, else why it cannot.
nb::dict kernel_paths_py() {
  nb::dict out;
  for (MlaKernelPath p : kMlaKernelPaths) {
    const std::string_view name = mla_kernel_path_name(p), why = mla_kernel_path_unavailable(p);
    out[nb::str(name.data(), name.size())] = nb::str(why.data(), why.size());
  }
  return out;
}

}  // namespace

void bind_ops(nb::module_& m) {
  nb::module_ ops = m.def_submodule("ops", "CPU attention kernels and the merge of partial states");

  ops.def("mla_attention", &mla_attention_py, nb::arg("q"), nb::arg("kv"), nb::arg("q_pos"), nb::arg("kv_pos"),
          nb::arg("scale"), nb::arg("kv_lora_rank"),
          "Partial MLA attention over one shard of latent keys.\n\n"
          "q [T, H, D] float32|bfloat16; kv [S, D] float32|bfloat16 (first kv_lora_rank columns are the value);\n"
          "q_pos [T], kv_pos [S] int64 (key s visible to query t iff kv_pos[s] <= q_pos[t]).\n"
          "Returns (o [T, H, kv_lora_rank] float32, lse [T, H] float32, natural log); nothing visible: o=0, "
          "lse=-inf.");
  ops.def("paged_mla_attention", &paged_mla_attention_py, nb::arg("q"), nb::arg("q_pos"), nb::arg("cache"),
          nb::arg("seq_ids"), nb::arg("q_seq_index"), nb::arg("scale"), nb::arg("kv_lora_rank"),
          "mla_attention with the keys of a batch of sequences read from a PagedKVCache.\n\n"
          "seq_ids [B] int64; q_seq_index [T] int64 in [0, B): the sequence each query token reads.");
  ops.def(
      "set_kernel_path", [](const std::string& path) { set_mla_kernel_path(parse_path(path)); }, nb::arg("path"),
      "Force the attention micro-kernels: 'auto' (default), 'portable', 'avx512', 'avx512_bf16_split' (AVX-512\n"
      "BF16 dot products for bfloat16 keys, q and weights as bf16 hi + lo pairs), 'amx_split' (the same on\n"
      "AMX-BF16 tiles), or 'avx512_bf16' / 'amx' (q and weights rounded to bf16: ~1e-3 errors and more at\n"
      "large scores); for tests and benchmarks. Raises HelixError naming what the CPU (or the OS) lacks.");
  ops.def("kernel_paths", &kernel_paths_py,
          "Every kernel path name -> '' where this CPU (and OS) runs it, else the reason it cannot.");
  ops.def("set_num_threads", &set_cpu_threads, nb::arg("n"), "Threads of the CPU kernels (OpenMP) for this thread.");
  ops.def("num_threads", &cpu_threads, "Threads the CPU kernels use.");
  ops.def(
      "kernel_path", [] { return std::string(mla_kernel_path_name(mla_kernel_path())); },
      "The attention micro-kernels in use: a name of kernel_paths() other than 'auto'\n"
      "(float32 keys run the avx512 kernels on the bf16-only paths).");
}

}  // namespace helix::bind
