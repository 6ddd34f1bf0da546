// Shared state of the SIMT emulator's runtime (runtime.cpp), kernel engine (simt.cpp) and cuBLAS
// (cublas.cpp). Not a CUDA header: nothing in cuda/ includes it.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <mutex>
#include <string>

namespace simt::detail {

// Every runtime entry point holds this (recursive: a queued operation may synchronize another stream).
std::recursive_mutex& api_mutex();

// Records err as the last error (cudaGetLastError) with a message that cudaGetErrorString returns.
cudaError_t set_error(cudaError_t err, const std::string& message);

// Runs `op` on `stream` in stream order: now (HELIX_SIMT_STREAMS=sync) or at the next synchronizing
// call (the default: kernels, memsets and device copies are deferred, so a host that reads results
// without synchronizing sees stale data, as it may on a GPU). An op returning an error makes the next
// synchronizing call on that stream fail with it. Returns cudaErrorInvalidResourceHandle for a stream
// that was never created or is destroyed.
using StreamOp = std::function<cudaError_t()>;
cudaError_t enqueue(cudaStream_t stream, StreamOp op);
// Runs everything queued on `stream` (all streams when all == true) and returns the first op error.
cudaError_t flush(cudaStream_t stream);
cudaError_t flush_all();
bool valid_stream(cudaStream_t stream);

// Runs a validated launch now (called from a stream op); returns cudaErrorLaunchFailure with a message
// on a divergent barrier, a deadlock or a bad warp collective.
cudaError_t run_grid(const LaunchConfig& config, const std::function<void()>& body);

// Human-readable "kernel <name>" description used in messages.
std::string kernel_label(const LaunchConfig& config);

}  // namespace simt::detail
