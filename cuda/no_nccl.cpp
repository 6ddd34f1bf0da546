// Built when NCCL is absent: the NCCL communicator cannot be created.
#include "helix/cuda.hpp"

namespace helix::cuda {

bool built_with_nccl() { return false; }

}  // namespace helix::cuda
