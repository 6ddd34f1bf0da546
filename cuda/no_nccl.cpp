// Built when NCCL is absent (or CUDA is): the NCCL communicator cannot be created.
#include "helix/cuda.hpp"
#include "helix/error.hpp"

namespace helix::cuda {

namespace {
[[noreturn]] void no_nccl() { throw Error("helix was built without NCCL"); }
}  // namespace

bool built_with_nccl() { return false; }
NcclUniqueId nccl_unique_id() { no_nccl(); }
std::unique_ptr<Communicator> make_nccl_communicator(int, int, const NcclUniqueId&, StreamHandle, bool) { no_nccl(); }
std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, StreamHandle, bool) { no_nccl(); }
std::unique_ptr<Communicator> make_nccl_host_communicator(Communicator&) { no_nccl(); }

}  // namespace helix::cuda
