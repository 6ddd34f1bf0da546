// Single-process communicator: with one rank every collective is a copy (or nothing). Needs no MPI.
#include <cstring>

#include "helix/comm.hpp"
#include "helix/error.hpp"

namespace helix {

namespace {

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

  void all_to_all(const void* send, void* recv, size_t block_bytes) override {
    if (block_bytes > 0 && send != recv) std::memmove(recv, send, block_bytes);
  }

  void all_reduce_sum(void* data, int64_t count, DType dtype) override {
    HELIX_CHECK_ARG(count >= 0, "all_reduce_sum: count must be >= 0, got ", count);
    HELIX_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16,
                    "all_reduce_sum: dtype must be float32 or bfloat16, got ", dtype_name(dtype));
  }

  void all_gather(const void* send, void* recv, size_t block_bytes) override {
    if (block_bytes > 0 && send != recv) std::memmove(recv, send, block_bytes);
  }

  void broadcast(void* data, size_t bytes, int root) override {
    HELIX_CHECK_ARG(root == 0, "broadcast: root must be in [0, 1), got ", root);
  }

  void barrier() override {}

  std::unique_ptr<Communicator> split(int color, int key) override {
    HELIX_CHECK_ARG(color >= 0, "split: color must be >= 0, got ", color);
    return std::make_unique<SelfCommunicator>();
  }
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

}  // namespace helix
