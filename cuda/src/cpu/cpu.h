// cpu.h: helpers shared by the CPU backend's files.
#pragma once
#include <cstdint>
#include <exception>
#include <string>

#include "qlora.h"

namespace qlora {

// Whether this CPU has AVX-512 F and BW (checked once): the 16-lane paths of every file use it.
bool has_avx512();
// Whether it also has AVX512_BF16 (vdpbf16ps: bf16 dot products into f32), with AVX-512 on.
bool has_avx512_bf16();
// Whether this CPU has AVX2 and FMA (checked once): the 8-lane paths where AVX-512 is absent or turned off.
bool has_avx2();
// QLORA_CPU_ISA=avx2: run as on a CPU without AVX-512 (most laptops): has_avx512() is false and oneDNN
// stops at AVX2, so that those paths are tested on any machine. Unset or "native": what the CPU has;
// anything else is refused by qlora_init.
const char* cpu_isa_setting();
bool avx2_only();

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

// Scratch of one call, allocated through the ledger (qlora_malloc, category workspace, against the
// budget) and freed when it goes out of scope: every byte the backend uses for a call is counted while
// it is held, and a budget too small for it fails the call with QLORA_ERR_OUT_OF_MEMORY.
class Workspace {
 public:
  Workspace() = default;
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // Allocates bytes (0: nothing, a null pointer). On failure sets "Cannot <fn>: ..." (naming the request,
  // the budget and the ledger) and returns QLORA_ERR_OUT_OF_MEMORY.
  qlora_status alloc(uint64_t bytes, const char* fn);
  template <typename T>
  T* as() const {
    return (T*)p_;
  }

 private:
  void* p_ = nullptr;
};

// Thrown where a status cannot be returned (inside a GEMM, under an OpenMP region that catches it): a
// failed workspace allocation, with its status and message. library_error turns it back into both.
struct WorkspaceError : std::exception {
  qlora_status status;
  std::string message;
  WorkspaceError(qlora_status s, std::string m) : status(s), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

// Work below this many elements runs on one thread: a parallel region costs more than it saves.
constexpr uint64_t kParallelMin = 1ull << 15;

// A 16-bit decode step's product (gemv16.cpp): C (ldc) = alpha * X W^T + beta * C for up to kGemv16MaxRows
// rows of bf16 X (row stride k) and bf16 W stored n x k, C f32 or bf16, on CPUs with AVX512_BF16 (otherwise
// gemv16_applies is false and oneDNN runs it).
constexpr uint64_t kGemv16MaxRows = 4;
bool gemv16_applies(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t k, uint64_t lda, uint64_t ldb,
                    int32_t ab_dtype);
void gemv16(uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x, const void* w, float beta, void* c,
            int32_t c_dtype, uint64_t ldc);

}  // namespace qlora
