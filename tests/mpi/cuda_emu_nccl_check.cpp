// Checks the fake NCCL (cuda/emulator/nccl.cpp) against NCCL's documented semantics, under mpiexec with
// any number of ranks ("mpi", the default) or as a plain process without MPI ("self").
//
// Streams are modelled like the emulator's: a "kernel" queued on a stream runs only at
// cudaStreamSynchronize, so every send buffer below is written by a queued kernel and a collective that
// forgot to synchronize its stream would send stale data. Prints "cuda_emu_nccl_check: ok" at the end;
// any failed check prints the rank and line and ends the job with exit code 1.
#include <mpi.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

struct CUstream_st {
  std::vector<std::function<void()>> pending;  // queued "kernels", run in order at the next sync
  int syncs = 0;
};

namespace {

CUstream_st g_default_stream;  // cudaStream_t 0
// Every buffer counts as device memory except this one range (simt::is_device_range below).
const char* g_host_only = nullptr;
size_t g_host_only_bytes = 0;
bool g_mpi = false;
int g_rank = 0;

void enqueue(cudaStream_t s, std::function<void()> kernel) {
  (s ? s : &g_default_stream)->pending.push_back(std::move(kernel));
}

[[noreturn]] void die(int line, const std::string& what) {
  std::fprintf(stderr, "[rank %d] cuda_emu_nccl_check.cpp:%d: check failed: %s\n", g_rank, line, what.c_str());
  std::fflush(stderr);
  if (g_mpi) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}
#define CHECK(cond)                    \
  do {                                 \
    if (!(cond)) die(__LINE__, #cond); \
  } while (0)
#define CHECK_NCCL(expr)                                                                              \
  do {                                                                                                \
    const ncclResult_t r_ = (expr);                                                                   \
    if (r_ != ncclSuccess) die(__LINE__, std::string(#expr) + " returned " + ncclGetErrorString(r_)); \
  } while (0)

// Deterministic test data: value of element i contributed by rank r.
float value(int r, size_t i, int salt) {
  const int k = (r * 7919 + static_cast<int>(i) * 104729 + salt * 31) % 2001 - 1000;
  return std::ldexp(static_cast<float>(k), -7 - r % 5);
}

// The expected bf16 rounding, computed independently of the code under test: scale the value so that its
// 8 significant bits are the integer part, round half to even with nearbyint, scale back.
float round_bf16(float x) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e = 0;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  const double scaled = std::ldexp(static_cast<double>(x), 8 - e);
  return static_cast<float>(std::ldexp(std::nearbyint(scaled), e - 8));
}
uint16_t bits_bf16(float x) {  // x already representable in bf16
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

ncclComm_t init_comm(int nranks, int rank, MPI_Comm bootstrap) {
  ncclUniqueId id;
  if (rank == 0) CHECK_NCCL(ncclGetUniqueId(&id));
  if (bootstrap != MPI_COMM_NULL) MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, bootstrap);
  ncclComm_t comm = nullptr;
  CHECK_NCCL(ncclCommInitRank(&comm, nranks, id, rank));
  int n = -1, r = -1;
  CHECK_NCCL(ncclCommCount(comm, &n));
  CHECK_NCCL(ncclCommUserRank(comm, &r));
  CHECK(n == nranks && r == rank);
  return comm;
}

// The packed all-to-all of cuda/nccl_comm.cpp: one grouped send and recv per peer, self included.
void check_all_to_all(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  const size_t block = 37;  // odd on purpose
  std::vector<unsigned char> send(block * n, 0), recv(block * n, 0xee);
  enqueue(s, [&] {
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < block; ++i) send[p * block + i] = static_cast<unsigned char>(rank * 16 + p + 3 * i);
  });
  const int syncs_before = s->syncs;
  CHECK_NCCL(ncclGroupStart());
  for (int p = 0; p < n; ++p) {
    CHECK_NCCL(ncclSend(send.data() + p * block, block, ncclChar, p, comm, s));
    CHECK_NCCL(ncclRecv(recv.data() + p * block, block, ncclChar, p, comm, s));
  }
  CHECK(s->syncs == syncs_before);  // nothing runs before the group ends
  CHECK_NCCL(ncclGroupEnd());
  CHECK(s->syncs == syncs_before + 1);  // one synchronization of the group's one stream
  for (int p = 0; p < n; ++p)
    for (size_t i = 0; i < block; ++i) CHECK(recv[p * block + i] == static_cast<unsigned char>(p * 16 + rank + 3 * i));

  // Nested groups run at the outermost end; a ring shift outside any group (each call a group of one
  // would deadlock for n > 1, so it is grouped) and a zero-byte exchange.
  std::vector<float> out(5), in(5, -1.0f);
  for (int i = 0; i < 5; ++i) out[i] = static_cast<float>(rank * 10 + i);
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclSend(out.data(), 5, ncclFloat32, (rank + 1) % n, comm, s));
  CHECK_NCCL(ncclGroupEnd());
  CHECK(in[0] == -1.0f);
  CHECK_NCCL(ncclRecv(in.data(), 5, ncclFloat32, (rank + n - 1) % n, comm, s));
  CHECK_NCCL(ncclSend(nullptr, 0, ncclFloat32, (rank + 1) % n, comm, s));
  CHECK_NCCL(ncclRecv(nullptr, 0, ncclFloat32, (rank + n - 1) % n, comm, s));
  CHECK_NCCL(ncclGroupEnd());
  for (int i = 0; i < 5; ++i) CHECK(in[i] == static_cast<float>(((rank + n - 1) % n) * 10 + i));
}

void check_all_reduce_f32(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  const size_t count = 1000;
  std::vector<float> send(count), recv(count, NAN), expect(count, 0.0f);
  enqueue(s, [&] {
    for (size_t i = 0; i < count; ++i) send[i] = value(rank, i, 1);
  });
  for (size_t i = 0; i < count; ++i) {
    float acc = value(0, i, 1);
    for (int r = 1; r < n; ++r) acc += value(r, i, 1);  // rank order, float32 per step
    expect[i] = acc;
  }
  CHECK_NCCL(ncclAllReduce(send.data(), recv.data(), count, ncclFloat32, ncclSum, comm, s));
  for (size_t i = 0; i < count; ++i) CHECK(recv[i] == expect[i]);
  for (size_t i = 0; i < count; ++i) CHECK(send[i] == value(rank, i, 1));  // out of place: input kept

  // In place (what helix's all_reduce_sum does), written by a queued kernel on the default stream.
  std::vector<float> data(count);
  enqueue(nullptr, [&] {
    for (size_t i = 0; i < count; ++i) data[i] = value(rank, i, 1);
  });
  CHECK_NCCL(ncclAllReduce(data.data(), data.data(), count, ncclFloat32, ncclSum, comm, nullptr));
  for (size_t i = 0; i < count; ++i) CHECK(data[i] == expect[i]);

  // Max and an integer sum, briefly.
  std::vector<int64_t> iv(3);
  for (int i = 0; i < 3; ++i) iv[i] = static_cast<int64_t>(rank + 1) * (i + 1);
  CHECK_NCCL(ncclAllReduce(iv.data(), iv.data(), 3, ncclInt64, ncclSum, comm, s));
  for (int i = 0; i < 3; ++i) CHECK(iv[i] == static_cast<int64_t>(n) * (n + 1) / 2 * (i + 1));
  float m = static_cast<float>(rank);
  CHECK_NCCL(ncclAllReduce(&m, &m, 1, ncclFloat32, ncclMax, comm, s));
  CHECK(m == static_cast<float>(n - 1));
}

void check_all_reduce_bf16(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  const size_t count = 777;
  std::vector<uint16_t> data(count);
  std::vector<float> expect(count);
  for (size_t i = 0; i < count; ++i) {
    float acc = round_bf16(value(0, i, 2));
    for (int r = 1; r < n; ++r) acc = round_bf16(acc + round_bf16(value(r, i, 2)));  // round after each step
    expect[i] = acc;
  }
  enqueue(s, [&] {
    for (size_t i = 0; i < count; ++i) data[i] = bits_bf16(round_bf16(value(rank, i, 2)));
  });
  CHECK_NCCL(ncclAllReduce(data.data(), data.data(), count, ncclBfloat16, ncclSum, comm, s));
  for (size_t i = 0; i < count; ++i) CHECK(data[i] == bits_bf16(expect[i]));

  // Per-step rounding, not one rounding of the float32 sum: 1 + 2^-8 is a tie that rounds to 1 (even), so
  // summing 1, 2^-8, 2^-8, ... in rank order stays 1, while the float32 sum 1 + (n-1) 2^-8 would not.
  uint16_t x = bits_bf16(rank == 0 ? 1.0f : std::ldexp(1.0f, -8));
  CHECK_NCCL(ncclAllReduce(&x, &x, 1, ncclBfloat16, ncclSum, comm, s));
  CHECK(from_bf16(x) == 1.0f);
}

void check_all_gather(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  const size_t count = 129;
  std::vector<float> send(count), recv(count * n, NAN);
  enqueue(s, [&] {
    for (size_t i = 0; i < count; ++i) send[i] = value(rank, i, 3);
  });
  CHECK_NCCL(ncclAllGather(send.data(), recv.data(), count, ncclFloat32, comm, s));
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < count; ++i) CHECK(recv[r * count + i] == value(r, i, 3));

