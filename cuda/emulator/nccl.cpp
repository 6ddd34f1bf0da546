// Fake NCCL over MPI for the CUDA emulator. The rules (stream synchronization, the MPI_COMM_WORLD
// restriction of ncclCommInitRank, rank-order reductions) are documented in include/nccl.h.
//
// A communicator is an MPI communicator with MPI_ERRORS_RETURN, or, for a one-rank communicator made by
// ncclCommInitRank(nranks = 1), no MPI at all (MPI may be uninitialized then). Send/recv inside
// ncclGroupStart/End are queued and run at the outermost ncclGroupEnd as nonblocking MPI point-to-point
// operations completed by MPI_Wait; a call outside a group is a group of one.
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

struct ncclComm {
  MPI_Comm mpi;  // MPI_COMM_NULL: a one-rank communicator without MPI
  int rank;
  int nranks;
};

namespace {

constexpr int kP2pTag = 0x4e43;  // one tag: MPI's non-overtaking order matches NCCL's per-peer send/recv order

bool debug_warn() {
  static const bool on = [] {
    const char* v = std::getenv("NCCL_DEBUG");
    if (v == nullptr) return false;
    std::string s(v);
    for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s == "WARN" || s == "INFO" || s == "TRACE";
  }();
  return on;
}

ncclResult_t fail(ncclResult_t r, const std::string& why) {
  if (debug_warn()) std::fprintf(stderr, "NCCL WARN [helix emulator] %s: %s\n", why.c_str(), ncclGetErrorString(r));
  return r;
}

ncclResult_t mpi_fail(int err, const char* what) {
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(err, msg, &len);
  return fail(ncclSystemError, std::string(what) + " failed: " + msg);
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;  // not a data type
  }
}

// bfloat16 as its bit pattern: exact widening, round-to-nearest-even narrowing (NaN stays NaN).
float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <class T>
T apply(ncclRedOp_t op, T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;  // wrap around like the hardware instead of signed-overflow UB
    switch (op) {
      case ncclSum:
        return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
      case ncclProd:
        return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
      case ncclMax:
        return std::max(a, b);
      default:
        return std::min(a, b);
    }
  } else {
    switch (op) {
      case ncclSum:
        return a + b;
      case ncclProd:
        return a * b;
      case ncclMax:
        return std::fmax(a, b);
      default:
        return std::fmin(a, b);
    }
  }
}

// acc[i] = acc[i] (op) x[i] for n elements of type T.
template <class T>
void reduce_into(void* acc, const void* x, size_t n, ncclRedOp_t op) {
  T* a = static_cast<T*>(acc);
  const T* b = static_cast<const T*>(x);
  for (size_t i = 0; i < n; ++i) a[i] = apply<T>(op, a[i], b[i]);
}

// bfloat16: each step is computed in float32 (exact for a sum or product of two bf16 values up to the one
// final rounding) and rounded to bf16, as NCCL's bf16 arithmetic does.
void reduce_into_bf16(void* acc, const void* x, size_t n, ncclRedOp_t op) {
  uint16_t* a = static_cast<uint16_t*>(acc);
  const uint16_t* b = static_cast<const uint16_t*>(x);
  for (size_t i = 0; i < n; ++i) a[i] = float_to_bf16(apply<float>(op, bf16_to_float(a[i]), bf16_to_float(b[i])));
}

bool reduction_supported(ncclDataType_t t) { return t != ncclFloat16 && t != ncclFloat8e4m3 && t != ncclFloat8e5m2; }

void reduce_step(void* acc, const void* x, size_t n, ncclDataType_t t, ncclRedOp_t op) {
  switch (t) {
    case ncclInt8:
      return reduce_into<int8_t>(acc, x, n, op);
    case ncclUint8:
      return reduce_into<uint8_t>(acc, x, n, op);
    case ncclInt32:
      return reduce_into<int32_t>(acc, x, n, op);
    case ncclUint32:
      return reduce_into<uint32_t>(acc, x, n, op);
    case ncclInt64:
      return reduce_into<int64_t>(acc, x, n, op);
    case ncclUint64:
      return reduce_into<uint64_t>(acc, x, n, op);
    case ncclFloat32:
      return reduce_into<float>(acc, x, n, op);
    case ncclFloat64:
      return reduce_into<double>(acc, x, n, op);
    case ncclBfloat16:
      return reduce_into_bf16(acc, x, n, op);
    default:
      return;  // excluded by reduction_supported
  }
}

