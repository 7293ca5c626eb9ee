// cpu/memory.cpp: the CPU backend's "device": aligned host memory counted by the ledger, and the host
// pool (aligned host memory too, counted apart).
#include <malloc.h>
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "../common/ledger.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "cpu.h"

namespace qlora {

void backend_device_memory(uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = 0;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  *total_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

// With QLORA_CPU_RETURN_MEMORY=1, buffers of kMapMin bytes or more get pages of their own (mmap), returned
// to the system when freed, so the process's resident memory follows the ledger (measured: a 0.5B-parameter
// model's two steps grow the peak RSS by 1.00-1.02x the ledger's peak, against 1.08-1.18x from malloc, and
// give back all their anonymous memory after freeing, where malloc keeps 96%). It is off by default because fresh
// pages cost time, where glibc reuses the chunks it keeps in its arenas (below its dynamic mmap threshold,
// which grows to 32 MiB) without a page fault. Buffers of 2 MiB or more are mapped for transparent huge
// pages: two 7B blocks' step at 1x512 then takes 0.90-1.02x malloc's time in LoRA and 1.06-1.18x in QLoRA
// (1.26-1.41x with 4 KiB pages), but QLoRA at 1x64 still 1.5x, its many buffers between 64 KiB and 2 MiB
// faulting 4 KiB at a time; leaving those to malloc instead gives back the speed (1.03-1.19x) and loses
// the truth (the ledger 92% of the RSS growth, under ledger_rss_test's 95%). Under AddressSanitizer every
// buffer comes from its malloc, which guards each.
constexpr uint64_t kMapMin = 64 * 1024;

bool return_memory() {
#if defined(__SANITIZE_ADDRESS__)
  return false;
#else
  static const bool yes = [] {
    const char* e = getenv("QLORA_CPU_RETURN_MEMORY");
    return e && strcmp(e, "1") == 0;
  }();
  return yes;
#endif
}

struct MappedBuffers {
  std::mutex mutex;
  std::unordered_map<void*, uint64_t> sizes;
  uint64_t bytes = 0;
};

MappedBuffers& mapped() {
  static MappedBuffers* m = new MappedBuffers();  // never destroyed: frees may come during exit
  return *m;
}

// Pages of their own for a buffer: from 2 MiB up, aligned to 2 MiB and marked for transparent huge pages,
// so that a fresh buffer faults in 2 MiB at a time instead of 4 KiB (QLORA_CPU_THP=0 turns that off).
constexpr uint64_t kHuge = 2ull << 20;
void* map_buffer(uint64_t bytes) {
  static const bool thp = [] {
    const char* e = getenv("QLORA_CPU_THP");
    return !(e && strcmp(e, "0") == 0);
  }();
  if (!thp || bytes < kHuge) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  // Map 2 MiB more, then unmap the head and the tail around the aligned range.
  char* raw = (char*)mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == (char*)MAP_FAILED) return nullptr;
  char* p = (char*)(((uintptr_t)raw + kHuge - 1) & ~(uintptr_t)(kHuge - 1));
  if (p > raw) munmap(raw, (size_t)(p - raw));
  const uint64_t kept = (bytes + 4095) & ~4095ull;  // munmap(p, bytes) in buffer_free unmaps whole pages
  const uint64_t tail = (uint64_t)(raw + kept + kHuge - (p + kept));  // the mapping ends at raw + kept + kHuge
  if (tail) munmap(p + kept, tail);
  madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

// bytes of memory, 256-byte aligned, zeroed with `zero` (mapped pages are zero anyway); nullptr if refused.
void* buffer_alloc(uint64_t bytes, bool zero) {
  if (bytes < kMapMin || !return_memory()) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes) != 0) return nullptr;
    if (p && zero) memset(p, 0, bytes);
    return p;
  }
  void* p = map_buffer(bytes);
  if (p == nullptr) return nullptr;  // pages of their own are zero until written
  MappedBuffers& m = mapped();
  std::lock_guard<std::mutex> lock(m.mutex);
  m.sizes[p] = bytes;
  m.bytes += bytes;
  return p;
}

// Frees a pointer of buffer_alloc: its pages go back to the system, or the chunk back to malloc.
void buffer_free(void* p) {
  if (!return_memory()) return free(p);  // nothing was mapped: no table to look in
  uint64_t bytes = 0;
  bool last = false;
  {
    MappedBuffers& m = mapped();
    std::lock_guard<std::mutex> lock(m.mutex);
    auto it = m.sizes.find(p);
    if (it != m.sizes.end()) {
      bytes = it->second;
      m.bytes -= bytes;
      m.sizes.erase(it);
      last = m.bytes == 0;
    }
  }
  if (bytes == 0) return free(p);
  munmap(p, bytes);
  // The last mapped buffer gone (a model freed): give back malloc's free pages too, which its arenas keep
  // from the smaller allocations of this library and of the libraries it calls (measured: 15-22 MiB after
  // a 0.5B model's two steps). Rare, so the cost of walking the arenas does not matter.
  if (last) malloc_trim(0);
}

uint64_t backend_process_used() {
  // Bytes in use in the heap (uordblks), in malloc's mmapped chunks (hblkhd) and in the buffers mapped
  // here: every allocation of the process.
  const struct mallinfo2 mi = mallinfo2();
  uint64_t own;
  {
    MappedBuffers& m = mapped();
    std::lock_guard<std::mutex> lock(m.mutex);
    own = m.bytes;
  }
  return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd + own;
}

