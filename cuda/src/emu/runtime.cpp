// emu/runtime.cpp: the CUDA emulator's runtime. Kernels run block by block (blocks in parallel on the
// host's cores, OpenMP); the threads of a block run as fibers on one host thread and switch only at
// barriers, so a thread runs from one barrier to the next without interruption and every barrier waits
// for exactly the threads that must reach it. Device memory is host memory registered here (heap, or the
// arena of deferred streams, shut to the host outside waits), so copies and frees are checked as a driver
// checks them. Each stream is a queue run by a worker thread (see "streams and events").
//
// Environment:
//   QLORA_EMU_DEVICE_MEMORY  emulated device size (default 6GiB: the RTX 3060 this project is about)
//   QLORA_EMU_ORDER          order of the threads between two barriers: forward (default), reverse, or
//                            random[:SEED] (a fresh permutation at every barrier, seeded); also the order
//                            of the elements in WMMA fragments (mma.h)
//   QLORA_EMU_STREAMS        async (default: a worker thread per stream), deferred (a stream's work runs
//                            only when the host waits for it), or sync (before each call returns)
//   QLORA_EMU_POISON         1: fill shared memory with 0xff at the start of every block (default in the
//                            sanitizer build), so a read before a write shows as NaN
//   QLORA_EMU_THREADS        host threads that run blocks (default: OpenMP's)
//   QLORA_EMU_NO_DEVICE      1: report no GPU, as a machine without a driver does
// Errors found in a kernel (a barrier that cannot complete, a collective with diverged arguments) name
// the kernel, the block and the thread; they abort the process in the sanitizer build, and otherwise
// become the sticky cudaErrorLaunchFailure that a faulting kernel leaves on a GPU.
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>
#include <omp.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "include/cuda_runtime.h"

// ASAN_(UN)POISON_MEMORY_REGION are no-ops in a build without AddressSanitizer.
#include <sanitizer/asan_interface.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

char* shared_tls_begin_address();
char* shared_tls_end_address();

namespace {

// ---- configuration ----------------------------------------------------------------------------------

uint64_t parse_bytes(const char* s, uint64_t fallback) {
  if (!s || !*s) return fallback;
  char* end = nullptr;
  double v = strtod(s, &end);
  std::string unit = end ? end : "";
  double mul = 1;
  if (unit == "KiB" || unit == "K") mul = 1024.0;
  else if (unit == "MiB" || unit == "M") mul = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") mul = 1024.0 * 1024 * 1024;
  else if (unit == "GB") mul = 1e9;
  else if (unit == "MB") mul = 1e6;
  else if (!unit.empty()) return fallback;
  return v > 0 ? (uint64_t)(v * mul) : fallback;
}

enum class Order { kForward, kReverse, kRandom };

struct Config {
  uint64_t device_bytes;
  Order order = Order::kForward;
  uint64_t seed = 1;
  bool poison;
  bool abort_on_error;
  bool no_device;
  int threads = 0;
  Config() {
#if defined(QLORA_EMU_SANITIZE)
    const bool sanitize = true;
#else
    const bool sanitize = false;
#endif
    device_bytes = parse_bytes(getenv("QLORA_EMU_DEVICE_MEMORY"), 6ull << 30);
    const char* o = getenv("QLORA_EMU_ORDER");
    if (o && strcmp(o, "reverse") == 0) order = Order::kReverse;
    if (o && strncmp(o, "random", 6) == 0) {
      order = Order::kRandom;
      if (o[6] == ':') seed = strtoull(o + 7, nullptr, 10);
    }
    const char* p = getenv("QLORA_EMU_POISON");
    poison = p ? strcmp(p, "0") != 0 : sanitize;
    abort_on_error = sanitize;
    const char* nd = getenv("QLORA_EMU_NO_DEVICE");
    no_device = nd && strcmp(nd, "0") != 0;
    if (const char* t = getenv("QLORA_EMU_THREADS")) threads = atoi(t);
  }
};

const Config& config() {
  static const Config c;
  return c;
}

// The emulated GPU: an RTX 3060 (compute capability 8.6, 28 SMs, 99 KB of shared memory per block with
// the opt-in), with QLORA_EMU_DEVICE_MEMORY of memory.
constexpr int kMajor = 8, kMinor = 6, kSms = 28;
constexpr size_t kSharedPerBlock = 48 << 10, kSharedOptin = 99 << 10;

enum class StreamMode { kAsync, kDeferred, kSync };

StreamMode stream_mode() {
  static const StreamMode mode = [] {
    const char* m = getenv("QLORA_EMU_STREAMS");
    if (m && strcmp(m, "deferred") == 0) return StreamMode::kDeferred;
    if (m && strcmp(m, "sync") == 0) return StreamMode::kSync;
    return StreamMode::kAsync;
  }();
  return mode;
}

// ---- errors -----------------------------------------------------------------------------------------

thread_local cudaError_t t_last_error = cudaSuccess;
std::atomic<int> g_sticky{cudaSuccess};  // a kernel fault: every later call fails, as on a GPU

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// The sticky error, if a kernel has faulted.
cudaError_t sticky() { return (cudaError_t)g_sticky.load(std::memory_order_relaxed); }

// ---- memory -----------------------------------------------------------------------------------------

enum class Kind { kDevice, kSymbol, kPinned };

struct Region {
  size_t size;
  Kind kind;
};

std::mutex g_mem_mutex;
std::map<uintptr_t, Region> g_regions;  // by start address
uint64_t g_device_used = 0;

// The region containing p, or nullptr. Caller holds g_mem_mutex.
const std::pair<const uintptr_t, Region>* find_region(const void* p) {
  const uintptr_t a = (uintptr_t)p;
  auto it = g_regions.upper_bound(a);
  if (it == g_regions.begin()) return nullptr;
  --it;
  if (a >= it->first + std::max<size_t>(it->second.size, 1)) return nullptr;
  return &*it;
}

bool device_range_locked(const void* p, size_t bytes) {
  const auto* r = find_region(p);
  if (!r || r->second.kind == Kind::kPinned) return false;
  return (uintptr_t)p + bytes <= r->first + r->second.size;
}

// Where a copy's pointer lies: 1 inside device memory (whole range), 0 host memory, -1 a range that
// starts in device memory and runs past the end of its allocation.
int side_of(const void* p, size_t bytes) {
  const auto* r = find_region(p);
  if (!r || r->second.kind == Kind::kPinned) return 0;
  return (uintptr_t)p + bytes <= r->first + r->second.size ? 1 : -1;
}

// ---- the device arena (deferred streams) -------------------------------------------------------------
//
// With QLORA_EMU_STREAMS=deferred, device work runs only while the host waits for it, so device memory can be
// shut to the host the rest of the time, as a GPU's memory is: allocations are carved from one reserved
// mapping, readable and writable only while some wait is in progress (open), PROT_NONE otherwise, and a
// host access outside a wait stops the process naming the allocation (the SIGSEGV handler below). Each
// allocation is followed by a 256-byte red zone; under AddressSanitizer the red zones and freed ranges are
// poisoned, so an access one past the end or after a free is still reported.

struct Arena {
  char* base = nullptr;
  size_t size = 0;
  std::map<size_t, size_t> free_ranges;  // offset -> bytes, coalesced
  int open = 0;                          // waits in progress
  std::mutex m;
};
constexpr size_t kRedZone = 256;

struct sigaction g_previous_segv;
void on_segv(int sig, siginfo_t* info, void* context);

// The arena, or null where streams are not deferred (device memory is then host heap).
Arena* arena() {
  static Arena* a = []() -> Arena* {
    if (stream_mode() != StreamMode::kDeferred) return nullptr;
    const size_t size = ((config().device_bytes * 2 + (1ull << 30)) + 4095) & ~(size_t)4095;
    void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    Arena* r = new Arena();
    r->base = (char*)p;
    r->size = size;
    r->free_ranges[0] = size;
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_previous_segv);
    return r;
  }();
  return a;
}

