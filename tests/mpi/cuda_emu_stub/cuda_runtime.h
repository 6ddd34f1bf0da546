/* Stand-in for the CUDA runtime header, just what cuda/emulator/include/nccl.h needs (the standard
 * declarations), so that tests/mpi/cuda_emu_nccl_check.cpp can test the fake NCCL without the emulator.
 * The harness defines struct CUstream_st, cudaStreamSynchronize and simt::is_device_range. */
#ifndef HELIX_TEST_CUDA_EMU_STUB_CUDA_RUNTIME_H_
#define HELIX_TEST_CUDA_EMU_STUB_CUDA_RUNTIME_H_

#include <stddef.h>

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef enum cudaError_t cudaError_t;
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

#ifdef __cplusplus
/* The emulator's device-memory query (cuda/emulator/include/cuda_runtime.h), which the fake NCCL uses
 * when HELIX_CUDA_EMULATOR is defined. */
namespace simt {
bool is_device_range(const void* ptr, size_t bytes);
}
#endif

#endif
