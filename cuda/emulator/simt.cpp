// The kernel engine of the SIMT emulator: runs one grid on the CPU, every thread of a block as a fiber.
//
// Blocks run one after another, in the order HELIX_SIMT_SCHEDULE asks (forward, reverse, random:<seed>;
// re-read at every launch); inside a block the scheduler resumes runnable fibers in rounds, in that order
// too (random: one seeded generator per launch shuffles the blocks, then every round). A fiber runs
// until it reaches a synchronization point (__syncthreads, a warp collective) or exits. A missing barrier
// shows up as outputs that change with the schedule; a barrier that some threads never reach shows up as
// a deadlock that stops the launch with an error naming the kernel and the waiting source lines.
//
// Fibers switch with a small x86-64 routine (callee-saved registers, MXCSR and the x87 control word;
// ucontext's swapcontext makes a signal-mask system call per switch, ~50x slower). Under AddressSanitizer
// every switch is announced with __sanitizer_start/finish_switch_fiber.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "internal.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define SIMT_ASAN 0
#endif

#if !defined(__x86_64__)
#error "the SIMT emulator's fiber switch is written for x86-64"
#endif

extern "C" {
// Saves the callee-saved state on the current stack, stores the stack pointer in *save_sp, and resumes
// the context whose stack pointer is new_sp.
void simt_switch_context(void** save_sp, void* new_sp);
void simt_fiber_trampoline();
__attribute__((visibility("hidden"), used)) void simt_fiber_main();
}

asm(R"(
  .text
  .globl simt_switch_context
  .hidden simt_switch_context
  .type simt_switch_context,@function
simt_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch_context, .-simt_switch_context

  .globl simt_fiber_trampoline
  .hidden simt_fiber_trampoline
  .type simt_fiber_trampoline,@function
simt_fiber_trampoline:
  xorl %ebp, %ebp
  call simt_fiber_main
  ud2
  .size simt_fiber_trampoline, .-simt_fiber_trampoline
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace simt::detail {

uint3 g_thread_idx{0, 0, 0};
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim{1, 1, 1};
dim3 g_grid_dim{1, 1, 1};
unsigned char* g_dynamic_smem = nullptr;

namespace {

#if SIMT_ASAN
constexpr size_t kStackBytes = 512 * 1024;  // ASan frames carry redzones
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif
constexpr size_t kGuardBytes = 4096;

enum class State { Runnable, Barrier, Warp, Done };

struct Fiber {
  void* sp = nullptr;
  unsigned char* stack = nullptr;  // lowest usable byte (a guard page lies below)
  State state = State::Runnable;
  uint3 tid{0, 0, 0};
  int warp = 0, lane = 0;
  const char* file = "";  // where it waits
  int line = 0;
  void* data = nullptr;  // its warp-collective operand
  void* fake_stack = nullptr;
};

struct Warp {
  unsigned existing = 0;  // lanes that exist in this block
  unsigned exited = 0;
  unsigned arrived = 0;
  unsigned mask = 0;
  CompleteFn complete = nullptr;
  const char* what = "";
  const char* file = "";
  int line = 0;
};

struct SharedVar {
  const void* key;
  size_t bytes;
  unsigned char* ptr;
};

// The launch being run (one at a time: the API mutex is held).
struct Grid {
  const LaunchConfig* config = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0;
  int at_barrier = 0;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  std::string error;
  std::vector<SharedVar> shared;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};
Grid g;

// Stacks are kept for the life of the process (mmap'ed on demand; untouched pages cost nothing).
std::vector<unsigned char*>& stacks() {
  static std::vector<unsigned char*> s;
  return s;
}
bool g_stacks_dirty = false;  // a launch was abandoned: ASan shadow of the stacks may be stale

unsigned char* stack_for(size_t i) {
  auto& s = stacks();
  while (s.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "simt: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, kGuardBytes, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    s.push_back(static_cast<unsigned char*>(p) + kGuardBytes);
  }
  return s[i];
}

void init_fiber(Fiber& f, size_t index) {
  f.stack = stack_for(index);
  // Initial frame read by simt_switch_context: [csr][r15 r14 r13 r12 rbx rbp][return = trampoline].
  // The return slot sits at 8 mod 16 so that the trampoline's call sees an ABI-aligned stack.
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
  auto* ret_slot = reinterpret_cast<uint64_t*>(top - 24);
  *ret_slot = reinterpret_cast<uint64_t>(&simt_fiber_trampoline);
  uint64_t* sp = ret_slot - 7;
  for (int i = 1; i < 7; ++i) sp[i] = 0;
  const uint32_t mxcsr = 0x1F80;  // default: round to nearest, all exceptions masked
  const uint16_t fpcw = 0x037F;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &fpcw, 2);
  f.sp = sp;
  f.state = State::Runnable;
  f.data = nullptr;
  f.fake_stack = nullptr;
}

std::string site(const char* file, int line) {
  std::string f = file;
  const auto slash = f.rfind('/');
  return (slash == std::string::npos ? f : f.substr(slash + 1)) + ":" + std::to_string(line);
}

std::string block_label() {
  std::ostringstream os;
  os << kernel_label(*g.config) << " block (" << g_block_idx.x << "," << g_block_idx.y << "," << g_block_idx.z << ")";
  return os.str();
}

// Records the first error of the launch and returns to the scheduler for good.
[[noreturn]] void fail(const std::string& message);

void yield() {
  Fiber* f = g.current;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(f->state == State::Done ? nullptr : &f->fake_stack, g.scheduler_stack_bottom,
                                 g.scheduler_stack_size);
#endif
  simt_switch_context(&f->sp, g.scheduler_sp);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &g.scheduler_stack_bottom, &g.scheduler_stack_size);
#endif
}

// Thrown through the failing fiber's frames so that their destructors run (the launch is abandoned;
// fibers blocked elsewhere hold no heap objects: messages are only built on error paths).
struct FiberAbort {};

void fail(const std::string& message) {
  if (g.error.empty()) g.error = message;
  throw FiberAbort{};
}

void release_barrier() {
  const Fiber* first = nullptr;
  for (auto& f : g.fibers) {
    if (f.state != State::Barrier) continue;
    if (first == nullptr) {
      first = &f;
    } else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      fail(block_label() + ": divergent __syncthreads: thread " + std::to_string(first->tid.x) + " waits at " +
           site(first->file, first->line) + ", thread " + std::to_string(f.tid.x) + " at " + site(f.file, f.line) +
           " (a hang or undefined behaviour on a GPU)");
    }
  }
  for (auto& f : g.fibers) {
    if (f.state == State::Barrier) f.state = State::Runnable;
  }
  g.at_barrier = 0;
}

