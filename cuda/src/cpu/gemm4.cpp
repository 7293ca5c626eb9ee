// cpu/gemm4.cpp: the fused 4-bit GEMM of a prompt's or a training step's rows (bf16 X, trans_w = 1,
// C = X W^T with W stored n x k), where the multiply is the cost: each panel of W (kPanel rows, all of k)
// is decoded once into a bf16 buffer that stays in the thread's L1/L2, then multiplied into every row of
// a block of X by a register-blocked vdpbf16ps micro-kernel. W is read from memory as 4-bit codes once
// per block of X and never written out whole.
//
//   threads:  own panels of W (the same panels for every block of X: W's codes stream once per block).
//   panel:    rows j0 .. j0 + kPanel of W decoded as gemv4 decodes them (the block's 16 codes scaled and
//             rounded to bf16, one vpermw per 32 values), stored per 64 values as the 32 even ones, then
//             the 32 odd ones: one 4-bit byte gives one of each, no shuffle.
//   X block:  kBlockRows rows of X rearranged the same way (so that a pair of k values sits in one 32-bit
//             lane of both operands, as vdpbf16ps wants) and kept in L2 while every panel passes.
//   micro-kernel: kMr rows of X x kPanel rows of W over kSlice values of k (both operands in L1), kMr *
//             kPanel f32 accumulators in registers; per 64 values 2 * (kMr + kPanel) loads and 2 * kMr *
//             kPanel vdpbf16ps, nothing else, so the two multiply pipes do the products alone (the decode
//             ran once per panel). The slices' sums add up in a small f32 tile per panel (block x panel).
//
// The values multiplied are those dequantize-then-multiply uses (W rounded to bf16), summed in f32 in a
// fixed order: per lane along k, then the 16 lanes by one tree; the same bits on every run and thread
// count, and equal to the dequantized product up to the order of summation.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "../common/half.h"
#include "../common/status.h"
#include "cpu.h"
#include "decode4.h"
#include "dequant4.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"


namespace qlora {
namespace {

constexpr int kPanel = 4;                 // rows of W decoded together (a panel)
constexpr int kMr = 4;                    // rows of X per micro-kernel call
constexpr uint64_t kBlockRows = 64;       // rows of X per block (k = 4096: 512 KiB of bf16, L2)
constexpr uint64_t kSlice = 2048;         // values of k per micro-kernel call (a multiple of 64)
constexpr uint64_t kPad = 64;             // values between rows beyond k: rows a power of two of bytes apart
                                          // would share L1 sets
static_assert(kMr == 4, "block_times_panel's tail takes 1 to 3 rows");
static_assert(kSlice % 64 == 0, "slices hold whole groups of 64 values");

// Rows [j0, j0 + rows) of W (rows <= kPanel), all of k, into panel (row q at q * ld, bf16, arranged per 64
// values): per block, its table (bf16_table), then one vpermw per 32 values.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void decode_panel(const Quant4& w, uint64_t k, uint64_t j0,
                                                                         int rows, uint16_t* panel, uint64_t ld) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  constexpr uint64_t kRun = 64;  // blocks whose scales are decoded at once
  float sc[kRun];
  for (int q = 0; q < rows; q++) {
    const uint64_t first = (j0 + q) * blocks;
    for (uint64_t b0 = 0; b0 < blocks; b0 += kRun) {
      const uint64_t b1 = std::min(blocks, b0 + kRun);
      block_scales(w, first + b0, b1 - b0, sc);
      for (uint64_t blk = b0; blk < b1; blk++) {
        const __m512i table = bf16_table(codes, sc[blk - b0]);
        const uint8_t* p = w.d.packed + (first + blk) * (bs / 2);
        uint16_t* out = panel + (uint64_t)q * ld + blk * bs;
        for (uint64_t i = 0; i < bs / 2; i += 32) {  // 32 bytes: 64 values
          const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(p + i)));
          _mm512_storeu_si512((void*)(out + 2 * i), _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table));
          _mm512_storeu_si512((void*)(out + 2 * i + 32),
                              _mm512_permutexvar_epi16(_mm512_and_si512(bytes, low4), table));
        }
      }
    }
  }
}

