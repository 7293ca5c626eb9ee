// ledger.cpp: current and peak bytes per category, the budget, the live-pointer table, and the host
// pool (its own table and figures; the budget counts device memory only).
#include "ledger.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "status.h"

namespace qlora {

namespace {

struct Allocation {
  uint64_t bytes;
  int32_t category;
};

struct Ledger {
  std::mutex mutex;
  uint64_t current[QLORA_NUM_CATEGORIES] = {};
  uint64_t peak[QLORA_NUM_CATEGORIES] = {};
  uint64_t total_current = 0;
  uint64_t total_peak = 0;
  uint64_t budget = 0;
  std::unordered_map<void*, Allocation> live;
  uint64_t host_current = 0;
  uint64_t host_peak = 0;
  std::unordered_map<void*, uint64_t> host_live;  // host pool: pointer -> bytes
  uint64_t refused_bytes = 0;                     // the last request refused as out of memory
  uint64_t refused_category = 0;
};

Ledger& ledger() {
  static Ledger* l = new Ledger();  // never destroyed: frees may run during process exit
  return *l;
}

// Appends "weights 1.00 GiB, ..." for non-zero categories; caller holds the mutex.
void describe_locked(Ledger& l, char* buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int c = 0; c < QLORA_NUM_CATEGORIES; c++) {
    if (l.current[c] == 0) continue;
    char b[32];
    int w = snprintf(buf + used, len - used, "%s%s %s", used ? ", " : "", category_name(c),
                     format_bytes(l.current[c], b, sizeof b));
    if (w < 0 || (size_t)w >= len - used) break;
    used += (size_t)w;
  }
  if (used == 0) snprintf(buf, len, "nothing");
}

}  // namespace

qlora_status ledger_oom(uint64_t bytes, int32_t category, const char* why) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  char req[32], bud[32], tot[32], cats[512];
  l.refused_bytes = bytes;  // for the caller's error (qlora_memory_stats), with the ledger at this moment
  l.refused_category = (uint64_t)category;
  describe_locked(l, cats, sizeof cats);
  return fail(QLORA_ERR_OUT_OF_MEMORY,
              "Cannot allocate %s of %s: %s (budget %s, in use %s: %s)",
              format_bytes(bytes, req, sizeof req), category_name(category), why,
              l.budget ? format_bytes(l.budget, bud, sizeof bud) : "unlimited",
              format_bytes(l.total_current, tot, sizeof tot), cats);
}

qlora_status ledger_reserve(uint64_t bytes, int32_t category) {
  Ledger& l = ledger();
  {
    std::lock_guard<std::mutex> lock(l.mutex);
    bool over = l.budget != 0 && (bytes > l.budget || l.total_current > l.budget - bytes);
    if (!over) {
      l.current[category] += bytes;
      l.total_current += bytes;
      if (l.current[category] > l.peak[category]) l.peak[category] = l.current[category];
      if (l.total_current > l.total_peak) l.total_peak = l.total_current;
      return QLORA_OK;
    }
  }
  return ledger_oom(bytes, category, "over the memory budget");
}

void ledger_unreserve(uint64_t bytes, int32_t category) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  l.current[category] -= bytes;
  l.total_current -= bytes;
}

void ledger_register(void* ptr, uint64_t bytes, int32_t category) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  l.live[ptr] = Allocation{bytes, category};
}

bool ledger_unregister(void* ptr) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  auto it = l.live.find(ptr);
  if (it == l.live.end()) return false;
  l.current[it->second.category] -= it->second.bytes;
  l.total_current -= it->second.bytes;
  l.live.erase(it);
  return true;
}

qlora_status ledger_check_host_request(void** out, uint64_t bytes) {
  QLORA_CHECK_PTR(out, "allocate host memory");
  if (bytes == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot allocate host memory: size is 0 bytes");
  if (bytes > (1ull << 46))
    return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot allocate %llu bytes of host memory: larger than any host",
                (unsigned long long)bytes);
  return QLORA_OK;
}

void ledger_host_register(void* ptr, uint64_t bytes) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  l.host_live[ptr] = bytes;
  l.host_current += bytes;
  if (l.host_current > l.host_peak) l.host_peak = l.host_current;
}

bool ledger_host_unregister(void* ptr) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  auto it = l.host_live.find(ptr);
  if (it == l.host_live.end()) return false;
  l.host_current -= it->second;
  l.host_live.erase(it);
  return true;
}

qlora_status ledger_host_oom(uint64_t bytes, const char* why) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  char req[32], cur[32];
  return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot allocate %s of host memory: %s (host pool in use %s in %llu allocations)",
              format_bytes(bytes, req, sizeof req), why, format_bytes(l.host_current, cur, sizeof cur),
              (unsigned long long)l.host_live.size());
}

void ledger_snapshot(qlora_ledger_snapshot* out) {
  Ledger& l = ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  memcpy(out->current, l.current, sizeof l.current);
  memcpy(out->peak, l.peak, sizeof l.peak);
  out->total_current = l.total_current;
  out->total_peak = l.total_peak;
  out->budget = l.budget;
  out->live_allocations = l.live.size();
  out->host_current = l.host_current;
  out->host_peak = l.host_peak;
  out->refused_bytes = l.refused_bytes;
  out->refused_category = l.refused_category;
}

}  // namespace qlora

extern "C" {

QLORA_API qlora_status qlora_memory_stats(qlora_ledger_snapshot* out) {
  QLORA_CHECK_PTR(out, "read the memory ledger");
  memset(out, 0, sizeof *out);
  qlora::ledger_snapshot(out);
  qlora::backend_device_memory(&out->device_free, &out->device_total);
  out->process_used = qlora::backend_process_used();
  out->alignment = 256;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_reset_peak(void) {
  qlora::Ledger& l = qlora::ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  memcpy(l.peak, l.current, sizeof l.peak);
  l.total_peak = l.total_current;
  l.host_peak = l.host_current;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_set_memory_budget(uint64_t bytes) {
  qlora::Ledger& l = qlora::ledger();
  std::lock_guard<std::mutex> lock(l.mutex);
  l.budget = bytes;
  return QLORA_OK;
}

}  // extern "C"