  // In place: the send buffer is this rank's slot of the receive buffer.
  std::vector<float> buf(count * n, NAN);
  enqueue(s, [&] {
    for (size_t i = 0; i < count; ++i) buf[rank * count + i] = value(rank, i, 4);
  });
  CHECK_NCCL(ncclAllGather(buf.data() + rank * count, buf.data(), count, ncclFloat32, comm, s));
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < count; ++i) CHECK(buf[r * count + i] == value(r, i, 4));
}

void check_broadcast(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  for (int root = 0; root < n; ++root) {
    std::vector<char> buf(300, 0), out(300, 0);
    enqueue(s, [&, root] {
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(rank == root ? root * 13 + i : -1);
    });
    CHECK_NCCL(ncclBroadcast(buf.data(), buf.data(), buf.size(), ncclChar, root, comm, s));  // in place
    for (size_t i = 0; i < buf.size(); ++i) CHECK(buf[i] == static_cast<char>(root * 13 + i));
    CHECK_NCCL(ncclBroadcast(rank == root ? buf.data() : nullptr, out.data(), out.size(), ncclChar, root, comm, s));
    CHECK(out == buf);
  }
}

// Errors are reported, never crash or hang (every rank makes the same invalid calls).
void check_errors(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  float f[4] = {0, 0, 0, 0};
  CHECK(ncclSend(f, 1, ncclFloat32, n, comm, s) == ncclInvalidArgument);
  CHECK(ncclRecv(f, 1, ncclFloat32, -1, comm, s) == ncclInvalidArgument);
  CHECK(ncclBroadcast(f, f, 1, ncclFloat32, n, comm, s) == ncclInvalidArgument);
  CHECK(ncclBroadcast(f, f, 1, ncclFloat32, -1, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(f, f, 1, ncclFloat32, ncclSum, nullptr, s) == ncclInvalidArgument);
  CHECK(ncclAllGather(f, f, 1, ncclFloat32, nullptr, s) == ncclInvalidArgument);
  CHECK(ncclSend(f, 1, ncclFloat32, 0, nullptr, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(f, f, 1, static_cast<ncclDataType_t>(ncclNumTypes), ncclSum, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(f, f, 1, ncclFloat16, ncclSum, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(f, f, 1, ncclFloat32, ncclAvg, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(nullptr, f, 1, ncclFloat32, ncclSum, comm, s) == ncclInvalidArgument);
  CHECK(ncclGroupEnd() == ncclInvalidUsage);
  int x = 0;
  CHECK(ncclCommCount(nullptr, &x) == ncclInvalidArgument);
  CHECK(ncclCommUserRank(comm, nullptr) == ncclInvalidArgument);
  CHECK(ncclCommInitRank(nullptr, 2, ncclUniqueId{}, 0) == ncclInvalidArgument);
  ncclComm_t c = nullptr;
  CHECK(ncclCommInitRank(&c, 2, ncclUniqueId{}, 2) == ncclInvalidArgument);
  CHECK(ncclCommInitRank(&c, 0, ncclUniqueId{}, 0) == ncclInvalidArgument);
  CHECK(ncclCommSplit(comm, -5, 0, &c, nullptr) == ncclInvalidArgument);
  CHECK(ncclCommDestroy(nullptr) == ncclSuccess);

#if defined(HELIX_CUDA_EMULATOR)
  // Host memory and overruns of device allocations are refused (the emulator's device-memory registry).
  std::vector<float> host(8, 1.0f);
  g_host_only = reinterpret_cast<const char*>(host.data());
  g_host_only_bytes = host.size() * sizeof(float);
  CHECK(ncclSend(host.data(), 8, ncclFloat32, rank, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllReduce(f, host.data() + 7, 1, ncclFloat32, ncclSum, comm, s) == ncclInvalidArgument);
  CHECK(ncclAllGather(f, host.data(), 1, ncclFloat32, comm, s) == ncclInvalidArgument);
  CHECK(ncclBroadcast(f, host.data() + 4, 8, ncclFloat32, rank, comm, s) == ncclInvalidArgument);  // host recvbuff
  CHECK(ncclAllReduce(f, f, 0, ncclFloat32, ncclSum, comm, s) == ncclSuccess);                     // nothing to check
  g_host_only = nullptr;
  g_host_only_bytes = 0;
#endif

  // An invalid call inside a group fails the whole group, which then sends nothing.
  f[0] = 42.0f;
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclSend(f, 1, ncclFloat32, rank, comm, s));
  CHECK(ncclRecv(f + 1, 1, ncclFloat32, n + 3, comm, s) == ncclInvalidArgument);
  CHECK(ncclGroupEnd() == ncclInvalidArgument);
  CHECK(f[1] == 0.0f);
  // The next group is clean again: a send to self.
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclSend(f, 1, ncclFloat32, rank, comm, s));
  CHECK_NCCL(ncclRecv(f + 1, 1, ncclFloat32, rank, comm, s));
  CHECK_NCCL(ncclGroupEnd());
  CHECK(f[1] == 42.0f);
  // Mismatched sizes to self: a shorter message than the receive expects, and a longer one.
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclSend(f, 1, ncclFloat32, rank, comm, s));
  CHECK_NCCL(ncclRecv(f + 1, 2, ncclFloat32, rank, comm, s));
  CHECK(ncclGroupEnd() == ncclInvalidUsage);
  CHECK_NCCL(ncclGroupStart());
  CHECK_NCCL(ncclSend(f, 2, ncclFloat32, rank, comm, s));
  CHECK_NCCL(ncclRecv(f + 2, 1, ncclFloat32, rank, comm, s));
  const ncclResult_t longer = ncclGroupEnd();
  CHECK(longer == ncclSystemError || longer == ncclInvalidUsage);  // MPI truncation, or the local check
}

// Two colors (even and odd ranks), keys reversing the order; with 3+ ranks the last rank takes no color.
void check_split(ncclComm_t comm, int rank, int n, cudaStream_t s) {
  const bool none = n >= 3 && rank == n - 1;
  ncclComm_t sub = reinterpret_cast<ncclComm_t>(&g_default_stream);  // overwritten with NULL or a comm
  CHECK_NCCL(ncclCommSplit(comm, none ? NCCL_SPLIT_NOCOLOR : rank % 2, -rank, &sub, nullptr));
  if (none) {
    CHECK(sub == nullptr);
    return;
  }
  CHECK(sub != nullptr);
  std::vector<int> members;  // world ranks of this color, in key order (descending world rank)
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == rank % 2 && !(n >= 3 && r == n - 1)) members.push_back(r);
  int sn = -1, sr = -1;
  CHECK_NCCL(ncclCommCount(sub, &sn));
  CHECK_NCCL(ncclCommUserRank(sub, &sr));
  CHECK(sn == static_cast<int>(members.size()));
  CHECK(members[sr] == rank);
  float v = static_cast<float>(rank + 1), expect = 0.0f;
  for (int r : members) expect += static_cast<float>(r + 1);
  CHECK_NCCL(ncclAllReduce(&v, &v, 1, ncclFloat32, ncclSum, sub, s));
  CHECK(v == expect);
  check_all_to_all(sub, sr, sn, s);
  // Splitting a split, and the one-rank self communicator's split.
  ncclComm_t one = nullptr;
  CHECK_NCCL(ncclCommSplit(sub, sr, 0, &one, nullptr));
  int on = 0;
  CHECK_NCCL(ncclCommCount(one, &on));
  CHECK(on == 1);
  check_all_reduce_f32(one, 0, 1, s);
  CHECK_NCCL(ncclCommDestroy(one));
  CHECK_NCCL(ncclCommDestroy(sub));
}

void check_everything(ncclComm_t comm, int rank, int n) {
  CUstream_st stream;
  check_all_to_all(comm, rank, n, &stream);
  check_all_reduce_f32(comm, rank, n, &stream);
  check_all_reduce_bf16(comm, rank, n, &stream);
  check_all_gather(comm, rank, n, &stream);
  check_broadcast(comm, rank, n, &stream);
  check_errors(comm, rank, n, &stream);
  check_split(comm, rank, n, &stream);
  CHECK(stream.pending.empty() && g_default_stream.pending.empty());
}

}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  CUstream_st* st = s ? s : &g_default_stream;
  for (auto& kernel : st->pending) kernel();
  st->pending.clear();
  ++st->syncs;
  return cudaSuccess;
}

