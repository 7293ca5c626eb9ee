// ledger.h: every byte of device memory, by category, and the host pool. Shared by both backends: a
// backend's qlora_malloc reserves in the ledger, allocates, then registers the pointer; qlora_free
// reverses it. qlora_host_malloc registers in the host pool (its own table, outside the budget).
#pragma once
#include <cstdint>

#include "qlora.h"

namespace qlora {

// Reserves bytes under category against the budget; on failure sets the error (request, budget,
// ledger) and returns QLORA_ERR_OUT_OF_MEMORY.
qlora_status ledger_reserve(uint64_t bytes, int32_t category);
// Undoes a reservation whose allocation failed.
void ledger_unreserve(uint64_t bytes, int32_t category);
// Records a live pointer for a reservation that succeeded.
void ledger_register(void* ptr, uint64_t bytes, int32_t category);
// Forgets a live pointer and releases its bytes; false if ptr was never registered.
bool ledger_unregister(void* ptr);
// Sets an out-of-memory error that names the request, the budget and the ledger.
qlora_status ledger_oom(uint64_t bytes, int32_t category, const char* why);
// Checks a host-pool request (out not null, bytes > 0 and plausible); sets the error if not.
qlora_status ledger_check_host_request(void** out, uint64_t bytes);
// Records a live host-pool pointer of bytes (host_current, host_peak).
void ledger_host_register(void* ptr, uint64_t bytes);
// Forgets a live host-pool pointer and releases its bytes; false if ptr was never registered.
bool ledger_host_unregister(void* ptr);
// Sets an out-of-memory error for a host-pool request that the allocator refused.
qlora_status ledger_host_oom(uint64_t bytes, const char* why);
// Fills the ledger part of stats (not the device fields).
void ledger_snapshot(qlora_ledger_snapshot* out);

// Implemented by each backend: driver free/total bytes (CPU: 0 and physical RAM).
void backend_device_memory(uint64_t* free_bytes, uint64_t* total_bytes);
// Implemented by each backend: the memory the process holds by its own measure (the snapshot's
// process_used: CPU, the allocator's bytes in use; CUDA, the driver's used bytes).
uint64_t backend_process_used();

}  // namespace qlora