const char* cpu_isa_setting() {
  const char* e = getenv("QLORA_CPU_ISA");
  return e && *e ? e : "native";
}

bool avx2_only() {
  static const bool yes = strcmp(cpu_isa_setting(), "avx2") == 0;
  return yes;
}

bool has_avx512() {
  static const bool yes = !avx2_only() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
}

bool has_avx512_bf16() {
  static const bool yes = has_avx512() && __builtin_cpu_supports("avx512bf16");
  return yes;
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

void parallel_copy(void* dst, const void* src, uint64_t bytes) {
  const uint64_t chunk = 1ull << 22;  // 4 MiB per task
  if (bytes < 2 * chunk) {
    memcpy(dst, src, bytes);
    return;
  }
  int64_t chunks = (int64_t)((bytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; c++) {
    uint64_t off = (uint64_t)c * chunk;
    uint64_t len = bytes - off < chunk ? bytes - off : chunk;
    memcpy((char*)dst + off, (const char*)src + off, len);
  }
}

Workspace::~Workspace() {
  if (p_) qlora_free(p_);
}

qlora_status Workspace::alloc(uint64_t bytes, const char* fn) {
  if (p_) qlora_free(p_);
  p_ = nullptr;
  if (bytes == 0) return QLORA_OK;
  qlora_status s = qlora_malloc(&p_, bytes, QLORA_CAT_WORKSPACE);
  if (s == QLORA_OK) return s;
  p_ = nullptr;
  const std::string why = qlora_last_error();
  return fail(s, "Cannot %s: no room for its scratch: %s", fn, why.c_str());
}

}  // namespace qlora

extern "C" {

QLORA_API const char* qlora_backend_name(void) { return "cpu"; }

QLORA_API qlora_status qlora_init(void) {
  const char* isa = qlora::cpu_isa_setting();
  if (strcmp(isa, "native") != 0 && strcmp(isa, "avx2") != 0)
    return qlora::fail(QLORA_ERR_INVALID_ARGUMENT,
                       "Cannot start the CPU backend: QLORA_CPU_ISA must be native or avx2, got \"%s\"", isa);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_device_name(char* buf, uint64_t buf_len) {
  QLORA_CHECK_PTR(buf, "describe the device");
  if (buf_len == 0) return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot describe the device: buf_len is 0");
  uint64_t free_b, total_b;
  qlora::backend_device_memory(&free_b, &total_b);
  char mem[32];
  snprintf(buf, buf_len, "CPU (%d OpenMP threads, %s RAM, GEMM: oneDNN%s)", omp_get_max_threads(),
           qlora::format_bytes(total_b, mem, sizeof mem),
           qlora::avx2_only() ? "; AVX2 only: QLORA_CPU_ISA=avx2" : "");
  return QLORA_OK;
}

QLORA_API qlora_status qlora_synchronize(void) { return QLORA_OK; }

QLORA_API qlora_status qlora_malloc(void** out, uint64_t bytes, int32_t category) {
  qlora_status s = qlora::check_malloc(out, bytes, category);
  if (s != QLORA_OK) return s;
  *out = nullptr;
  s = qlora::ledger_reserve(bytes, category);
  if (s != QLORA_OK) return s;
  void* p = qlora::buffer_alloc(bytes, false);
  if (p == nullptr) {
    qlora::ledger_unreserve(bytes, category);
    return qlora::ledger_oom(bytes, category, "the host allocator refused");
  }
  qlora::ledger_register(p, bytes, category);
  *out = p;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_free(void* dptr) {
  if (dptr == nullptr) return QLORA_OK;
  if (!qlora::ledger_unregister(dptr))
    return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot free %p: not a live allocation of this library", dptr);
  qlora::buffer_free(dptr);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_host_malloc(void** out, uint64_t bytes) {
  qlora_status s = qlora::ledger_check_host_request(out, bytes);
  if (s != QLORA_OK) return s;
  *out = nullptr;
  void* p = qlora::buffer_alloc(bytes, true);
  if (p == nullptr) return qlora::ledger_host_oom(bytes, "the host allocator refused");
  qlora::ledger_host_register(p, bytes);
  *out = p;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_host_free(void* hptr) {
  if (hptr == nullptr) return QLORA_OK;
  if (!qlora::ledger_host_unregister(hptr))
    return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot free host memory %p: not a live qlora_host_malloc allocation",
                       hptr);
  qlora::buffer_free(hptr);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_memcpy(void* dst, const void* src, uint64_t bytes, int32_t kind) {
  QLORA_CHECK_PTR(dst, "copy memory");
  QLORA_CHECK_PTR(src, "copy memory");
  if (kind < QLORA_HOST_TO_DEVICE || kind > QLORA_DEVICE_TO_DEVICE)
    return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot copy memory: kind %d is not 0, 1 or 2", kind);
  if (bytes) qlora::parallel_copy(dst, src, bytes);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_memset(void* dptr, int32_t value, uint64_t bytes) {
  QLORA_CHECK_PTR(dptr, "set memory");
  if (value < 0 || value > 255)
    return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot set memory: value %d is not a byte", value);
  if (bytes) memset(dptr, value, bytes);
  return QLORA_OK;
}

}  // extern "C"