// A wait begins (open) or ends (close): the arena is readable while any wait is in progress.
void arena_open() {
  Arena* a = arena();
  if (!a) return;
  std::lock_guard<std::mutex> lock(a->m);
  if (a->open++ == 0) mprotect(a->base, a->size, PROT_READ | PROT_WRITE);
}
void arena_close() {
  Arena* a = arena();
  if (!a) return;
  std::lock_guard<std::mutex> lock(a->m);
  if (--a->open == 0) mprotect(a->base, a->size, PROT_NONE);
}

void* arena_alloc(Arena& a, size_t bytes) {
  const size_t need = ((bytes + 255) & ~(size_t)255) + kRedZone;
  std::lock_guard<std::mutex> lock(a.m);
  for (auto it = a.free_ranges.begin(); it != a.free_ranges.end(); ++it) {
    if (it->second < need) continue;
    const size_t at = it->first, left = it->second - need;
    a.free_ranges.erase(it);
    if (left) a.free_ranges[at + need] = left;
    char* p = a.base + at;
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
    ASAN_POISON_MEMORY_REGION(p + bytes, need - bytes);  // the tail of the last 256 bytes and the red zone
    return p;
  }
  return nullptr;
}

void arena_free(Arena& a, void* p, size_t bytes) {
  const size_t need = ((bytes + 255) & ~(size_t)255) + kRedZone;
  size_t at = (size_t)((char*)p - a.base), len = need;
  std::lock_guard<std::mutex> lock(a.m);
  ASAN_POISON_MEMORY_REGION(p, bytes);
  auto next = a.free_ranges.lower_bound(at);
  if (next != a.free_ranges.end() && at + len == next->first) {
    len += next->second;
    next = a.free_ranges.erase(next);
  }
  if (next != a.free_ranges.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == at) {
      at = prev->first;
      len += prev->second;
      a.free_ranges.erase(prev);
    }
  }
  a.free_ranges[at] = len;
  // Large freed ranges give their pages back (their contents are undefined, as on a GPU).
  const size_t first = (at + 4095) & ~(size_t)4095, last = (at + len) & ~(size_t)4095;
  if (last > first && last - first >= (1u << 20)) madvise(a.base + first, last - first, MADV_DONTNEED);
}

bool in_arena(const void* p) {
  Arena* a = arena();
  return a && (const char*)p >= a->base && (const char*)p < a->base + a->size;
}

cudaError_t device_alloc(void** out, size_t bytes) {
  if (out == nullptr) return record(cudaErrorInvalidValue);
  *out = nullptr;
  if (sticky()) return sticky();
  if (bytes == 0) return cudaSuccess;
  Arena* a = arena();
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  if (bytes > config().device_bytes - std::min(g_device_used, config().device_bytes))
    return record(cudaErrorMemoryAllocation);
  void* p = nullptr;
  if (a) {
    p = arena_alloc(*a, bytes);
    if (!p) return record(cudaErrorMemoryAllocation);
  } else if (posix_memalign(&p, 256, bytes) != 0) {
    // Exactly `bytes`: AddressSanitizer reports an access one past the end. 256-byte aligned, as cudaMalloc.
    return record(cudaErrorMemoryAllocation);
  }
  g_regions[(uintptr_t)p] = Region{bytes, Kind::kDevice};
  g_device_used += bytes;
  *out = p;
  return cudaSuccess;
}

// Gives an allocation's memory back (to the arena or the heap).
void release_device(void* p, size_t bytes) {
  if (in_arena(p)) arena_free(*arena(), p, bytes);
  else free(p);
}

// Frees a device allocation: at once (stream null), or taken out of the device's memory now and given back
// when `stream` reaches the free.
struct Stream;
void enqueue_free(Stream* stream, void* p, size_t bytes);

cudaError_t device_free(void* p, Stream* stream) {
  if (sticky()) return sticky();
  if (p == nullptr) return cudaSuccess;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_regions.find((uintptr_t)p);
    if (it == g_regions.end() || it->second.kind != Kind::kDevice) return record(cudaErrorInvalidValue);
    bytes = it->second.size;
    g_device_used -= bytes;
    g_regions.erase(it);
  }
  if (stream) enqueue_free(stream, p, bytes);
  else release_device(p, bytes);
  return cudaSuccess;
}

// ---- streams and events -----------------------------------------------------------------------------
//
// A stream is a queue of operations (kernels, copies, sets, host functions, waits on other streams) and a
// worker thread that runs them in order. Each operation gets the next sequence number of its stream;
// waiting for a stream up to number n waits until its worker has finished n operations. In deferred mode
// the worker runs nothing the host has not waited for (released), so work the host reads without waiting
// has never run. The legacy default stream (null) is a stream too, created on first use.

