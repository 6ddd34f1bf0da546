// Built when the CUDA toolkit is absent (HELIX_ENABLE_CUDA=OFF or no nvcc): every CUDA entry point throws.
#include "helix/cuda.hpp"

#include "helix/error.hpp"

namespace helix::cuda {

bool built_with_cuda() { return false; }
int device_count() { return 0; }

}  // namespace helix::cuda
