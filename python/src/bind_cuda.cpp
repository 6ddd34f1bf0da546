// helix._core.cuda: the CUDA backend's status, the engine, the NCCL communicator, and one entry point per
// kernel. Each entry point validates its NumPy inputs, copies them to the device, runs one kernel, and
// copies the result back, so that pytest can compare every CUDA op with its CPU twin or a float64
// reference; the ops of a decoder layer are bound with their CPU twins' signatures (bind_layers.cpp,
// bind_merge_states.cpp). Without CUDA or without a GPU they raise helix.HelixError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "helix/cuda.hpp"
#include "helix/ops/attention.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/moe_experts.hpp"

namespace nb = nanobind;

namespace helix::bind {

void bind_layer_ops(nb::module_& m, Device dev);        // bind_layers.cpp
void bind_attention_ops(nb::module_& m, Device dev);    // bind_ops.cpp
void bind_merge_states(nb::module_& m, Device dev);     // bind_merge_states.cpp
void bind_helix_attention(nb::module_& m, Device dev);  // bind_helix_attention.cpp

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

void bind_cuda_comm(nb::module_& c) {
  using namespace nb::literals;
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

}  // namespace

void bind_cuda(nb::module_& m) {
  using namespace nb::literals;
  nb::module_ c = m.def_submodule(
      "cuda", "CUDA backend: status, one test entry point per kernel (twins of the CPU ops), the engine, NCCL");
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
  bind_attention_ops(c, Device::Cuda);
  bind_layer_ops(c, Device::Cuda);
  bind_merge_states(c, Device::Cuda);
  bind_helix_attention(c, Device::Cuda);
  c.def("nccl_collectives_one_rank", &nccl_collectives_one_rank, "x"_a,
        "Runs every collective of a one-rank NCCL communicator on x [n] f32; returns the results by name.");
  bind_cuda_comm(c);
}

}  // namespace helix::bind