using Op = std::function<void()>;

struct Stream : CUstream_st {
  bool blocking = true;  // synchronizes with the legacy default stream (cudaStreamDefault)
  std::mutex m;
  std::condition_variable cv;
  std::deque<Op> queue;
  uint64_t submitted = 0, done = 0, released = 0;
  bool stopping = false;
  std::thread worker;

  explicit Stream(bool is_blocking) : CUstream_st{&::cudaLaunchHostFunc}, blocking(is_blocking) {
    if (stream_mode() != StreamMode::kSync) worker = std::thread([this] { work(); });
  }

  void work() {
    std::unique_lock<std::mutex> lock(m);
    for (;;) {
      cv.wait(lock, [&] {
        return stopping || (!queue.empty() && (stream_mode() != StreamMode::kDeferred || done < released));
      });
      if (queue.empty()) return;  // stopping, and nothing left
      Op op = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      op();
      lock.lock();
      done++;
      cv.notify_all();
    }
  }

  // Queues op; returns its sequence number. In sync mode, runs it first.
  uint64_t submit(Op op) {
    if (stream_mode() == StreamMode::kSync) {
      op();
      std::lock_guard<std::mutex> lock(m);
      return done = ++submitted;
    }
    std::lock_guard<std::mutex> lock(m);
    queue.push_back(std::move(op));
    cv.notify_all();
    return ++submitted;
  }

  // Blocks until the first n operations have run.
  // The device memory arena is open (readable) while any wait is in progress (deferred streams).
  void wait_for(uint64_t n) {
    arena_open();
    {
      std::unique_lock<std::mutex> lock(m);
      released = std::max(released, n);
      cv.notify_all();
      cv.wait(lock, [&] { return done >= n; });
    }
    arena_close();
  }
  void wait_all() { wait_for(last()); }
  uint64_t last() {
    std::lock_guard<std::mutex> lock(m);
    return submitted;
  }
  bool finished(uint64_t n) {
    std::lock_guard<std::mutex> lock(m);
    return done >= n;
  }

  void stop() {
    arena_open();
    {
      std::lock_guard<std::mutex> lock(m);
      released = submitted;
      stopping = true;
      cv.notify_all();
    }
    if (worker.joinable()) worker.join();
    arena_close();
  }
};

std::mutex g_handles_mutex;
std::set<const void*> g_streams, g_events;

// The legacy default stream: never destroyed (its worker waits for work until the process ends).
Stream* default_stream() {
  static Stream* s = new Stream(true);
  return s;
}

// The stream a handle names (null: the legacy default stream), or nullptr for an unknown handle.
Stream* find_stream(cudaStream_t stream) {
  if (stream == nullptr) return default_stream();
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  return g_streams.count(stream) ? (Stream*)stream : nullptr;
}

std::vector<Stream*> all_streams() {
  std::vector<Stream*> all{default_stream()};
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  for (const void* s : g_streams) all.push_back((Stream*)s);
  return all;
}

// Queues op on s, in the legacy default stream's order: work on the default stream waits for the work
// already queued on every blocking stream, and work on a blocking stream waits for the default stream's.
void enqueue(Stream* s, Op op) {
  if (s == default_stream()) {
    for (Stream* other : all_streams())
      if (other != s && other->blocking) {
        const uint64_t n = other->last();
        if (n > 0) s->submit([other, n] { other->wait_for(n); });
      }
  } else if (s->blocking) {
    Stream* d = default_stream();
    const uint64_t n = d->last();
    if (n > 0) s->submit([d, n] { d->wait_for(n); });
  }
  s->submit(std::move(op));
}

void enqueue_free(Stream* stream, void* p, size_t bytes) {
  enqueue(stream, [p, bytes] { release_device(p, bytes); });
}

void synchronize_device() {
  for (Stream* s : all_streams()) s->wait_all();
}

struct EventState {
  std::chrono::steady_clock::time_point at;
  Stream* stream = nullptr;  // where it was last recorded, and as which operation
  uint64_t seq = 0;
  std::atomic<bool> complete{false};
  bool recorded = false;
};

// ---- fibers -----------------------------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer in *save and continues on the stack `next` (from where it stopped, or at its entry).
extern "C" void emu_switch(void** save, void* next);
asm(R"(
  .text
  .p2align 4
  .type emu_switch,@function
emu_switch:
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
  .size emu_switch,.-emu_switch
)");
#endif

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  ThreadView view;
  unsigned linear = 0;  // threadIdx as one index: x + y * bx + z * bx * by
  State state = State::kReady;
  unsigned mask = 0;      // the mask of the warp collective it waits at
  unsigned warp_gen = 0;  // warp collectives it has entered
  char* stack = nullptr;  // lowest address (a guard page below)
  size_t stack_size = 0;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  void* fake_stack = nullptr;  // AddressSanitizer's per-fiber state
};

// What the lanes of a warp exchange at a collective; two generations, so that a lane that has left one
// collective can enter the next before the slowest lane has read the previous one.
struct Exchange {
  uint64_t value[32];
  void* ptr[32];
  unsigned mask[32];
};
struct Warp {
  Exchange gen[2];
};

struct Block {
  const Launch* launch;
  uint3 idx;
  unsigned threads;
  char* dynamic_shared;
  Warp warps[32];
  bool failed;
};

// One per host thread that runs blocks: its fibers (stacks kept between launches) and the scheduler's
// saved context.
struct Worker {
  std::vector<Fiber> fibers;
  Block* block = nullptr;
  Fiber* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_bottom = nullptr;
  size_t scheduler_size = 0;
  ~Worker() {
    for (Fiber& f : fibers)
      if (f.stack) munmap(f.stack - 4096, f.stack_size + 4096);
  }
};

thread_local Worker* t_worker = nullptr;

Worker& worker() {
  if (!t_worker) t_worker = new Worker();  // lives as long as its host thread (OpenMP keeps them)
  return *t_worker;
}

constexpr size_t kStackSize = EMU_ASAN ? (512 << 10) : (128 << 10);

