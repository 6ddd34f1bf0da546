// The CUDA backend's host API. Implemented in cuda/ when built with CUDA, else by cuda/no_cuda.cpp,
// whose functions report that the backend is absent (and throw where work was asked for).
#pragma once

namespace helix::cuda {

bool built_with_cuda();
bool built_with_nccl();
// Number of visible CUDA devices; 0 without CUDA or without a GPU (never throws).
int device_count();

}  // namespace helix::cuda