enum class Kind { Send, Recv, AllReduce, AllGather, Broadcast };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Send:
      return "ncclSend";
    case Kind::Recv:
      return "ncclRecv";
    case Kind::AllReduce:
      return "ncclAllReduce";
    case Kind::AllGather:
      return "ncclAllGather";
    default:
      return "ncclBroadcast";
  }
}

// One queued operation. Buffers are emulator device pointers (host memory).
struct Op {
  Kind kind;
  ncclComm_t comm;
  const void* send;  // Send, AllReduce, AllGather, Broadcast (read on the root only)
  void* recv;        // Recv, AllReduce, AllGather (nranks * count elements), Broadcast
  size_t count;      // elements per rank
  ncclDataType_t type;
  ncclRedOp_t red;  // AllReduce
  int peer;         // Send/Recv: the peer; Broadcast: the root
  cudaStream_t stream;

  size_t bytes() const { return count * type_size(type); }
};

// NCCL groups are per thread.
struct GroupState {
  int depth = 0;
  ncclResult_t error = ncclSuccess;  // the first invalid call inside the current group
  std::vector<Op> ops;
};
thread_local GroupState g_group;

ncclResult_t validate(const Op& op) {
  const std::string fn = kind_name(op.kind);
  if (op.comm == nullptr) return fail(ncclInvalidArgument, fn + ": comm is NULL");
  if (op.type < 0 || op.type >= ncclNumTypes) {
    return fail(ncclInvalidArgument, fn + ": invalid datatype " + std::to_string(static_cast<int>(op.type)));
  }
  const int n = op.comm->nranks;
  if (op.count > 0) {
    const bool needs_send = op.kind != Kind::Recv && (op.kind != Kind::Broadcast || op.comm->rank == op.peer);
    if (needs_send && op.send == nullptr) return fail(ncclInvalidArgument, fn + ": sendbuff is NULL");
    if (op.kind != Kind::Send && op.recv == nullptr) return fail(ncclInvalidArgument, fn + ": recvbuff is NULL");
  }
#if defined(HELIX_CUDA_EMULATOR)
  // As NCCL checks its buffer arguments with cudaPointerGetAttributes, but over the whole range: a host
  // pointer or an overrun of a device allocation is a bug in the caller that real NCCL would not forgive.
  if (op.count > 0) {
    const size_t bytes = op.bytes();
    const size_t recv_bytes = op.kind == Kind::AllGather ? bytes * static_cast<size_t>(n) : bytes;
    const bool check_send = op.kind != Kind::Recv && (op.kind != Kind::Broadcast || op.comm->rank == op.peer);
    if (check_send && !simt::is_device_range(op.send, bytes)) {
      return fail(ncclInvalidArgument, fn + ": sendbuff is not " + std::to_string(bytes) + " bytes of device memory");
    }
    if (op.kind != Kind::Send && !simt::is_device_range(op.recv, recv_bytes)) {
      return fail(ncclInvalidArgument,
                  fn + ": recvbuff is not " + std::to_string(recv_bytes) + " bytes of device memory");
    }
  }
#endif
  if ((op.kind == Kind::Send || op.kind == Kind::Recv || op.kind == Kind::Broadcast) && (op.peer < 0 || op.peer >= n)) {
    return fail(ncclInvalidArgument, fn + ": " + (op.kind == Kind::Broadcast ? "root " : "peer ") +
                                         std::to_string(op.peer) + " out of range [0, " + std::to_string(n) + ")");
  }
  if (op.kind == Kind::AllReduce) {
    if (op.red < 0 || op.red >= ncclNumOps || op.red == ncclAvg) {
      return fail(ncclInvalidArgument, fn + ": reduction op " + std::to_string(static_cast<int>(op.red)) +
                                           " is not implemented by the emulator");
    }
    if (!reduction_supported(op.type)) {
      return fail(ncclInvalidArgument, fn + ": datatype " + std::to_string(static_cast<int>(op.type)) +
                                           " cannot be reduced by the emulator");
    }
  }
  return ncclSuccess;
}