void resume(Fiber& f) {
  g.current = &f;
  g_thread_idx = f.tid;
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
  simt_switch_context(&g.scheduler_sp, f.sp);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g.current = nullptr;
}

void on_exit(Fiber& f) {
  --g.live;
  Warp& w = g.warps[f.warp];
  const unsigned bit = 1u << f.lane;
  w.exited |= bit;
  if (w.arrived != 0 && (w.mask & bit)) {
    fail(block_label() + ": thread " + std::to_string(f.tid.x) + " exited while lanes of its warp wait for it at " +
         w.what + " (" + site(w.file, w.line) + ")");
  }
  if (g.at_barrier > 0 && g.at_barrier == g.live) release_barrier();  // exited threads count as arrived
}

std::string describe_waiters() {
  std::ostringstream os;
  int shown = 0;
  for (const auto& f : g.fibers) {
    if (f.state == State::Done || shown >= 6) continue;
    os << "\n  thread (" << f.tid.x << "," << f.tid.y << "," << f.tid.z << ") waits at "
       << (f.state == State::Barrier ? "__syncthreads" : g.warps[f.warp].what) << " " << site(f.file, f.line);
    ++shown;
  }
  return os.str();
}

enum class Order { Forward, Reverse, Random };

}  // namespace

}  // namespace simt::detail

extern "C" void simt_fiber_main() {
  using namespace simt::detail;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack_bottom, &g.scheduler_stack_size);
#endif
  Fiber& f = *g.current;
  try {
    (*g.body)();
    on_exit(f);
  } catch (const FiberAbort&) {
  }
  f.state = State::Done;
  yield();
  __builtin_trap();  // a finished fiber is never resumed
}

