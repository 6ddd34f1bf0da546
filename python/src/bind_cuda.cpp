#include <nanobind/nanobind.h>

#include "helix/cuda.hpp"

namespace nb = nanobind;

namespace helix::bind {
void bind_cuda(nb::module_& m) {
  nb::module_ c = m.def_submodule("cuda", "CUDA backend status");
  c.def("built_with_cuda", &cuda::built_with_cuda, "True when the runtime was compiled with the CUDA backend.");
  c.def("built_with_nccl", &cuda::built_with_nccl, "True when the runtime was compiled with NCCL.");
  c.def("device_count", &cuda::device_count, "Number of visible CUDA devices (0 without a GPU).");
}
}  // namespace helix::bind
