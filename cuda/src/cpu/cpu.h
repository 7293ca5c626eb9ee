// cpu.h: helpers shared by the CPU backend's files.
#pragma once
#include <cstdint>

namespace qlora {

// memcpy split over OpenMP threads for large copies.
void parallel_copy(void* dst, const void* src, uint64_t bytes);

// Work below this many elements runs on one thread: a parallel region costs more than it saves.
constexpr uint64_t kParallelMin = 1ull << 15;

}  // namespace qlora
