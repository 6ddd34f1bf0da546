/* Fake NCCL for the CUDA emulator (HELIX_CUDA_EMULATOR): the subset of the NCCL API that
 * cuda/nccl_comm.cpp uses, with NCCL's names, signatures and enum values, implemented over MPI in
 * cuda/emulator/nccl.cpp. Device pointers are host pointers in the emulator, so buffers go to MPI as is.
 *
 * Semantics follow the NCCL documentation, with these emulator-specific rules:
 * - Every operation first synchronizes its stream (queued kernels may write the send buffer), then runs
 *   synchronously: when the call (or the ncclGroupEnd of its group) returns, the data has moved.
 * - ncclCommInitRank with nranks > 1 needs MPI initialized (mpi4py does it in Helix processes) and EVERY
 *   rank of MPI_COMM_WORLD must call it at the same time (it is an MPI_Comm_split of MPI_COMM_WORLD
 *   whose color comes from the unique id). nranks == 1 needs no MPI.
 * - A rank that never joins a collective makes its peers wait forever, as with NCCL; in Helix the job
 *   watcher (helix.comm, docs/reliability.md) or the launcher's `timeout` ends such a job.
 * - ncclAllReduce reduces in rank order, rounding after every step for bfloat16 (like NCCL's bf16
 *   arithmetic): every rank gets bitwise the same result. float16 and fp8 reductions and ncclAvg are not
 *   implemented (ncclInvalidArgument).
 * - Set NCCL_DEBUG=WARN to have the reason of every error printed to stderr. */
#ifndef HELIX_EMULATOR_NCCL_H_
#define HELIX_EMULATOR_NCCL_H_

#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef struct ncclComm* ncclComm_t;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclHalf = 6,
  ncclFloat32 = 7,
  ncclFloat = 7,
  ncclFloat64 = 8,
  ncclDouble = 8,
  ncclBfloat16 = 9,
  ncclFloat8e4m3 = 10,
  ncclFloat8e5m2 = 11,
  ncclNumTypes = 12
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

/* The color that puts a rank in no communicator in ncclCommSplit. */
#define NCCL_SPLIT_NOCOLOR -1

/* Communicator options: accepted and ignored (every emulated communicator is blocking). */
typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
} ncclConfig_t;
#define NCCL_CONFIG_INITIALIZER {sizeof(ncclConfig_t), 0xcafebeefu, 0u, 1}

const char* ncclGetErrorString(ncclResult_t result);
ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);

ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* HELIX_EMULATOR_NCCL_H_ */
