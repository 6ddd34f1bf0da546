// Communicator: the collective operations the runtime needs, behind one interface with an MPI backend
// (cpp/src/mpi_comm.cpp) and an NCCL backend (cuda/nccl_comm.cpp). Buffers are raw host pointers for
// MPI, device pointers for NCCL. All calls are blocking and collective over the communicator: every rank
// calls them in the same order with the same sizes (a mismatch is an error or a hang, as in MPI). One
// communicator is used by one thread at a time. Send and receive buffers must not overlap. Failures throw
// helix::ArgumentError (bad argument, detected locally before any communication) or helix::Error (the
// backend failed; the message carries the backend's error string). Zero-byte messages are allowed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "helix/dtype.hpp"

namespace helix {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // send: [size, block_bytes]; block r goes to rank r. recv: [size, block_bytes]; block r came from rank r.
  virtual void all_to_all(const void* send, void* recv, size_t block_bytes) = 0;
  // In-place sum of `count` elements (Float32 or BFloat16; bf16 is summed in float32).
  virtual void all_reduce_sum(void* data, int64_t count, DType dtype) = 0;
  // send: [block_bytes]; recv: [size, block_bytes].
  virtual void all_gather(const void* send, void* recv, size_t block_bytes) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Sub-communicator of the ranks with the same color, ordered by key (as MPI_Comm_split).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// Single-process communicator (size 1): every collective is a copy. Needs no MPI.
std::unique_ptr<Communicator> make_self_communicator();

// Wraps an MPI communicator handle (MPI_Comm as an integer, as mpi4py's MPI._handleof returns for MPICH).
// The communicator is duplicated; the duplicate is freed with the object.
std::unique_ptr<Communicator> make_mpi_communicator(int64_t mpi_comm_handle);

}  // namespace helix