namespace simt::detail {

std::string kernel_label(const LaunchConfig& config) {
  std::ostringstream os;
  os << "kernel " << config.name << " <<<(" << config.grid.x << "," << config.grid.y << "," << config.grid.z << "), ("
     << config.block.x << "," << config.block.y << "," << config.block.z << "), " << config.dynamic_smem << ">>>";
  return os.str();
}

void* static_shared(const void* key, size_t bytes, size_t align) {
  for (const auto& v : g.shared) {
    if (v.key == key) return v.ptr;
  }
  const size_t a = std::max<size_t>(align, 16);
  auto* p = static_cast<unsigned char*>(std::aligned_alloc(a, (bytes + a - 1) / a * a));
  std::memset(p, 0xFF, bytes);
  g.shared.push_back({key, bytes, p});
  return p;
}

void syncthreads(const std::source_location& loc) {
  Fiber* f = g.current;
  if (f == nullptr) {
    std::fprintf(stderr, "simt: __syncthreads called outside a kernel\n");
    std::abort();
  }
  f->file = loc.file_name();
  f->line = static_cast<int>(loc.line());
  f->state = State::Barrier;
  if (++g.at_barrier == g.live) {
    release_barrier();
  } else {
    yield();
  }
}

void warp_collective(unsigned mask, CompleteFn complete, void* data, const char* what,
                     const std::source_location& loc) {
  Fiber* f = g.current;
  if (f == nullptr) {
    std::fprintf(stderr, "simt: %s called outside a kernel\n", what);
    std::abort();
  }
  Warp& w = g.warps[f->warp];
  const unsigned bit = 1u << f->lane;
  const auto where = [&] { return std::string(what) + " at " + site(loc.file_name(), static_cast<int>(loc.line())); };
  if (!(mask & bit))
    fail(block_label() + ": thread " + std::to_string(f->tid.x) + " calls " + where() +
         " with a mask that does not name its own lane");
  if (mask & ~w.existing) fail(block_label() + ": " + where() + " names lanes that do not exist in this block");
  if (mask & w.exited) fail(block_label() + ": " + where() + " names lanes that already exited");
  if (w.arrived == 0) {
    w.mask = mask;
    w.complete = complete;
    w.what = what;
    w.file = loc.file_name();
    w.line = static_cast<int>(loc.line());
  } else if (w.mask != mask || w.complete != complete || w.line != static_cast<int>(loc.line()) ||
             std::strcmp(w.file, loc.file_name()) != 0) {
    fail(block_label() + ": divergent warp collective: thread " + std::to_string(f->tid.x) + " reaches " + where() +
         " while lanes of its warp wait at " + w.what + " " + site(w.file, w.line));
  }
  f->file = loc.file_name();
  f->line = static_cast<int>(loc.line());
  f->data = data;
  f->state = State::Warp;
  w.arrived |= bit;
  if (w.arrived != mask) {
    yield();
    return;
  }
  void* lane_data[32] = {};
  Fiber* lanes = &g.fibers[static_cast<size_t>(f->warp) * 32];
  for (int l = 0; l < 32; ++l) {
    if (mask & (1u << l)) lane_data[l] = lanes[l].data;
  }
  if (complete != nullptr) complete(lane_data, mask);
  for (int l = 0; l < 32; ++l) {
    if (mask & (1u << l)) lanes[l].state = State::Runnable;
  }
  w.arrived = 0;
}

void complete_shfl(void* const* lane_data, unsigned mask) {
  // All sources are read before any result is written (results live in separate variables anyway).
  for (int l = 0; l < 32; ++l) {
    if (!(mask & (1u << l))) continue;
    auto* d = static_cast<ShflData*>(lane_data[l]);
    // A source lane outside the mask is undefined on a GPU; the emulator returns the caller's own value.
    const auto* src = (d->src_lane >= 0 && d->src_lane < 32 && (mask & (1u << d->src_lane)))
                          ? static_cast<ShflData*>(lane_data[d->src_lane])
                          : d;
    std::memcpy(d->out, src->in, d->bytes);
  }
}

namespace {

struct Schedule {
  Order order = Order::Forward;
  uint64_t seed = 0;
};

// HELIX_SIMT_SCHEDULE, re-read at every launch; false (with the message in *error) when malformed.
bool read_schedule(Schedule& out, std::string* error) {
  const char* s = std::getenv("HELIX_SIMT_SCHEDULE");
  if (s == nullptr || *s == '\0') return true;
  const std::string v = s;
  const bool random =
      v.rfind("random:", 0) == 0 && v.size() > 7 && v.find_first_not_of("0123456789", 7) == std::string::npos;
  if (v == "forward") {
    out.order = Order::Forward;
  } else if (v == "reverse") {
    out.order = Order::Reverse;
  } else if (random) {
    out.order = Order::Random;
    out.seed = std::strtoull(v.c_str() + 7, nullptr, 10);
  } else {
    *error = "HELIX_SIMT_SCHEDULE must be forward, reverse or random:<seed>, got '" + v + "'";
    return false;
  }
  return true;
}

// HELIX_SIMT_LAUNCH_LOG=<file>: one line per grid run, "<name> <grid x y z> <block x y z> <smem>", so
// that tests can see what the host code launched (e.g. the split count of the attention plan).
void log_launch(const LaunchConfig& c) {
  const char* path = std::getenv("HELIX_SIMT_LAUNCH_LOG");
  if (path == nullptr || *path == '\0') return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s %u %u %u %u %u %u %zu\n", c.name, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z,
                 c.dynamic_smem);
    std::fclose(f);
  }
}

