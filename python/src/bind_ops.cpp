// The attention kernels (helix/ops/attention.hpp), bound twice with one signature: helix._core.ops runs
// them on the CPU and helix._core.cuda on the GPU (host arrays in and out, through DeviceCall). Plus the
// CPU kernel-path and thread controls.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <algorithm>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "device_call.hpp"
#include "helix/kv_cache.hpp"
#include "helix/ops/attention.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

cuda::AttentionKernel parse_attention_kernel(const std::string& name) {
  if (name == "auto") return cuda::AttentionKernel::Auto;
  if (name == "simple") return cuda::AttentionKernel::Simple;
  if (name == "tensor_core") return cuda::AttentionKernel::TensorCore;
  throw ArgumentError("argument 'kernel' must be 'auto', 'simple' or 'tensor_core' on cuda, got '" + name + "'");
}

namespace {

// The CPU picks its micro-kernels itself (set_kernel_path); 'kernel' names a CUDA kernel.
void check_cpu_kernel(const std::string& kernel) {
  HELIX_CHECK_ARG(kernel == "auto", "argument 'kernel' must be 'auto' on the cpu (its micro-kernels are chosen with ",
                  "helix._core.ops.set_kernel_path), got '", kernel, "'");
}

// Runs a validated paged call on the GPU: every array to the device, o and lse back.
void run_paged_on_cuda(PagedMlaAttentionParams p, const std::string& kernel, const TensorView& q,
                       const TensorView& q_pos, const TensorView& q_seq, const TensorView& pool,
                       const TensorView& block_tables, const TensorView& kv_pos, const TensorView& num_slots,
                       const TensorView& o, const TensorView& lse) {
  const cuda::AttentionKernel kind = parse_attention_kernel(kernel);
  DeviceCall c;
  p.q = c.in<const void>(q);
  p.q_pos = c.in<const int64_t>(q_pos);
  p.q_seq = c.in<const int64_t>(q_seq);
  p.pool = c.in<const void>(pool);
  p.block_tables = c.in<const int32_t>(block_tables);
  p.kv_pos = c.in<const int64_t>(kv_pos);
  p.num_slots = c.in<const int64_t>(num_slots);
  p.o = c.out<float>(o);
  p.lse = c.out<float>(lse);
  p.workspace = static_cast<float*>(c.scratch(static_cast<size_t>(cuda::attention_workspace_floats(p)) * 4));
  cuda::launch_paged_mla_attention(p, kind, nullptr);
  c.finish();
}

nb::tuple paged_mla_attention_py(Device dev, nb::handle q, nb::handle q_pos, nb::handle q_seq, nb::handle pool,
                                 nb::handle block_tables, nb::handle kv_pos, nb::handle num_slots, float scale,
                                 int64_t kv_lora_rank, const std::string& kernel, int num_splits) {
  HostArray qa = to_view(q, "q"), qp = to_view(q_pos, "q_pos"), qs = to_view(q_seq, "q_seq"),
            pa = to_view(pool, "pool"), ta = to_view(block_tables, "block_tables"), ka = to_view(kv_pos, "kv_pos"),
            na = to_view(num_slots, "num_slots");
  const int64_t T = qa.view.ndim() == 3 ? qa.view.dim(0) : 0, H = qa.view.ndim() == 3 ? qa.view.dim(1) : 0;
  HostArray o = new_array({T, H, std::max<int64_t>(kv_lora_rank, 0)}, DType::Float32);
  HostArray lse = new_array({T, H}, DType::Float32);
  PagedMlaAttentionParams p =
      check_paged_mla_attention_args(qa.view, qp.view, qs.view, pa.view, ta.view, ka.view, na.view, scale, kv_lora_rank,
                                     num_splits, o.view, lse.view, dev);
  if (dev == Device::Cpu) {
    check_cpu_kernel(kernel);
    nb::gil_scoped_release release;
    paged_mla_attention_cpu(p);
  } else {
    run_paged_on_cuda(p, kernel, qa.view, qp.view, qs.view, pa.view, ta.view, ka.view, na.view, o.view, lse.view);
  }
  return nb::make_tuple(o.owner, lse.owner);
}

// The contiguous keys kv [S, D] as one sequence of a pool of 64-row blocks (the last block padded with
// zeros: its missing rows are never read), for the CUDA kernels, which read pools.
nb::tuple mla_attention_on_cuda(const TensorView& q, const TensorView& kv, const TensorView& q_pos,
                                const TensorView& kv_pos, float scale, int64_t R, const std::string& kernel,
                                int num_splits) {
  const int64_t S = kv.dim(0), D = kv.dim(1), T = q.dim(0), tpb = 64;
  const int64_t nb = std::max<int64_t>((S + tpb - 1) / tpb, 1);
  std::vector<unsigned char> pool(static_cast<size_t>(nb * tpb * D * dtype_size(kv.dtype)), 0);
  std::copy_n(static_cast<const unsigned char*>(kv.data), kv.nbytes(), pool.data());
  std::vector<int64_t> pool_pos(static_cast<size_t>(nb * tpb), 0), q_seq(static_cast<size_t>(T), 0), num_slots{S};
  std::copy_n(kv_pos.ptr<const int64_t>(), S, pool_pos.data());
  std::vector<int32_t> table(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; ++i) table[i] = static_cast<int32_t>(i);
  const TensorView pool_v{pool.data(), kv.dtype, {nb, tpb, D}}, table_v{table.data(), DType::Int32, {1, nb}},
      pos_v{pool_pos.data(), DType::Int64, {nb, tpb}}, seq_v{q_seq.data(), DType::Int64, {T}},
      slots_v{num_slots.data(), DType::Int64, {1}};
  HostArray o = new_array({T, q.dim(1), R}, DType::Float32), lse = new_array({T, q.dim(1)}, DType::Float32);
  PagedMlaAttentionParams p = check_paged_mla_attention_args(q, q_pos, seq_v, pool_v, table_v, pos_v, slots_v, scale, R,
                                                             num_splits, o.view, lse.view, Device::Cuda);
  run_paged_on_cuda(p, kernel, q, q_pos, seq_v, pool_v, table_v, pos_v, slots_v, o.view, lse.view);
  return nb::make_tuple(o.owner, lse.owner);
}

nb::tuple mla_attention_py(Device dev, nb::handle q, nb::handle kv, nb::handle q_pos, nb::handle kv_pos, float scale,
                           int64_t kv_lora_rank, const std::string& kernel, int num_splits) {
  HostArray qa = to_view(q, "q"), kva = to_view(kv, "kv"), qp = to_view(q_pos, "q_pos"), kp = to_view(kv_pos, "kv_pos");
  const MlaShape s = check_mla_attention_args(qa.view, kva.view, qp.view, kp.view, scale, kv_lora_rank, dev);
  if (dev == Device::Cuda) {
    return mla_attention_on_cuda(qa.view, kva.view, qp.view, kp.view, scale, kv_lora_rank, kernel, num_splits);
  }
  check_cpu_kernel(kernel);
  HELIX_CHECK_ARG(num_splits == 0, "argument 'num_splits' must be 0 on the cpu (it plans its own), got ", num_splits);
  HostArray o = new_array({s.T, s.H, s.R}, DType::Float32), lse = new_array({s.T, s.H}, DType::Float32);
  MlaAttentionParams p;
  p.q = qa.view.data;
  p.q_pos = qp.view.ptr<const int64_t>();
  p.o = o.view.ptr<float>();
  p.lse = lse.view.ptr<float>();
  p.T = s.T;
  p.H = s.H;
  p.D = s.D;
  p.R = s.R;
  p.scale = scale;
  p.q_dtype = qa.view.dtype;
  {
    nb::gil_scoped_release release;
    mla_attention_cpu(p, kva.view.data, kp.view.ptr<const int64_t>(), s.S, kva.view.dtype);
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

void bind_attention_ops(nb::module_& m, Device dev) {
  m.def(
      "mla_attention",
      [dev](nb::handle q, nb::handle kv, nb::handle q_pos, nb::handle kv_pos, float scale, int64_t kv_lora_rank,
            const std::string& kernel, int num_splits) {
        return mla_attention_py(dev, q, kv, q_pos, kv_pos, scale, kv_lora_rank, kernel, num_splits);
      },
      "q"_a, "kv"_a, "q_pos"_a, "kv_pos"_a, "scale"_a, "kv_lora_rank"_a, "kernel"_a = "auto", "num_splits"_a = 0,
      "Partial MLA attention over one shard of latent keys.\n\n"
      "q [T, H, D]; kv [S, D] (first kv_lora_rank columns are the value); q_pos [T], kv_pos [S] int64 (key s\n"
      "visible to query t iff kv_pos[s] <= q_pos[t]). cpu: q and kv float32 or bfloat16, kernel 'auto',\n"
      "num_splits 0; cuda: q and kv of one dtype (bfloat16, or float32 with the simple kernel), kernel 'auto',\n"
      "'simple' or 'tensor_core', num_splits 0 (its plan) or 1..256.\n"
      "Returns (o [T, H, kv_lora_rank] float32, lse [T, H] float32, natural log); nothing visible: o=0, lse=-inf.");
  m.def(
      "paged_mla_attention",
      [dev](nb::handle q, nb::handle q_pos, nb::handle q_seq, nb::handle pool, nb::handle block_tables,
            nb::handle kv_pos, nb::handle num_slots, float scale, int64_t kv_lora_rank, const std::string& kernel,
            int num_splits) {
        return paged_mla_attention_py(dev, q, q_pos, q_seq, pool, block_tables, kv_pos, num_slots, scale, kv_lora_rank,
                                      kernel, num_splits);
      },
      "q"_a, "q_pos"_a, "q_seq"_a, "pool"_a, "block_tables"_a, "kv_pos"_a, "num_slots"_a, "scale"_a, "kv_lora_rank"_a,
      "kernel"_a = "auto", "num_splits"_a = 0,
      "mla_attention with the keys of a batch of sequences read from a paged pool.\n\n"
      "q [T, H, D]; q_pos [T] int64; q_seq [T] int64 in [0, B): the sequence each query token reads;\n"
      "pool [num_blocks, tokens_per_block, D]; block_tables [B, max_blocks] int32; kv_pos [num_blocks,\n"
      "tokens_per_block] int64 (the position of each pool row); num_slots [B] int64: slot k of sequence b is\n"
      "pool row block_tables[b, k // tokens_per_block] * tokens_per_block + k % tokens_per_block, k < num_slots[b]\n"
      "(PagedKVCache.paged_view gives these arrays). Dtypes, kernel and num_splits as mla_attention.\n"
      "Returns (o [T, H, kv_lora_rank] float32, lse [T, H] float32).");
}

void bind_ops(nb::module_& m) {
  nb::module_ ops = m.def_submodule("ops", "CPU attention kernels and the merge of partial states");
  bind_attention_ops(ops, Device::Cpu);
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