ncclResult_t run_all_reduce(const Op& op) {
  const size_t bytes = op.bytes();
  const ncclComm& c = *op.comm;
  if (c.nranks == 1) {
    if (op.recv != op.send && bytes > 0) std::memmove(op.recv, op.send, bytes);
    return ncclSuccess;
  }
  // Every rank gathers every contribution and reduces them in rank order: the same bits everywhere.
  std::vector<unsigned char> all(bytes * static_cast<size_t>(c.nranks));  // [nranks][bytes]
  const int e = MPI_Allgather_c(op.send, static_cast<MPI_Count>(bytes), MPI_BYTE, all.data(),
                                static_cast<MPI_Count>(bytes), MPI_BYTE, c.mpi);
  if (e != MPI_SUCCESS) return mpi_fail(e, "ncclAllReduce: MPI_Allgather_c");
  if (bytes == 0) return ncclSuccess;
  std::memcpy(op.recv, all.data(), bytes);
  for (int r = 1; r < c.nranks; ++r) reduce_step(op.recv, all.data() + r * bytes, op.count, op.type, op.red);
  return ncclSuccess;
}

ncclResult_t run_all_gather(const Op& op) {
  const size_t bytes = op.bytes();
  const ncclComm& c = *op.comm;
  char* mine = static_cast<char*>(op.recv) + static_cast<size_t>(c.rank) * bytes;
  if (mine != op.send && bytes > 0) std::memmove(mine, op.send, bytes);  // in place when send == mine
  if (c.mpi == MPI_COMM_NULL) return ncclSuccess;
  const int e =
      MPI_Allgather_c(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, op.recv, static_cast<MPI_Count>(bytes), MPI_BYTE, c.mpi);
  return e == MPI_SUCCESS ? ncclSuccess : mpi_fail(e, "ncclAllGather: MPI_Allgather_c");
}

ncclResult_t run_broadcast(const Op& op) {
  const size_t bytes = op.bytes();
  const ncclComm& c = *op.comm;
  if (c.rank == op.peer && op.recv != op.send && bytes > 0) std::memmove(op.recv, op.send, bytes);
  if (c.mpi == MPI_COMM_NULL) return ncclSuccess;
  const int e = MPI_Bcast_c(op.recv, static_cast<MPI_Count>(bytes), MPI_BYTE, op.peer, c.mpi);
  return e == MPI_SUCCESS ? ncclSuccess : mpi_fail(e, "ncclBroadcast: MPI_Bcast_c");
}

// Send/recv on one-rank communicators without MPI: the k-th send to self feeds the k-th recv from self.
ncclResult_t run_local_p2p(const std::vector<Op>& ops) {
  std::vector<ncclComm_t> comms;
  for (const Op& op : ops) {
    if ((op.kind == Kind::Send || op.kind == Kind::Recv) && op.comm->mpi == MPI_COMM_NULL &&
        std::find(comms.begin(), comms.end(), op.comm) == comms.end()) {
      comms.push_back(op.comm);
    }
  }
  for (ncclComm_t comm : comms) {
    std::vector<const Op*> sends, recvs;
    for (const Op& op : ops) {
      if (op.comm != comm) continue;
      if (op.kind == Kind::Send) sends.push_back(&op);
      if (op.kind == Kind::Recv) recvs.push_back(&op);
    }
    if (sends.size() != recvs.size()) {
      return fail(ncclInvalidUsage, "group has " + std::to_string(sends.size()) + " ncclSend and " +
                                        std::to_string(recvs.size()) + " ncclRecv to self on a one-rank communicator");
    }
    for (size_t k = 0; k < sends.size(); ++k) {
      if (sends[k]->bytes() != recvs[k]->bytes()) {
        return fail(ncclInvalidUsage, "ncclSend of " + std::to_string(sends[k]->bytes()) +
                                          " bytes matched with ncclRecv of " + std::to_string(recvs[k]->bytes()) +
                                          " bytes");
      }
      if (sends[k]->bytes() > 0 && recvs[k]->recv != sends[k]->send) {
        std::memmove(recvs[k]->recv, sends[k]->send, sends[k]->bytes());
      }
    }
  }
  return ncclSuccess;
}

// Cancels and completes posted requests after a failure, so that MPI stops touching their buffers.
void abandon(std::vector<MPI_Request>& reqs) {
  for (MPI_Request& r : reqs) {
    if (r == MPI_REQUEST_NULL) continue;
    MPI_Cancel(&r);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
  }
}

