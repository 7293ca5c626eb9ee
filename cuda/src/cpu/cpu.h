// cpu.h: helpers shared by the CPU backend's files.
#pragma once
#include <cstdint>

#include "qlora.h"

namespace qlora {

// Whether this CPU has AVX-512 F and BW (checked once): the 16-lane paths of every file use it.
bool has_avx512();

// memcpy split over OpenMP threads for large copies.
void parallel_copy(void* dst, const void* src, uint64_t bytes);

// C = alpha * op(A) @ op(B) + beta * C on strided row-major operands: op(A) is m x k, stored with
// leading dimension lda (transposed when trans_a), op(B) k x n with ldb, C m x n with ldc. A and B have
// ab_dtype (f32 or bf16), C has c_dtype; f32 accumulation. oneDNN (multi-threaded), or a plain loop for
// tiny products. Inside an OpenMP parallel region it runs on the calling thread alone (threads may call it
// at once). Throws what oneDNN throws: callers turn it into a status, and never let it leave an OpenMP
// region.
void gemm_strided(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* a,
                  uint64_t lda, const void* b, uint64_t ldb, float beta, void* c, uint64_t ldc, int32_t ab_dtype,
                  int32_t c_dtype);

// The status for an exception caught in `fn` (oneDNN errors, bad_alloc, others); call inside a catch block.
qlora_status library_error(const char* fn);

// Work below this many elements runs on one thread: a parallel region costs more than it saves.
constexpr uint64_t kParallelMin = 1ull << 15;

}  // namespace qlora