// The order blocks run in: linear block indices (x fastest), reversed or shuffled like the threads.
// (A GPU runs blocks concurrently in an unspecified order; code that depends on the order is wrong.)
std::vector<uint64_t> block_order(const dim3& grid, Order order, std::mt19937_64& rng) {
  std::vector<uint64_t> blocks(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = order == Order::Reverse ? blocks.size() - 1 - i : i;
  if (order == Order::Random) std::shuffle(blocks.begin(), blocks.end(), rng);
  return blocks;
}

// Runs block `b` of the launch to completion (or to the launch's first error).
void run_block(const LaunchConfig& config, uint64_t b, Order order, std::vector<unsigned>& perm, std::mt19937_64& rng) {
  const unsigned nthreads = config.block.x * config.block.y * config.block.z;
  const uint64_t gx = config.grid.x, gy = config.grid.y;
  g_block_idx = {static_cast<unsigned>(b % gx), static_cast<unsigned>(b / gx % gy),
                 static_cast<unsigned>(b / (gx * gy))};
  if (config.dynamic_smem > 0) std::memset(g_dynamic_smem, 0xFF, config.dynamic_smem);
  for (auto& v : g.shared) std::memset(v.ptr, 0xFF, v.bytes);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = g.fibers[i];
    init_fiber(f, i);
    f.tid = {i % config.block.x, (i / config.block.x) % config.block.y, i / (config.block.x * config.block.y)};
    f.warp = static_cast<int>(i / 32);
    f.lane = static_cast<int>(i % 32);
  }
  for (size_t w = 0; w < g.warps.size(); ++w) {
    const unsigned n = std::min<unsigned>(32, nthreads - static_cast<unsigned>(w) * 32);
    g.warps[w] = Warp{};
    g.warps[w].existing = n == 32 ? 0xffffffffu : ((1u << n) - 1);
  }
  g.live = static_cast<int>(nthreads);
  g.at_barrier = 0;
  while (g.live > 0 && g.error.empty()) {
    if (order == Order::Random) std::shuffle(perm.begin(), perm.end(), rng);
    bool progressed = false;
    for (unsigned i : perm) {
      Fiber& f = g.fibers[i];
      if (f.state != State::Runnable) continue;
      resume(f);
      progressed = true;
      if (!g.error.empty()) break;
    }
    if (!progressed && g.error.empty() && g.live > 0) {
      g.error = block_label() + ": deadlock, no thread can proceed (a hang on a GPU):" + describe_waiters();
    }
  }
}

}  // namespace

cudaError_t run_grid(const LaunchConfig& config, const std::function<void()>& body) {
  const unsigned nthreads = config.block.x * config.block.y * config.block.z;
  Schedule schedule;
  if (std::string error; !read_schedule(schedule, &error)) return set_error(cudaErrorInvalidValue, error);
  log_launch(config);
  std::mt19937_64 rng(schedule.seed);  // the same seed gives the same block and thread orders

  g = Grid{};
  g.config = &config;
  g.body = &body;
  g.fibers.resize(nthreads);
  g.warps.resize((nthreads + 31) / 32);
  g_block_dim = config.block;
  g_grid_dim = config.grid;
  // Dynamic shared memory: exactly the requested size (AddressSanitizer sees overruns).
  std::unique_ptr<unsigned char, decltype(&std::free)> dyn(
      static_cast<unsigned char*>(std::malloc(std::max<size_t>(config.dynamic_smem, 1))), &std::free);
  g_dynamic_smem = config.dynamic_smem > 0 ? dyn.get() : nullptr;
  if (g_stacks_dirty) {
#if SIMT_ASAN
    for (size_t i = 0; i < stacks().size(); ++i) ASAN_UNPOISON_MEMORY_REGION(stacks()[i], kStackBytes);
#endif
    g_stacks_dirty = false;
  }
  std::vector<unsigned> perm(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) perm[i] = schedule.order == Order::Reverse ? nthreads - 1 - i : i;
  for (uint64_t b : block_order(config.grid, schedule.order, rng)) {
    if (!g.error.empty()) break;
    run_block(config, b, schedule.order, perm, rng);
  }
  for (auto& v : g.shared) std::free(v.ptr);
  g.shared.clear();
  g_dynamic_smem = nullptr;
  g_thread_idx = {0, 0, 0};
  if (!g.error.empty()) {
    g_stacks_dirty = true;
    std::string msg = std::move(g.error);
    g = Grid{};
    std::fprintf(stderr, "[simt] %s\n", msg.c_str());
    return set_error(cudaErrorLaunchFailure, msg);
  }
  g = Grid{};
  return cudaSuccess;
}

}  // namespace simt::detail