bool simt::is_device_range(const void* ptr, size_t bytes) {
  const char* p = static_cast<const char*>(ptr);
  return ptr != nullptr && (p + bytes <= g_host_only || p >= g_host_only + g_host_only_bytes);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "mpi";
  if (mode == "self") {
    // No MPI at all: one-rank communicators work, larger ones are refused.
    ncclComm_t comm = init_comm(1, 0, MPI_COMM_NULL);
    check_everything(comm, 0, 1);
    CHECK_NCCL(ncclCommDestroy(comm));
    ncclComm_t c = nullptr;
    ncclUniqueId id;
    CHECK_NCCL(ncclGetUniqueId(&id));
    CHECK(ncclCommInitRank(&c, 2, id, 0) == ncclInvalidUsage && c == nullptr);
    std::printf("cuda_emu_nccl_check: ok (self, no MPI)\n");
    return 0;
  }
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);  // as mpi4py does
  g_mpi = true;
  int n = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);

  ncclComm_t world = init_comm(n, g_rank, MPI_COMM_WORLD);
  check_everything(world, g_rank, n);

  // A one-rank communicator per process next to the world one, made without any collective.
  ncclComm_t self = init_comm(1, 0, MPI_COMM_NULL);
  check_everything(self, 0, 1);

  // Two communicators from two ids at once (even and odd world ranks, ranks renumbered from 0): every
  // world rank calls ncclCommInitRank with nranks > 1 together, as the emulator requires (a one-rank
  // call is local, so with 3 ranks the lone odd rank would leave the even ones waiting).
  if (n >= 4 && n % 2 == 0) {
    MPI_Comm half = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, g_rank % 2, g_rank, &half);
    int hr = 0, hn = 0;
    MPI_Comm_rank(half, &hr);
    MPI_Comm_size(half, &hn);
    ncclComm_t h = init_comm(hn, hr, half);
    float v = 1.0f;
    CHECK_NCCL(ncclAllReduce(&v, &v, 1, ncclFloat32, ncclSum, h, nullptr));
    CHECK(v == static_cast<float>(hn));
    CHECK_NCCL(ncclCommDestroy(h));
    MPI_Comm_free(&half);
  }

  // Every rank asks for one rank more than there are: all of them get the error, none hangs.
  {
    ncclUniqueId id;
    if (g_rank == 0) CHECK_NCCL(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t c = nullptr;
    CHECK(ncclCommInitRank(&c, n + 1, id, g_rank) == ncclInvalidUsage && c == nullptr);
  }

  CHECK_NCCL(ncclCommDestroy(self));
  CHECK_NCCL(ncclCommDestroy(world));
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("cuda_emu_nccl_check: ok (%d ranks)\n", n);
  MPI_Finalize();
  return 0;
}
