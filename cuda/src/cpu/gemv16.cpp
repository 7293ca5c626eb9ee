// cpu/gemv16.cpp: y = alpha * X W^T + beta * y for a few rows of bf16 X against a bf16 W stored n x k (a
// linear layer's weight, or the LM head), the decode step of a 16-bit model.
//
// At one token a product reads every weight once and does 2 flops per 2 bytes: it is bound by memory, and
// what counts is how close the stream of W comes to the read bandwidth. oneDNN's matmul reaches 57-70% of it
// here (2 threads, AMD EPYC Zen 5: 25-31 GB/s of ~44 GB/s), so these rows take a kernel of their own:
// threads own groups of 4 rows of W, and for each 32 values of k the 4 rows are multiplied with every row of X
// (held in L1) by vdpbf16ps into f32 lanes, summed once at the end in a fixed order (sum16). Without
// AVX512_BF16 (or with QLORA_CPU_ISA=avx2) oneDNN keeps the product.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "../common/codes.h"
#include "../common/half.h"
#include "cpu.h"
#include "decode4.h"
#include "dequant4.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qlora {
namespace {

constexpr int kRows = 4;  // rows of W per group: 4 streams of W, 4 * M accumulators

// Dot products of M rows of X (ldx apart) with R rows of W (ldw apart), k values each, into dots[r][q].
template <int M, int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dots16(const uint16_t* x, uint64_t ldx,
                                                                     const uint16_t* w, uint64_t ldw, uint64_t k,
                                                                     float (&dots)[M][kRows]) {
  __m512 acc[M][R];
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) acc[r][q] = _mm512_setzero_ps();
  uint64_t p = 0;
  for (; p + 32 <= k; p += 32) {
    __m512i wv[R];
    for (int q = 0; q < R; q++) wv[q] = _mm512_loadu_si512(w + q * ldw + p);
    for (int r = 0; r < M; r++) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * ldx + p);
      for (int q = 0; q < R; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], xv, (__m512bh)wv[q]);
    }
  }
  if (p < k) {  // the last k % 32 values, the rest of the lanes zero
    const __mmask32 mask = (__mmask32)((1ull << (k - p)) - 1);
    __m512i wv[R];
    for (int q = 0; q < R; q++) wv[q] = _mm512_maskz_loadu_epi16(mask, w + q * ldw + p);
    for (int r = 0; r < M; r++) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + r * ldx + p);
      for (int q = 0; q < R; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], xv, (__m512bh)wv[q]);
    }
  }
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) dots[r][q] = sum16(acc[r][q]);
}

template <int M>
void rows16(uint64_t n, uint64_t k, float alpha, const uint16_t* x, const uint16_t* w, float beta, void* c,
            int32_t c_dtype, uint64_t ldc) {
  const int64_t groups = (int64_t)((n + kRows - 1) / kRows);
#pragma omp parallel for schedule(static) if (n * k >= kParallelMin && !omp_in_parallel())
  for (int64_t g = 0; g < groups; g++) {
    const uint64_t j0 = (uint64_t)g * kRows;
    const int rows = (int)std::min<uint64_t>(kRows, n - j0);
    float dots[M][kRows] = {};
    switch (rows) {
      case 4: dots16<M, 4>(x, k, w + j0 * k, k, k, dots); break;
      case 3: dots16<M, 3>(x, k, w + j0 * k, k, k, dots); break;
      case 2: dots16<M, 2>(x, k, w + j0 * k, k, k, dots); break;
      default: dots16<M, 1>(x, k, w + j0 * k, k, k, dots); break;
    }
    for (int r = 0; r < M; r++)
      for (int q = 0; q < rows; q++) {
        const uint64_t at = (uint64_t)r * ldc + j0 + (uint64_t)q;
        float v = alpha * dots[r][q];
        if (beta != 0.0f) v += beta * load_float(c, c_dtype, at);
        store_float(c, c_dtype, at, v);
      }
  }
}

}  // namespace

bool gemv16_applies(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t k, uint64_t lda, uint64_t ldb,
                    int32_t ab_dtype) {
  static const bool ok = has_avx512_bf16();
  return ok && ab_dtype == QLORA_BF16 && trans_a == 0 && trans_b == 1 && m >= 1 && m <= kGemv16MaxRows &&
         lda == k && ldb == k;
}

void gemv16(uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x, const void* w, float beta, void* c,
            int32_t c_dtype, uint64_t ldc) {
  const uint16_t* xb = (const uint16_t*)x;
  const uint16_t* wb = (const uint16_t*)w;
  switch (m) {
    case 1: rows16<1>(n, k, alpha, xb, wb, beta, c, c_dtype, ldc); break;
    case 2: rows16<2>(n, k, alpha, xb, wb, beta, c, c_dtype, ldc); break;
    case 3: rows16<3>(n, k, alpha, xb, wb, beta, c, c_dtype, ldc); break;
    default: rows16<4>(n, k, alpha, xb, wb, beta, c, c_dtype, ldc); break;
  }
}

}  // namespace qlora