char* map_stack() {
  // A guard page below the stack: an overflow faults instead of corrupting the next stack.
  char* p = (char*)mmap(nullptr, kStackSize + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "qlora-emu: cannot map a fiber stack\n");
    abort();
  }
  mprotect(p, 4096, PROT_NONE);
  return p + 4096;
}

void fiber_main();

// Switches from the scheduler into fiber f until it reaches a barrier or ends.
void resume(Worker& w, Fiber& f) {
  w.current = &f;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&w.scheduler_fake_stack, f.stack, f.stack_size);
#endif
#if defined(__x86_64__)
  emu_switch(&w.scheduler_sp, f.sp);
#else
  swapcontext(&w.scheduler, &f.context);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(w.scheduler_fake_stack, nullptr, nullptr);
#endif
  w.current = nullptr;
}

// From the running fiber back to the scheduler; returns when the scheduler resumes this fiber.
void yield_to_scheduler(Worker& w, bool ending) {
  Fiber& f = *w.current;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(ending ? nullptr : &f.fake_stack, w.scheduler_bottom, w.scheduler_size);
#endif
#if defined(__x86_64__)
  emu_switch(&f.sp, w.scheduler_sp);
#else
  swapcontext(&f.context, &w.scheduler);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &w.scheduler_bottom, &w.scheduler_size);
#endif
}

// Prepares fiber f to start at fiber_main on its stack.
void start_fiber(Fiber& f) {
#if defined(__x86_64__)
  // Stack, from the top: a null return address (fiber_main never returns; entering it with rsp = top - 8
  // gives the ABI's alignment), fiber_main's address for emu_switch's ret, six zeroed registers, and the
  // default MXCSR and x87 control word.
  uintptr_t top = ((uintptr_t)(f.stack + f.stack_size)) & ~(uintptr_t)15;
  uint64_t* sp = (uint64_t*)top;
  *--sp = 0;
  *--sp = (uint64_t)(uintptr_t)&fiber_main;
  for (int r = 0; r < 6; r++) *--sp = 0;
  *--sp = 0x1f80ull | (0x037full << 32);
  f.sp = sp;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = f.stack_size;
  f.context.uc_link = nullptr;
  makecontext(&f.context, (void (*)())fiber_main, 0);
#endif
}

void fiber_main() {
  Worker& w = worker();
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.scheduler_bottom, &w.scheduler_size);
#endif
  w.block->launch->invoke(w.block->launch->call);
  w.current->state = State::kDone;
  yield_to_scheduler(w, true);
  __builtin_unreachable();
}

// ---- error reports ------------------------------------------------------------------------------------

std::mutex g_report_mutex;

// "kernel NAME, block (x, y, z), thread (x, y, z)" of the thread running on this host thread, if any.
std::string where(const Worker* w, const Fiber* f) {
  if (!w || !w->block) return "outside any kernel";
  const Block& b = *w->block;
  char buf[512];
  int len = snprintf(buf, sizeof buf, "kernel %s, block (%u, %u, %u)", b.launch->name, b.idx.x, b.idx.y, b.idx.z);
  if (f) snprintf(buf + len, sizeof buf - len, ", thread (%u, %u, %u)", f->view.thread_idx.x, f->view.thread_idx.y,
                  f->view.thread_idx.z);
  return buf;
}

// Reports an error of the block being run (the first one of the process is printed in full): aborts in
// the sanitizer build, else leaves the sticky error and marks the block failed.
void block_error(Worker& w, const Fiber* f, const char* message) {
  {
    std::lock_guard<std::mutex> lock(g_report_mutex);
    fprintf(stderr, "qlora-emu: error in %s: %s\n", where(&w, f).c_str(), message);
  }
  if (config().abort_on_error) abort();
  int expected = cudaSuccess;
  g_sticky.compare_exchange_strong(expected, cudaErrorLaunchFailure);
  w.block->failed = true;
}

// A fault in the device arena while it is shut: the host touched device memory outside a copy. Any other
// fault goes to the handler that was there before (the sanitizer's, or the runtime's own).
void on_segv(int sig, siginfo_t* info, void* context) {
  if (in_arena(info->si_addr)) {
    char msg[256];
    const int len = snprintf(msg, sizeof msg, "qlora-emu: the host touched device memory at %p (%s) outside any "
                             "stream's work: device memory is read through cudaMemcpy, after the stream is waited "
                             "for\n", info->si_addr, t_worker && t_worker->block ? "in a kernel" : "no copy, no wait");
    if (len > 0) (void)!write(2, msg, (size_t)std::min<int>(len, (int)sizeof msg - 1));
    signal(SIGABRT, SIG_DFL);
    abort();
  }
  if (g_previous_segv.sa_flags & SA_SIGINFO) {
    if (g_previous_segv.sa_sigaction) g_previous_segv.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous_segv.sa_handler == SIG_IGN) return;
  if (g_previous_segv.sa_handler == SIG_DFL) {
    signal(SIGSEGV, SIG_DFL);  // the fault happens again on return, with the default action
    return;
  }
  g_previous_segv.sa_handler(sig);
}

#if EMU_ASAN
void on_sanitizer_death() {
  const Worker* w = t_worker;
  fprintf(stderr, "qlora-emu: the sanitizer stopped the process in %s\n",
          where(w, w ? w->current : nullptr).c_str());
}
__attribute__((constructor)) void install_death_callback() { __sanitizer_set_death_callback(on_sanitizer_death); }
#endif

// ---- the scheduler ----------------------------------------------------------------------------------

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Why the block cannot go on: how many threads wait where, with the first of each.
std::string describe_stall(const Block& b, const std::vector<Fiber>& fs) {
  const State states[] = {State::kAtBlockBarrier, State::kAtWarpBarrier, State::kDone};
  const char* names[] = {"wait at __syncthreads", "wait at a warp collective", "have exited"};
  std::string s;
  for (int k = 0; k < 3; k++) {
    unsigned count = 0, first = 0;
    for (unsigned i = 0; i < b.threads; i++)
      if (fs[i].state == states[k] && count++ == 0) first = i;
    if (count == 0) continue;
    char buf[160];
    snprintf(buf, sizeof buf, "%s%u threads %s (the first: thread %u, warp %u lane %u)", s.empty() ? "" : "; ", count,
             names[k], first, first / 32, first % 32);
    s += buf;
  }
  return s;
}

