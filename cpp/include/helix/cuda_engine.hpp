// The decoder engine of one rank on one GPU: the same contract as helix::Engine (same EngineConfig, same
// weight names and shard shapes, same step() arguments and errors, logits on the host), with the weights,
// the paged KV cache of every layer, the activations and the Helix attention step on the device.
//
// Implemented in cuda/cuda_engine.cu; without CUDA, cuda/no_cuda.cpp makes every member throw
// helix::Error("helix was built without CUDA"), and with CUDA but no GPU the constructor throws "no CUDA
// device is visible". No CUDA header is included here (cpp/ stays CUDA-free).
//
// Communication: the constructor bootstraps an NCCL communicator of all tp*cp ranks over the host
// communicator `world` (MPI, or self for one rank) and splits the CP group from it; the packed (o, lse)
// all-to-all, the o_proj / FFN all-reduces and the logits all-gather run over NCCL on the engine's stream.
// One rank needs no NCCL. With CudaComm::Host they run on a duplicate of `world` instead, staged through
// host memory (make_host_staged_communicator), so that several ranks may share one GPU. The KV bookkeeping (block
// tables, slot positions, ownership, the free list) is one host BlockTable shared by all layers (every layer holds
// the same positions in the same slots); the keys live in one device pool per layer. Steps are all or nothing,
// as Engine's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/comm.hpp"
#include "helix/engine.hpp"
#include "helix/tensor.hpp"

namespace helix::cuda {

// How the ranks' GPUs talk: NCCL (one GPU per rank), or the host communicator with device buffers
// staged through host memory (ranks may share a GPU; slower).
enum class CudaComm { Nccl, Host };

class CudaEngine {
 public:
  // world: the host communicator of all tp*cp ranks (rank = config.rank); device: this rank's CUDA device.
  CudaEngine(const EngineConfig& config, Communicator& world, int device, CudaComm comm = CudaComm::Nccl);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // As Engine::set_weight: checked against the config, then copied to the device (host memory is not kept).
  void set_weight(const std::string& name, const TensorView& w);
  void check_weights() const;
  std::vector<std::string> expected_weights() const;

  void add_sequence(int64_t seq_id, int64_t reserve_tokens = 0);
  void free_sequence(int64_t seq_id);
  int64_t num_free_blocks() const;
  int64_t num_kv_blocks() const;
  // The host bookkeeping of this rank's cache (positions, block tables, free blocks of every CP rank).
  const BlockTable& block_table() const;

  // As Engine::step: tokens [T] i64, positions [T] i64, seq_ids [B] i64, q_seq_index [T] i64,
  // logit_rows [L] i64 -> logits [L, vocab_size] f32 (host memory, identical on every rank).
  void step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
            const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits);

  // Benchmark aid: appends positions [0, num_tokens) to `seq_id` with pseudo-random rows, uniform in
  // [-scale, scale), written straight into every layer's device pool where this rank owns the position.
  // The sequence must exist and be empty; KVCacheFullError when the pool is too small.
  void fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale);

  const EngineConfig& config() const;
  // Per component, measured with CUDA events on the engine's stream (exchange and all-reduce include
  // the wait for the peers).
  const EngineTimings& timings() const;
  int device() const;
  // Bytes of device memory the engine holds: weights, KV pools and positions, flags, workspaces.
  int64_t device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace helix::cuda