ncclResult_t run_group(const std::vector<Op>& ops) {
  // Kernels queued earlier on the streams may write the send buffers (and read the receive buffers).
  std::vector<cudaStream_t> synced;
  for (const Op& op : ops) {
    if (std::find(synced.begin(), synced.end(), op.stream) != synced.end()) continue;
    synced.push_back(op.stream);
    const cudaError_t ce = cudaStreamSynchronize(op.stream);
    if (ce != cudaSuccess) {
      return fail(ncclUnhandledCudaError, std::string(kind_name(op.kind)) + ": cudaStreamSynchronize returned " +
                                              std::to_string(static_cast<int>(ce)));
    }
  }
  if (ncclResult_t r = run_local_p2p(ops); r != ncclSuccess) return r;

  std::vector<MPI_Request> reqs;
  std::vector<const Op*> req_ops;  // the operation of each request
  for (const Op& op : ops) {
    if ((op.kind != Kind::Send && op.kind != Kind::Recv) || op.comm->mpi == MPI_COMM_NULL) continue;
    MPI_Request req = MPI_REQUEST_NULL;
    const MPI_Count n = static_cast<MPI_Count>(op.bytes());
    const int e = op.kind == Kind::Send ? MPI_Isend_c(op.send, n, MPI_BYTE, op.peer, kP2pTag, op.comm->mpi, &req)
                                        : MPI_Irecv_c(op.recv, n, MPI_BYTE, op.peer, kP2pTag, op.comm->mpi, &req);
    if (e != MPI_SUCCESS) {
      abandon(reqs);
      return mpi_fail(e, op.kind == Kind::Send ? "ncclSend: MPI_Isend_c" : "ncclRecv: MPI_Irecv_c");
    }
    reqs.push_back(req);
    req_ops.push_back(&op);
  }
  for (const Op& op : ops) {
    ncclResult_t r = ncclSuccess;
    if (op.kind == Kind::AllReduce) r = run_all_reduce(op);
    if (op.kind == Kind::AllGather) r = run_all_gather(op);
    if (op.kind == Kind::Broadcast) r = run_broadcast(op);
    if (r != ncclSuccess) {
      abandon(reqs);
      return r;
    }
  }
  // One MPI_Wait per request (all are posted, so the order cannot deadlock): an error is then raised on
  // the request's own communicator, whose handler returns it, whereas MPI_Waitall may use another one.
  std::vector<MPI_Status> statuses(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const int e = MPI_Wait(&reqs[i], &statuses[i]);
    if (e != MPI_SUCCESS) {
      abandon(reqs);
      return mpi_fail(e, "ncclGroupEnd: MPI_Wait");
    }
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (req_ops[i]->kind != Kind::Recv) continue;
    MPI_Count got = 0;
    MPI_Get_count_c(&statuses[i], MPI_BYTE, &got);
    if (static_cast<size_t>(got) != req_ops[i]->bytes()) {
      return fail(ncclInvalidUsage, "ncclRecv of " + std::to_string(req_ops[i]->bytes()) + " bytes from peer " +
                                        std::to_string(req_ops[i]->peer) + " got " + std::to_string(got) + " bytes");
    }
  }
  return ncclSuccess;
}

ncclResult_t submit(const Op& op) {
  if (const ncclResult_t r = validate(op); r != ncclSuccess) {
    if (g_group.depth > 0 && g_group.error == ncclSuccess) g_group.error = r;
    return r;
  }
  if (g_group.depth > 0) {
    g_group.ops.push_back(op);
    return ncclSuccess;
  }
  return run_group({op});
}

ncclComm_t new_comm(MPI_Comm mpi, int rank, int nranks) { return new (std::nothrow) ncclComm{mpi, rank, nranks}; }

// An MPI communicator's ncclComm (MPI_ERRORS_RETURN set), or nullptr with the MPI handle freed.
ncclResult_t wrap_mpi_comm(MPI_Comm mpi, ncclComm_t* out, const char* fn) {
  int e = MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  if (e == MPI_SUCCESS) e = MPI_Comm_rank(mpi, &rank);
  if (e == MPI_SUCCESS) e = MPI_Comm_size(mpi, &size);
  if (e != MPI_SUCCESS) {
    MPI_Comm_free(&mpi);
    return mpi_fail(e, fn);
  }
  *out = new_comm(mpi, rank, size);
  if (*out == nullptr) {
    MPI_Comm_free(&mpi);
    return fail(ncclSystemError, std::string(fn) + ": out of memory");
  }
  return ncclSuccess;
}