// Releases the warps whose collective is complete; reports a collective that can never complete.
// Returns true when some fiber became ready.
bool release_warps(Worker& w, Block& b, std::vector<Fiber>& fs) {
  bool released = false;
  const unsigned warps = (b.threads + 31) / 32;
  for (unsigned wi = 0; wi < warps; wi++) {
    const unsigned first = wi * 32, count = std::min(32u, b.threads - first);
    const Fiber* waiting = nullptr;
    for (unsigned l = 0; l < count && !waiting; l++)
      if (fs[first + l].state == State::kAtWarpBarrier) waiting = &fs[first + l];
    if (!waiting) continue;
    const unsigned mask = waiting->mask;
    const unsigned existing = count == 32 ? 0xffffffffu : ((1u << count) - 1);
    bool complete = true;
    for (unsigned l = 0; l < count; l++) {
      const Fiber& f = fs[first + l];
      if (f.state == State::kAtWarpBarrier && f.mask != mask) {
        char msg[256];
        snprintf(msg, sizeof msg, "lanes %u and %u of warp %u are in one warp collective with different masks "
                 "(0x%08x and 0x%08x)", waiting->linear % 32, l, wi, mask, f.mask);
        block_error(w, &f, msg);
        return false;
      }
      if (!((mask >> l) & 1u)) continue;
      if (f.state == State::kDone) {
        char msg[256];
        snprintf(msg, sizeof msg, "a warp collective with mask 0x%08x waits for lane %u of warp %u, which has "
                 "exited: it would never complete on a GPU", mask, l, wi);
        block_error(w, waiting, msg);
        return false;
      }
      if (f.state != State::kAtWarpBarrier) complete = false;
    }
    if ((mask & ~existing) != 0) {
      char msg[200];
      snprintf(msg, sizeof msg, "a warp collective's mask 0x%08x names lanes that warp %u does not have (%u lanes)",
               mask, wi, count);
      block_error(w, waiting, msg);
      return false;
    }
    if (!complete) continue;
    for (unsigned l = 0; l < count; l++)
      if ((mask >> l) & 1u) fs[first + l].state = State::kReady;
    released = true;
  }
  return released;
}

void poison_static_shared() {
  char* begin = shared_tls_begin_address();
  char* end = shared_tls_end_address();
  if (end > begin + 1 && end - begin < (64 << 20)) memset(begin + 1, 0xff, (size_t)(end - begin - 1));
}

void run_block(const Launch& l, uint3 idx) {
  Worker& w = worker();
  const unsigned threads = l.block.x * l.block.y * l.block.z;
  if (w.fibers.size() < threads) w.fibers.resize(threads);
  Block b;
  b.launch = &l;
  b.idx = idx;
  b.threads = threads;
  b.failed = false;
  const size_t dyn = l.dynamic_shared;
  // Dynamic shared memory at exactly the launch's size (AddressSanitizer sees an access past it).
  void* dyn_mem = nullptr;
  if (posix_memalign(&dyn_mem, 128, dyn ? dyn : 1) != 0) abort();
  b.dynamic_shared = (char*)dyn_mem;
  if (config().poison) {
    memset(b.dynamic_shared, 0xff, dyn);
    poison_static_shared();
  }
  w.block = &b;
  for (unsigned i = 0; i < threads; i++) {
    Fiber& f = w.fibers[i];
    if (!f.stack) {
      f.stack = map_stack();
      f.stack_size = kStackSize;
    }
    f.view.thread_idx = uint3{i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
    f.view.block_idx = idx;
    f.view.block_dim = l.block;
    f.view.grid_dim = l.grid;
    f.linear = i;
    f.state = State::kReady;
    f.warp_gen = 0;
    f.fake_stack = nullptr;
    start_fiber(f);
  }
  std::vector<unsigned> order(threads);
  const uint64_t block_linear = (uint64_t)idx.x + (uint64_t)l.grid.x * (idx.y + (uint64_t)l.grid.y * idx.z);
  uint64_t pass = 0;
  while (!b.failed) {
    for (unsigned i = 0; i < threads; i++) order[i] = config().order == Order::kReverse ? threads - 1 - i : i;
    if (config().order == Order::kRandom) {
      uint64_t r = mix(config().seed ^ mix(block_linear ^ mix(pass)));
      for (unsigned i = threads - 1; i > 0; i--) {
        r = mix(r);
        std::swap(order[i], order[r % (i + 1)]);
      }
    }
    pass++;
    for (unsigned i = 0; i < threads && !b.failed; i++)
      if (w.fibers[order[i]].state == State::kReady) resume(w, w.fibers[order[i]]);
    if (b.failed) break;
    if (release_warps(w, b, w.fibers)) continue;
    if (b.failed) break;
    unsigned live = 0, at_barrier = 0;
    for (unsigned i = 0; i < threads; i++) {
      live += w.fibers[i].state != State::kDone;
      at_barrier += w.fibers[i].state == State::kAtBlockBarrier;
    }
    if (live == 0) break;
    if (at_barrier == live) {
      for (unsigned i = 0; i < threads; i++)
        if (w.fibers[i].state == State::kAtBlockBarrier) w.fibers[i].state = State::kReady;
      continue;
    }
    const std::string stall = "no barrier can complete: " + describe_stall(b, w.fibers);
    block_error(w, nullptr, stall.c_str());
  }
#if EMU_ASAN
  if (b.failed)  // abandoned fibers leave poisoned frames on their stacks
    for (unsigned i = 0; i < threads; i++) __asan_unpoison_memory_region(w.fibers[i].stack, w.fibers[i].stack_size);
#endif
  w.block = nullptr;
  free(dyn_mem);
}

}  // namespace

// ---- the device language ---------------------------------------------------------------------------

ThreadView& view() {
  Worker* w = t_worker;
  if (!w || !w->current) {
    fprintf(stderr, "qlora-emu: threadIdx, blockIdx, blockDim or gridDim read outside a kernel\n");
    abort();
  }
  return w->current->view;
}

void syncthreads() {
  Worker& w = worker();
  w.current->state = State::kAtBlockBarrier;
  yield_to_scheduler(w, false);
}

unsigned lane_id() { return worker().current->linear % 32; }

