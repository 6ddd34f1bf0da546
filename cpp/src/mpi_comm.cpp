// MPI backend of helix::Communicator: thin wrappers over the MPI C API (MPI 4.0 large-count calls, so a
// block may exceed 2 GiB). The handle comes from mpi4py; MPI must already be initialized by then.
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "helix/comm.hpp"
#include "helix/error.hpp"

namespace helix {

namespace {

std::string mpi_error_string(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "unknown MPI error code " + std::to_string(rc);
  return std::string(text, static_cast<size_t>(len));
}

// Every MPI call goes through here: a failure becomes helix::Error naming the call and MPI's message.
void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) throw Error(detail::concat(call, " failed: ", mpi_error_string(rc)));
}

// MPI_Comm is an int in MPICH's ABI and a pointer in Open MPI's; mpi4py's _handleof gives it as an integer.
// (A template, so that only the branch for this MPI's handle type is instantiated.)
template <class Comm>
Comm comm_from_handle(int64_t handle) {
  if constexpr (std::is_pointer_v<Comm>) {
    return reinterpret_cast<Comm>(static_cast<intptr_t>(handle));
  } else {
    // An int handle may arrive zero- or sign-extended; anything else cannot be one.
    const auto low = static_cast<int32_t>(static_cast<uint32_t>(handle));
    HELIX_CHECK_ARG(handle == low || handle == static_cast<int64_t>(static_cast<uint32_t>(low)),
                    "make_mpi_communicator: ", handle, " is not an MPI_Comm handle of this MPI (32-bit)");
    return static_cast<Comm>(low);
  }
}

bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  auto pa = reinterpret_cast<uintptr_t>(a);
  auto pb = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (a communicator this process created, freed in the destructor).
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    // Errors must come back as return codes (then exceptions), never abort the job from inside a call.
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  ~MpiCommunicator() override {
    // Python may drop the object after mpi4py's atexit hook finalized MPI: then there is nothing to free.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_to_all(const void* send, void* recv, size_t block_bytes) override {
    const size_t total = block_bytes * static_cast<size_t>(size_);
    HELIX_CHECK_ARG(!overlaps(send, total, recv, total), "all_to_all: send and recv buffers overlap");
    check_mpi(MPI_Alltoall_c(send, count(block_bytes), MPI_BYTE, recv, count(block_bytes), MPI_BYTE, comm_),
              "MPI_Alltoall");
  }

  void all_reduce_sum(void* data, int64_t count_elems, DType dtype) override {
    HELIX_CHECK_ARG(count_elems >= 0, "all_reduce_sum: count must be >= 0, got ", count_elems);
    if (dtype == DType::Float32) {
      check_mpi(MPI_Allreduce_c(MPI_IN_PLACE, data, count_elems, MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce");
      return;
    }
    HELIX_CHECK_ARG(dtype == DType::BFloat16, "all_reduce_sum: dtype must be float32 or bfloat16, got ",
                    dtype_name(dtype));
    // bf16 is widened to float32, summed, and rounded once: every rank gets the same, correctly rounded sum.
    auto* bf = static_cast<bf16_t*>(data);
    std::vector<float> wide(static_cast<size_t>(count_elems));
    for (int64_t i = 0; i < count_elems; ++i) wide[i] = bf16_to_float(bf[i]);
    check_mpi(MPI_Allreduce_c(MPI_IN_PLACE, wide.data(), count_elems, MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce");
    for (int64_t i = 0; i < count_elems; ++i) bf[i] = float_to_bf16(wide[i]);
  }

  void all_gather(const void* send, void* recv, size_t block_bytes) override {
    HELIX_CHECK_ARG(!overlaps(send, block_bytes, recv, block_bytes * static_cast<size_t>(size_)),
                    "all_gather: send and recv buffers overlap");
    check_mpi(MPI_Allgather_c(send, count(block_bytes), MPI_BYTE, recv, count(block_bytes), MPI_BYTE, comm_),
              "MPI_Allgather");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    HELIX_CHECK_ARG(root >= 0 && root < size_, "broadcast: root must be in [0, ", size_, "), got ", root);
    check_mpi(MPI_Bcast_c(data, count(bytes), MPI_BYTE, root, comm_), "MPI_Bcast");
  }

  void barrier() override { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    HELIX_CHECK_ARG(color >= 0, "split: color must be >= 0, got ", color);
    MPI_Comm sub = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    try {
      return std::make_unique<MpiCommunicator>(sub);
    } catch (...) {
      MPI_Comm_free(&sub);
      throw;
    }
  }

 private:
  static MPI_Count count(size_t bytes) { return static_cast<MPI_Count>(bytes); }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(int64_t mpi_comm_handle) {
  int initialized = 0;
  int finalized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  check_mpi(MPI_Finalized(&finalized), "MPI_Finalized");
  HELIX_CHECK(initialized && !finalized,
              "make_mpi_communicator: MPI is not initialized (or already finalized); import mpi4py.MPI first");
  MPI_Comm comm = comm_from_handle<MPI_Comm>(mpi_comm_handle);
  HELIX_CHECK_ARG(comm != MPI_COMM_NULL, "make_mpi_communicator: the handle is MPI_COMM_NULL");
  MPI_Comm dup = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(comm, &dup), "MPI_Comm_dup");
  try {
    return std::make_unique<MpiCommunicator>(dup);
  } catch (...) {
    MPI_Comm_free(&dup);
    throw;
  }
}

}  // namespace helix