// The codes (and scales) of the next panel into L2 while this one is multiplied: the decode then finds them
// there instead of waiting on memory a line at a time.
inline void prefetch_panel(const Quant4& w, uint64_t k, uint64_t j0, int rows) {
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  const char* codes = (const char*)(w.d.packed + j0 * blocks * (bs / 2));
  for (uint64_t at = 0; at < (uint64_t)rows * k / 2; at += 64) _mm_prefetch(codes + at, _MM_HINT_T1);
  const char* scales = w.d.absmax ? (const char*)(w.d.absmax + j0 * blocks) : (const char*)(w.d.absmax_codes + j0 * blocks);
  const uint64_t scale_bytes = (uint64_t)rows * blocks * (w.d.absmax ? 4 : 1);
  for (uint64_t at = 0; at < scale_bytes; at += 64) _mm_prefetch(scales + at, _MM_HINT_T1);
}

// dots[r][q] += row r of xb . row q of panel over `len` values (a multiple of 64); rows `ld` apart in both.
template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void micro_kernel(const uint16_t* xb, const uint16_t* panel,
                                                                         uint64_t ld, uint64_t len,
                                                                         float (&dots)[MR][NR]) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 16
    for (int q = 0; q < NR; q++) acc[r][q] = _mm512_setzero_ps();
  for (uint64_t i = 0; i < len; i += 64) {
    __m512bh we[NR], wo[NR];
#pragma GCC unroll 16
    for (int q = 0; q < NR; q++) {
      we[q] = (__m512bh)_mm512_loadu_si512((const void*)(panel + (uint64_t)q * ld + i));
      wo[q] = (__m512bh)_mm512_loadu_si512((const void*)(panel + (uint64_t)q * ld + i + 32));
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
      const __m512bh x0 = (__m512bh)_mm512_loadu_si512((const void*)(xb + (uint64_t)r * ld + i));
      const __m512bh x1 = (__m512bh)_mm512_loadu_si512((const void*)(xb + (uint64_t)r * ld + i + 32));
#pragma GCC unroll 16
      for (int q = 0; q < NR; q++) {
        acc[r][q] = _mm512_dpbf16_ps(acc[r][q], we[q], x0);
        acc[r][q] = _mm512_dpbf16_ps(acc[r][q], wo[q], x1);
      }
    }
  }
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < NR; q++) dots[r][q] += sum16(acc[r][q]);
}

// The block (mb rows of xb) times NR rows of the panel into tile[r][q] (f32), slice by slice of k: the
// partial sums of a slice are added to the tile's in a fixed order.
template <int MR, int NR>
void rows_times_panel(const uint16_t* xb, uint64_t r0, const uint16_t* panel, uint64_t ld, uint64_t s0, uint64_t len,
                      float (*tile)[kPanel]) {
  float dots[MR][NR] = {};
  micro_kernel<MR, NR>(xb + r0 * ld + s0, panel + s0, ld, len, dots);
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < NR; q++) tile[r0 + r][q] += dots[r][q];
}

// Rows of the block and of the panel are ld apart, k values each.
template <int NR>
void block_times_panel(const uint16_t* xb, uint64_t mb, const uint16_t* panel, uint64_t k, uint64_t ld,
                       float (*tile)[kPanel]) {
  for (uint64_t r = 0; r < mb; r++)
    for (int q = 0; q < kPanel; q++) tile[r][q] = 0.0f;
  for (uint64_t s0 = 0; s0 < k; s0 += kSlice) {
    const uint64_t len = std::min(kSlice, k - s0);
    uint64_t r0 = 0;
    for (; r0 + kMr <= mb; r0 += kMr) rows_times_panel<kMr, NR>(xb, r0, panel, ld, s0, len, tile);
    switch (mb - r0) {
      case 1: rows_times_panel<1, NR>(xb, r0, panel, ld, s0, len, tile); break;
      case 2: rows_times_panel<2, NR>(xb, r0, panel, ld, s0, len, tile); break;
      case 3: rows_times_panel<3, NR>(xb, r0, panel, ld, s0, len, tile); break;
      default: break;
    }
  }
}