static const Exchange& exchange(unsigned mask, uint64_t value, void* ptr) {
  Worker& w = worker();
  Fiber& f = *w.current;
  const unsigned lane = f.linear % 32;
  Exchange& x = w.block->warps[f.linear / 32].gen[f.warp_gen++ & 1];
  if (!((mask >> lane) & 1u)) {
    char msg[160];
    snprintf(msg, sizeof msg, "lane %u calls a warp collective whose mask 0x%08x does not name it", lane, mask);
    block_error(w, &f, msg);
  }
  x.value[lane] = value;
  x.ptr[lane] = ptr;
  x.mask[lane] = mask;
  f.state = State::kAtWarpBarrier;
  f.mask = mask;
  yield_to_scheduler(w, false);
  return x;
}

const uint64_t* warp_exchange(unsigned mask, uint64_t value) { return exchange(mask, value, nullptr).value; }

void* const* warp_exchange_ptr(unsigned mask, void* value) { return exchange(mask, 0, value).ptr; }

void* dynamic_shared() { return worker().block->dynamic_shared; }

void kernel_error(const char* fmt, ...) {
  char msg[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(msg, sizeof msg, fmt, args);
  va_end(args);
  Worker& w = worker();
  block_error(w, w.current, msg);
  // The block is abandoned: this fiber never runs again.
  w.current->state = State::kDone;
  yield_to_scheduler(w, true);
  __builtin_unreachable();
}

// ---- launches ---------------------------------------------------------------------------------------

std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic_shared;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
std::map<const void*, long> g_static_shared;      // static __shared__ bytes per kernel (-1: unknown)

namespace {

// The static shared memory of a kernel: its __shared__ variables are function-local thread_locals here,
// whose symbols ("_ZZ" + the kernel's mangled name without "_Z" + "E" + the variable) the symbol table of
// the library (or executable) holding the kernel lists with their sizes. -1 where the symbol table cannot
// be read (a stripped build).
long static_shared_bytes(const void* func) {
  Dl_info info{};
  if (dladdr(func, &info) == 0 || !info.dli_fname) return -1;
  const char* path = info.dli_fname[0] ? info.dli_fname : "/proc/self/exe";
  const int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  struct stat st{};
  void* map = fstat(fd, &st) == 0 ? mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (map == MAP_FAILED) return -1;
  const char* base = (const char*)map;
  const size_t size = (size_t)st.st_size;
  long total = -1;
  const Elf64_Ehdr* eh = (const Elf64_Ehdr*)base;
  if (size >= sizeof *eh && memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
      eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) <= size) {
    const Elf64_Shdr* sh = (const Elf64_Shdr*)(base + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum && total < 0; i++) {
      if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
      const Elf64_Sym* syms = (const Elf64_Sym*)(base + sh[i].sh_offset);
      const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
      const char* names = base + sh[sh[i].sh_link].sh_offset;
      if (sh[i].sh_offset + sh[i].sh_size > size) break;
      // The kernel: a function at the address dladdr resolved, relative to the object's base.
      const uint64_t at = (uint64_t)((uintptr_t)func - (uintptr_t)info.dli_fbase);
      const uint64_t at_abs = (uint64_t)(uintptr_t)func;  // a non-PIE executable lists absolute addresses
      std::string prefix;
      for (size_t k = 0; k < count && prefix.empty(); k++)
        if (ELF64_ST_TYPE(syms[k].st_info) == STT_FUNC && (syms[k].st_value == at || syms[k].st_value == at_abs) &&
            strncmp(names + syms[k].st_name, "_Z", 2) == 0)
          prefix = std::string("_ZZ") + (names + syms[k].st_name + 2) + "E";
      if (prefix.empty()) break;
      total = 0;
      for (size_t k = 0; k < count; k++)
        if (ELF64_ST_TYPE(syms[k].st_info) == STT_TLS && strncmp(names + syms[k].st_name, prefix.c_str(), prefix.size()) == 0)
          total += (long)syms[k].st_size;
    }
  }
  munmap(map, size);
  return total;
}

// A kernel's static shared memory, read once per kernel (0 where unknown). Caller holds g_attr_mutex.
size_t static_shared_locked(const void* func) {
  auto st = g_static_shared.find(func);
  if (st == g_static_shared.end()) st = g_static_shared.emplace(func, static_shared_bytes(func)).first;
  return (size_t)std::max(st->second, 0L);
}

// Runs every block of a launch (on its stream's worker, or the caller in sync mode).
void run_grid(const Launch& l) {
  if (sticky()) return;  // a kernel has faulted: the context is lost, as on a GPU
  const uint64_t blocks = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
  const int threads_wanted = config().threads > 0 ? config().threads : omp_get_max_threads();
  const int host_threads = (int)std::min<uint64_t>(blocks, (uint64_t)std::max(threads_wanted, 1));
#pragma omp parallel for schedule(dynamic, 16) num_threads(host_threads)
  for (uint64_t i = 0; i < blocks; i++) {
    if (sticky()) continue;  // a block has failed: the rest of the grid is abandoned
    const uint3 idx{(unsigned)(i % l.grid.x), (unsigned)((i / l.grid.x) % l.grid.y),
                    (unsigned)(i / ((uint64_t)l.grid.x * l.grid.y))};
    run_block(l, idx);
  }
}

// A fault found at the launch (a pointer the kernel may not dereference): reported like a fault inside
// the kernel, and sticky.
void launch_fault(const Launch& l, cudaError_t e, const char* message) {
  {
    std::lock_guard<std::mutex> lock(g_report_mutex);
    fprintf(stderr, "qlora-emu: error in kernel %s, at its launch: %s\n", l.name, message);
  }
  if (config().abort_on_error) abort();
  int expected = cudaSuccess;
  g_sticky.compare_exchange_strong(expected, e);
}

}  // namespace

