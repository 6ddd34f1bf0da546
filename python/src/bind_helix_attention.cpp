// helix_attention, bound twice with one signature on a PagedKVCache-held layer: helix._core.helix_attention
// runs the step on the CPU, helix._core.cuda.helix_attention on the GPU (the cache's pool copied to the
// device and back, the exchange over a host-staged device communicator on `cp_comm`'s ranks). Both
// validate and commit the step with helix_attention_on_cache (helix/helix_attention.hpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "arrays.hpp"
#include "device_call.hpp"
#include "helix/helix_attention.hpp"
#include "helix/helix_attention_expanded.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

// The step on the GPU: every array of p to the device; the pool and out back into the host memory.
void run_on_cuda(HelixAttentionParams p, Communicator& cp_comm, const PagedKVCache& cache) {
  const int64_t rows = cache.table().num_blocks() * cache.table().tokens_per_block(), cp = cp_comm.size();
  DeviceCall c;
  const auto in = [&c](const void* data, DType dtype, int64_t n) {
    return c.in<const void>(TensorView{const_cast<void*>(data), dtype, {n}});
  };
  p.pool = c.out<void>(TensorView{p.pool, p.kv_dtype, {rows, p.D}});
  p.out = c.out<float>(TensorView{p.out, DType::Float32, {p.T, p.H / cp, p.W}});
  p.q = in(p.q, p.q_dtype, p.T * p.H * p.D);
  p.new_kv = in(p.new_kv, p.kv_dtype, p.T * p.D);
  p.new_rows = static_cast<const int64_t*>(in(p.new_rows, DType::Int64, p.T));
  p.q_pos = static_cast<const int64_t*>(in(p.q_pos, DType::Int64, p.T));
  p.q_seq = static_cast<const int64_t*>(in(p.q_seq, DType::Int64, p.T));
  p.block_tables = static_cast<const int32_t*>(in(p.block_tables, DType::Int32, p.B * p.max_blocks));
  p.kv_pos = static_cast<const int64_t*>(in(p.kv_pos, DType::Int64, rows));
  p.num_slots = static_cast<const int64_t*>(in(p.num_slots, DType::Int64, p.B));
  if (p.w_uv != nullptr) p.w_uv = in(p.w_uv, p.w_uv_dtype, p.H * p.W * p.R);
  p.q_expanded = nullptr;  // the CUDA twin runs the absorbed form only
  p.w_uk = nullptr;
  p.workspace = c.scratch(cuda::helix_attention_workspace_bytes(p, cp));
  cuda::Stream stream;
  auto device_comm = cuda::make_host_staged_communicator(cp_comm.split(0, cp_comm.rank()), stream.handle());
  cuda::launch_helix_attention(p, *device_comm, stream.handle());
  stream.synchronize();
  c.finish();
}

nb::object helix_attention_py(Device dev, Communicator& cp_comm, PagedKVCache& cache, nb::handle q, nb::handle new_kv,
                              nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index, float scale,
                              int64_t kv_lora_rank, nb::handle w_uv, nb::handle q_expanded, nb::handle w_uk) {
  HostArray qa = to_view(q, "q"), kva = to_view(new_kv, "new_kv"), pa = to_view(positions, "positions"),
            sa = to_view(seq_ids, "seq_ids"), ia = to_view(q_seq_index, "q_seq_index");
  HostArray wa;
  if (!w_uv.is_none()) wa = to_view(w_uv, "w_uv");
  HostArray qea, wka;
  if (!q_expanded.is_none()) qea = to_view(q_expanded, "q_expanded");
  if (!w_uk.is_none()) wka = to_view(w_uk, "w_uk");
  HELIX_CHECK_ARG(qa.view.ndim() == 3, "argument 'q' must have 3 dimensions [T, H_tp, D], got shape ",
                  shape_str(qa.view.shape));
  const int64_t cp = cp_comm.size();
  HELIX_CHECK_ARG(qa.view.dim(1) % cp == 0, "argument 'q' has ", qa.view.dim(1), " heads, not divisible by cp ", cp);
  const int64_t W = w_uv.is_none() ? kv_lora_rank : (wa.view.ndim() == 3 ? wa.view.dim(1) : 0);
  HELIX_CHECK_ARG(W > 0, "argument 'w_uv' must have shape [H_tp, Dv, kv_lora_rank]");
  HostArray out = new_array({qa.view.dim(0), qa.view.dim(1) / cp, W}, DType::Float32);
  nb::gil_scoped_release release;
  helix_attention_on_cache(cp_comm, cache, qa.view, kva.view, pa.view, sa.view, ia.view, scale, kv_lora_rank, wa.view,
                           out.view, qea.view, wka.view, dev, [&](const HelixAttentionParams& p) {
                             if (dev == Device::Cpu) {
                               helix_attention_cpu(p, cp_comm);
                             } else {
                               run_on_cuda(p, cp_comm, cache);
                             }
                           });
  return out.owner;
}

}  // namespace

void bind_helix_attention(nb::module_& m, Device dev) {
  m.def(
      "helix_attention",
      [dev](Communicator& cp_comm, PagedKVCache& cache, nb::handle q, nb::handle new_kv, nb::handle positions,
            nb::handle seq_ids, nb::handle q_seq_index, float scale, int64_t kv_lora_rank, nb::handle w_uv,
            nb::handle q_expanded, nb::handle w_uk) {
        return helix_attention_py(dev, cp_comm, cache, q, new_kv, positions, seq_ids, q_seq_index, scale, kv_lora_rank,
                                  w_uv, q_expanded, w_uk);
      },
      "cp_comm"_a, "cache"_a, "q"_a, "new_kv"_a, "positions"_a, "seq_ids"_a, "q_seq_index"_a, "scale"_a,
      "kv_lora_rank"_a, "w_uv"_a = nb::none(), "q_expanded"_a = nb::none(), "w_uk"_a = nb::none(),
      "The Helix attention step of one layer on this rank: append owned rows, partial attention over the\n"
      "local shard, optional W_UV, one all-to-all over the CP group, LSE merge. The step is committed to the\n"
      "cache (all or nothing).\n"
      "q [T, H_tp, D]; new_kv [T, D] (cache dtype); positions [T]; seq_ids [B]; q_seq_index [T];\n"
      "w_uv [H_tp, Dv, R] or None. Returns [T, H_tp / cp, W] float32 (W = Dv with w_uv, else R).\n"
      "q_expanded [T, H_tp, Dn + P] float32 (q_nope | q_pe, q = [W_UK q_nope | q_pe]) and w_uk [H_tp, R, Dn]:\n"
      "the CPU may then run the expanded form (set_attention_form; same results); the GPU ignores them.\n"
      "cpu: q float32 or bfloat16; cuda: q in the cache's dtype (its pool copied to the GPU and back).");
  if (dev == Device::Cpu) {
    m.def(
        "set_attention_form", [](const std::string& form) { set_attention_form(parse_attention_form(form, "form")); },
        "form"_a,
        "Force the form of helix_attention's local attention on the CPU in this process: 'auto' (default: the\n"
        "cheaper by the cost model, per call), 'absorbed' or 'expanded' (for tests and benchmarks).");
    m.def(
        "attention_form", [] { return std::string(attention_form_name(attention_form())); },
        "The form set by set_attention_form.");
    m.def("set_expanded_head_group", &set_expanded_head_group, "heads"_a,
          "Force the heads whose keys the expanded form up-projects per call (clamped to H_tp; tests and\n"
          "benchmarks); 0 (default): chosen per call from the keys read (~32 MB of expanded rows).");
  }
}

}  // namespace helix::bind
