// Device discovery for the CUDA backend.
#include <cuda_runtime.h>

#include "helix/cuda.hpp"

namespace helix::cuda {

bool built_with_cuda() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace helix::cuda