// Checks the launch as the driver does (errors returned at once), then queues the grid on its stream.
cudaError_t launch(const Launch& l) {
  std::unique_ptr<const void, void (*)(const void*)> call(l.call, l.destroy);
  if (sticky()) return record(sticky());
  Stream* stream = find_stream(l.stream);
  if (!stream) return record(cudaErrorInvalidResourceHandle);
  const uint64_t threads = (uint64_t)l.block.x * l.block.y * l.block.z;
  if (threads == 0 || threads > 1024 || l.block.x > 1024 || l.block.y > 1024 || l.block.z > 64 || l.grid.x == 0 ||
      l.grid.y == 0 || l.grid.z == 0 || l.grid.x > 0x7fffffffu || l.grid.y > 65535 || l.grid.z > 65535)
    return record(cudaErrorInvalidConfiguration);
  // Shared memory per block, as a GPU counts it: static + dynamic within 48 KB, or, once the kernel's
  // cudaFuncAttributeMaxDynamicSharedMemorySize is set, dynamic within it and static + dynamic within the
  // opt-in limit.
  long static_bytes = 0;
  int max_dynamic = -1;
  {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    auto it = g_max_dynamic_shared.find(l.func);
    if (it != g_max_dynamic_shared.end()) max_dynamic = it->second;
    static_bytes = (long)static_shared_locked(l.func);
  }
  const size_t shared_total = (size_t)static_bytes + l.dynamic_shared;
  if (max_dynamic < 0 ? shared_total > kSharedPerBlock
                      : (l.dynamic_shared > (size_t)max_dynamic || shared_total > kSharedOptin)) {
    std::lock_guard<std::mutex> lock(g_report_mutex);
    fprintf(stderr, "qlora-emu: kernel %s asks for %ld B of static and %zu B of dynamic shared memory per block: over "
            "the limit (%zu B%s)\n", l.name, static_bytes, l.dynamic_shared, max_dynamic < 0 ? kSharedPerBlock :
            kSharedOptin, max_dynamic < 0 ? " without cudaFuncAttributeMaxDynamicSharedMemorySize" : " with the opt-in");
    return record(cudaErrorInvalidValue);
  }
  const void* bad_value = nullptr;
  const int bad = l.bad_pointer ? l.bad_pointer(l.call, &bad_value) : -1;
  if (bad >= 0) {
    char msg[320];
    snprintf(msg, sizeof msg, "argument %d is the pointer %p, which is not device memory (a host pointer, or a "
             "device buffer already freed): the kernel would fault with cudaErrorIllegalAddress on a GPU",
             bad, bad_value);
    launch_fault(l, cudaErrorIllegalAddress, msg);
    return record(sticky());
  }
  // The queued grid owns a copy of the launch and the arguments.
  auto shared_call = std::shared_ptr<const void>(call.release(), l.destroy);
  Launch copy = l;
  enqueue(stream, [copy, shared_call] { run_grid(copy); });
  return sticky() ? record(sticky()) : cudaSuccess;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (sticky()) return record(sticky());
  if (func == nullptr) return record(cudaErrorInvalidValue);  // cudaErrorInvalidDeviceFunction on a GPU
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  if (value < 0 || (size_t)value + static_shared_locked(func) > kSharedOptin) return record(cudaErrorInvalidValue);
  g_max_dynamic_shared[func] = value;
  return cudaSuccess;
}

int fragment_order(uint64_t* seed) {
  *seed = config().seed;
  return (int)config().order;
}

cudaError_t get_symbol_address(void** p, const void* symbol, size_t bytes) {
  if (p == nullptr) return record(cudaErrorInvalidValue);
  if (sticky()) return record(sticky());
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  // A __device__ variable is device memory: registered on first use, so that copies to it are checked.
  g_regions.emplace((uintptr_t)symbol, Region{bytes, Kind::kSymbol});
  *p = (void*)symbol;
  return cudaSuccess;
}

bool is_kernel_pointer(const void* p) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  if (find_region(p)) return true;
  // One past the end too: an empty range a kernel never reads.
  const auto* r = find_region((const char*)p - 1);
  return r && (uintptr_t)p == r->first + r->second.size;
}

bool is_device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  return device_range_locked(p, bytes);
}

cudaError_t check_stream(cudaStream_t stream) {
  return find_stream(stream) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

const char* cublas_library_path() {
  static std::string path = [] {
    Dl_info info{};
    if (dladdr((void*)&cublas_library_path, &info) == 0 || !info.dli_fname) return std::string();
    std::string self = info.dli_fname;
    const size_t slash = self.rfind('/');
    return (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) + "/libqlora_cublas_emu.so";
  }();
  return path.empty() ? nullptr : path.c_str();
}

}  // namespace emu

using namespace emu;

// ---- the runtime API ----------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return record(cudaErrorInvalidValue);
  if (config().no_device) {
    *count = 0;
    return record(cudaErrorNoDevice);
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (config().no_device) return record(cudaErrorNoDevice);
  return device == 0 ? cudaSuccess : record(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return record(cudaErrorInvalidValue);
  if (device != 0) return record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)kSharedPerBlock; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = kSms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = kMajor; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = kMinor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)kSharedOptin; return cudaSuccess;
  }
  return record(cudaErrorInvalidValue);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return record(cudaErrorInvalidValue);
  if (device != 0) return record(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "qlora-emu (emulated RTX 3060 limits, sm_%d%d, on the CPU)", kMajor, kMinor);
  prop->totalGlobalMem = config().device_bytes;
  prop->sharedMemPerBlock = kSharedPerBlock;
  prop->sharedMemPerBlockOptin = kSharedOptin;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->multiProcessorCount = kSms;
  prop->major = kMajor;
  prop->minor = kMinor;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  synchronize_device();
  return sticky() ? record(sticky()) : cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidSymbol: return "cudaErrorInvalidSymbol";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidSymbol: return "invalid device symbol";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (QLORA_EMU_NO_DEVICE)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure (the emulator printed the kernel, block and thread)";
    case cudaErrorNotSupported: return "operation not supported";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  cudaError_t e = sticky() ? sticky() : t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return sticky() ? sticky() : t_last_error; }

cudaError_t cudaMalloc(void** p, size_t bytes) { return device_alloc(p, bytes); }

// cudaFree waits for the device (a kernel may still be using the buffer); cudaFreeAsync takes the buffer
// out of the device's memory at once (later work may not use it: kernels given it fault at their launch)
// and gives its bytes back in stream order.
cudaError_t cudaFree(void* p) {
  if (p != nullptr) synchronize_device();
  return device_free(p, nullptr);
}

cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream) {
  cudaError_t e = check_stream(stream);
  if (e != cudaSuccess) return record(e);
  return device_alloc(p, bytes);
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  return device_free(p, s);
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags) {
  if (!p) return record(cudaErrorInvalidValue);
  *p = nullptr;
  if (sticky()) return record(sticky());
  if (flags != cudaHostAllocDefault) return record(cudaErrorInvalidValue);
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, bytes ? bytes : 1) != 0) return record(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  g_regions[(uintptr_t)mem] = Region{bytes, Kind::kPinned};
  *p = mem;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void* p) {
  if (sticky()) return record(sticky());
  if (!p) return cudaSuccess;
  synchronize_device();  // cudaFreeHost waits for the device, which may still be copying from it
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  auto it = g_regions.find((uintptr_t)p);
  if (it == g_regions.end() || it->second.kind != Kind::kPinned) return record(cudaErrorInvalidValue);
  g_regions.erase(it);
  free(p);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return record(cudaErrorInvalidValue);
  if (sticky()) return record(sticky());
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  *total_bytes = config().device_bytes;
  *free_bytes = config().device_bytes - std::min(g_device_used, config().device_bytes);
  return cudaSuccess;
}

// A driver checks a copy against the memory each pointer names: with an explicit kind, a host pointer
// where device memory is expected (or the reverse), or a range past the end of an allocation, is
// cudaErrorInvalidValue; cudaMemcpyDefault infers each side. The checks are made at the call; the copy
// runs in stream order. A source in pageable host memory is read at the call (staged, as the driver
// stages it), so the host may reuse it at once; everything else is read and written when the stream
// reaches the copy, so the host must wait for the stream before it reads a destination in host memory or
// changes a pinned source.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (sticky()) return record(sticky());
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if ((unsigned)kind > cudaMemcpyDefault) return record(cudaErrorInvalidMemcpyDirection);
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return record(cudaErrorInvalidValue);
  bool pageable_src = false;
  {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    const int d = side_of(dst, bytes), src_side = side_of(src, bytes);
    if (d < 0 || src_side < 0) return record(cudaErrorInvalidValue);
    const bool want_dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool want_src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyDefault && (d != (int)want_dst_device || src_side != (int)want_src_device))
      return record(cudaErrorInvalidValue);
    pageable_src = src_side == 0 && find_region(src) == nullptr;
  }
  if (pageable_src) {
    auto staged = std::make_shared<std::vector<char>>((const char*)src, (const char*)src + bytes);
    enqueue(s, [dst, staged] {
      if (!sticky()) memcpy(dst, staged->data(), staged->size());
    });
  } else {
    // Overlapping ranges are an error for cudaMemcpy too: AddressSanitizer reports them.
    enqueue(s, [dst, src, bytes] {
      if (!sticky()) memcpy(dst, src, bytes);
    });
  }
  return cudaSuccess;
}

// cudaMemcpy returns when the copy is done: it runs on the legacy default stream and waits for it.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
  if (e != cudaSuccess) return e;
  default_stream()->wait_all();
  return sticky() ? record(sticky()) : cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (sticky()) return record(sticky());
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!is_device_range(p, bytes)) return record(cudaErrorInvalidValue);
  enqueue(s, [p, value, bytes] {
    if (!sticky()) memset(p, value, bytes);
  });
  return cudaSuccess;
}

// Asynchronous with respect to the host for device memory, as on a GPU: on the legacy default stream.
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  if (!stream || flags > cudaStreamNonBlocking) return record(cudaErrorInvalidValue);
  if (sticky()) return record(sticky());
  Stream* s = new Stream(flags == cudaStreamDefault);
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  g_streams.insert(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

// Waits for the stream's work, then stops its worker (a GPU lets the work finish after the call returns).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    if (!stream || !g_streams.erase(stream)) return record(cudaErrorInvalidResourceHandle);
  }
  Stream* s = (Stream*)stream;
  s->stop();
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  s->wait_all();
  return sticky() ? record(sticky()) : cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if (sticky()) return record(sticky());
  return s->finished(s->last()) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  if (sticky()) return record(sticky());
  Stream* s = find_stream(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if (!fn) return record(cudaErrorInvalidValue);
  enqueue(s, [fn, user_data] {
    if (!sticky()) fn(user_data);
  });
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  if (!event || flags != cudaEventDefault) return record(cudaErrorInvalidValue);
  auto* ev = new EventState();
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  g_events.insert(ev);
  *event = (cudaEvent_t)ev;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

static EventState* find_event(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  return g_events.count(event) ? (EventState*)event : nullptr;
}

// The event completes when its stream reaches it; the time is taken then.
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  EventState* ev = find_event(event);
  Stream* s = find_stream(stream);
  if (!ev || !s) return record(cudaErrorInvalidResourceHandle);
  ev->complete = false;
  ev->recorded = true;
  ev->stream = s;
  enqueue(s, [ev] {
    ev->at = std::chrono::steady_clock::now();
    ev->complete = true;
  });
  ev->seq = s->last();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  EventState* ev = find_event(event);
  if (!ev) return record(cudaErrorInvalidResourceHandle);
  if (ev->recorded) ev->stream->wait_for(ev->seq);
  return sticky() ? record(sticky()) : cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  EventState* ev = find_event(event);
  if (!ev) return record(cudaErrorInvalidResourceHandle);
  return !ev->recorded || ev->complete ? cudaSuccess : cudaErrorNotReady;
}

// Later work on stream waits until the event's stream has reached it.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
  EventState* ev = find_event(event);
  Stream* s = find_stream(stream);
  if (!ev || !s) return record(cudaErrorInvalidResourceHandle);
  if (flags != 0) return record(cudaErrorInvalidValue);
  if (!ev->recorded) return cudaSuccess;
  Stream* other = ev->stream;
  const uint64_t n = ev->seq;
  if (other != s) enqueue(s, [other, n] { other->wait_for(n); });
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  EventState *a = find_event(start), *b = find_event(end);
  if (!ms || !a || !b) return record(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return record(cudaErrorInvalidResourceHandle);
  if (!a->complete || !b->complete) return record(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  EventState* ev = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    if (!event || !g_events.erase(event)) return record(cudaErrorInvalidResourceHandle);
    ev = (EventState*)event;
  }
  if (ev->recorded) ev->stream->wait_for(ev->seq);  // its stream may still complete it
  delete ev;
  return cudaSuccess;
}