// A non-negative MPI color from the unique id (FNV-1a over its bytes): ranks holding the same id agree.
int id_color(const ncclUniqueId& id) {
  uint32_t h = 2166136261u;
  for (char c : id.internal) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return static_cast<int>(h & 0x7fffffffu);
}

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
      return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
      return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument:
      return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
      return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (uniqueId == nullptr) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
  std::random_device rd;
  for (size_t i = 0; i < NCCL_UNIQUE_ID_BYTES; i += sizeof(uint32_t)) {
    const uint32_t v = rd();
    std::memcpy(uniqueId->internal + i, &v, sizeof v);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return fail(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " out of range for nranks " +
                                         std::to_string(nranks));
  }
  if (nranks == 1) {
    *comm = new_comm(MPI_COMM_NULL, 0, 1);
    return *comm != nullptr ? ncclSuccess : fail(ncclSystemError, "ncclCommInitRank: out of memory");
  }
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    return fail(ncclInvalidUsage, "ncclCommInitRank with nranks > 1 needs MPI initialized and not finalized");
  }
  // Collective over MPI_COMM_WORLD: the ranks holding this id form one communicator, ordered by rank.
  MPI_Comm mpi = MPI_COMM_NULL;
  const int e = MPI_Comm_split(MPI_COMM_WORLD, id_color(commId), rank, &mpi);
  if (e != MPI_SUCCESS) return mpi_fail(e, "ncclCommInitRank: MPI_Comm_split of MPI_COMM_WORLD");
  ncclComm_t c = nullptr;
  if (const ncclResult_t r = wrap_mpi_comm(mpi, &c, "ncclCommInitRank"); r != ncclSuccess) return r;
  // Every member learns whether all of them got what they asked for, so they fail (or succeed) together.
  int ok = c->nranks == nranks && c->rank == rank, all_ok = 0;
  const int e2 = MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, c->mpi);
  if (e2 != MPI_SUCCESS || !all_ok) {
    const std::string got = std::to_string(c->nranks);
    MPI_Comm_free(&c->mpi);
    delete c;
    if (e2 != MPI_SUCCESS) return mpi_fail(e2, "ncclCommInitRank: MPI_Allreduce");
    return fail(ncclInvalidUsage, "ncclCommInitRank: " + got +
                                      " ranks called with this id, expected nranks = " + std::to_string(nranks) +
                                      " distinct ranks (this one asked for rank " + std::to_string(rank) + ")");
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  (void)config;  // every emulated communicator is blocking
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommSplit: comm is NULL");
  if (newcomm == nullptr) return fail(ncclInvalidArgument, "ncclCommSplit: newcomm is NULL");
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR) {
    return fail(ncclInvalidArgument, "ncclCommSplit: color " + std::to_string(color) + " is negative");
  }
  *newcomm = nullptr;
  if (comm->mpi == MPI_COMM_NULL) {
    if (color == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
    *newcomm = new_comm(MPI_COMM_NULL, 0, 1);
    return *newcomm != nullptr ? ncclSuccess : fail(ncclSystemError, "ncclCommSplit: out of memory");
  }
  MPI_Comm mpi = MPI_COMM_NULL;
  const int e = MPI_Comm_split(comm->mpi, color == NCCL_SPLIT_NOCOLOR ? MPI_UNDEFINED : color, key, &mpi);
  if (e != MPI_SUCCESS) return mpi_fail(e, "ncclCommSplit: MPI_Comm_split");
  if (mpi == MPI_COMM_NULL) return ncclSuccess;
  return wrap_mpi_comm(mpi, newcomm, "ncclCommSplit");
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;  // as NCCL
  int e = MPI_SUCCESS;
  if (comm->mpi != MPI_COMM_NULL) {
    // Destructors may run after MPI_Finalize (mpi4py finalizes at exit); the handle is gone with MPI then.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) e = MPI_Comm_free(&comm->mpi);
  }
  delete comm;
  return e == MPI_SUCCESS ? ncclSuccess : mpi_fail(e, "ncclCommDestroy: MPI_Comm_free");
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) return fail(ncclInvalidArgument, "ncclCommCount: comm or count is NULL");
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr) return fail(ncclInvalidArgument, "ncclCommUserRank: comm or rank is NULL");
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
  ++g_group.depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (g_group.depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--g_group.depth > 0) return ncclSuccess;
  std::vector<Op> ops = std::move(g_group.ops);
  g_group.ops.clear();
  const ncclResult_t error = g_group.error;
  g_group.error = ncclSuccess;
  if (error != ncclSuccess) return error;  // the group is dropped, as NCCL aborts it
  return run_group(ops);
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(Op{Kind::Send, comm, sendbuff, nullptr, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(Op{Kind::Recv, comm, nullptr, recvbuff, count, datatype, ncclSum, peer, stream});
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::AllReduce, comm, sendbuff, recvbuff, count, datatype, op, 0, stream});
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::AllGather, comm, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0, stream});
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::Broadcast, comm, sendbuff, recvbuff, count, datatype, ncclSum, root, stream});
}

}  // extern "C"