// C[r][j0 + q] = alpha * tile[r][q] + beta * C, rounded once to C's dtype (CT: uint16_t for bf16, float).
template <typename CT>
void store_tile(const float (*tile)[kPanel], uint64_t mb, int rows, uint64_t n, uint64_t j0, float alpha, float beta,
                CT* c) {
  for (uint64_t r = 0; r < mb; r++)
    for (int q = 0; q < rows; q++) {
      CT* at = c + r * n + j0 + q;
      float v = alpha * tile[r][q];
      if constexpr (sizeof(CT) == 2) {
        if (beta != 0.0f) v += beta * bf16_to_float(*at);
        *at = float_to_bf16(v);
      } else {
        if (beta != 0.0f) v += beta * *at;
        *at = v;
      }
    }
}

}  // namespace

bool gemm4_bf16_applies(const Quant4& w, int32_t trans_w, uint64_t k, int32_t x_dtype) {
  return trans_w && x_dtype == QLORA_BF16 && has_avx512_bf16() && w.d.blocksize >= 64 && k % w.d.blocksize == 0;
}

uint64_t gemm4_bf16_scratch_bytes(uint64_t m, uint64_t k) {
  return (std::min(m, kBlockRows) + (uint64_t)omp_get_max_threads() * kPanel) * (k + kPad) * 2;
}

void gemm4_bf16(const Quant4& w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x, float beta, void* c,
                int32_t c_dtype, void* scratch, uint64_t scratch_bytes) {
  const uint64_t block_rows = std::min(m, kBlockRows);
  const int threads = omp_get_max_threads();
  // The block of X rearranged, then a panel per thread: in the caller's scratch when it is large enough,
  // else through the ledger.
  Workspace own;
  if (scratch_bytes < gemm4_bf16_scratch_bytes(m, k)) {
    const qlora_status s = own.alloc(gemm4_bf16_scratch_bytes(m, k), "multiply by a 4-bit matrix");
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    scratch = own.as<void>();
  }
  uint16_t* const xb = (uint16_t*)scratch;
  const uint64_t ld = k + kPad;
  uint16_t* const panels_at = xb + block_rows * ld;
  const uint64_t c_size = dtype_size(c_dtype);
  const int64_t panels = (int64_t)((n + kPanel - 1) / kPanel);
  for (uint64_t m0 = 0; m0 < m; m0 += block_rows) {
    const uint64_t mb = std::min(block_rows, m - m0);
    arrange_pairs((const uint16_t*)x + m0 * k, mb, k, xb, ld);
    void* cb = (char*)c + m0 * n * c_size;
#pragma omp parallel num_threads(threads)
    {
      uint16_t* panel = panels_at + (uint64_t)omp_get_thread_num() * kPanel * ld;
      float tile[kBlockRows][kPanel];
#pragma omp for schedule(static)
      for (int64_t p = 0; p < panels; p++) {
        const uint64_t j0 = (uint64_t)p * kPanel;
        const int rows = (int)std::min<uint64_t>(kPanel, n - j0);
        decode_panel(w, k, j0, rows, panel, ld);
        if (p + 1 < panels) prefetch_panel(w, k, j0 + kPanel, (int)std::min<uint64_t>(kPanel, n - j0 - kPanel));
        if (rows == kPanel) {
          block_times_panel<kPanel>(xb, mb, panel, k, ld, tile);
        } else {
          for (int q = 0; q < rows; q++) {
            float one[kBlockRows][kPanel];
            block_times_panel<1>(xb, mb, panel + (uint64_t)q * ld, k, ld, one);
            for (uint64_t r = 0; r < mb; r++) tile[r][q] = one[r][0];
          }
        }
        if (c_dtype == QLORA_BF16) store_tile(tile, mb, rows, n, j0, alpha, beta, (uint16_t*)cb);
        else store_tile(tile, mb, rows, n, j0, alpha, beta, (float*)cb);
      }
    }
  }
}

}  // namespace qlora
