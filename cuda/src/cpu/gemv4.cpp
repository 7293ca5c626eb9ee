// cpu/gemv4.cpp: the fused 4-bit products of a few rows of X (decoding a batch of tokens, m <= 8), where
// reading W is the whole cost: W is streamed once, each block decoded in registers and used for every
// row of X, never written anywhere.
//
//   trans_w = 1 (y = X W^T, W stored n x k): threads own rows of W. Per block of W, the type's 16 codes
//     are multiplied by the block's scale (a table already scaled, and for bf16 X rounded to bf16: one
//     lookup gives the value dequantize_range gives in X's dtype, bit for bit, so that the result is the
//     dequantize-then-multiply product up to the order of summation), then each 32 values are looked up
//     (vpermps) and multiplied into every row of X. R rows of W go together so that each chunk of X loaded
//     serves R.
//   trans_w = 0 (dX = dY W, W stored k x n): threads own chunks of columns; each row p of W adds
//     x[r][p] times its decoded chunk to f32 accumulators of every row of X.
//
// Sums are kept in f32 per lane and reduced in a fixed order: the same bits on every run and thread
// count. AVX-512 where the CPU has it, AVX2 otherwise (QLORA_CPU_ISA=avx2 picks it on any machine), and a
// plain loop for shapes the vector kernels do not take (k not a multiple of the blocksize).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "../common/half.h"
#include "../common/status.h"
#include "cpu.h"
#include "dequant4.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qlora {
namespace {

const char* const kFn = "multiply by a 4-bit matrix";

// X as f32 rows (bf16 widened into a workspace counted by the ledger), m x k.
class RowsF32 {
 public:
  RowsF32(const void* x, int32_t dtype, uint64_t m, uint64_t k) {
    if (dtype == QLORA_F32) {
      p_ = (const float*)x;
      return;
    }
    const qlora_status s = ws_.alloc(m * k * sizeof(float), kFn);
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    float* f = ws_.as<float>();
    for (uint64_t i = 0; i < m * k; i++) f[i] = load_float(x, dtype, i);
    p_ = f;
  }
  const float* get() const { return p_; }

 private:
  Workspace ws_;
  const float* p_ = nullptr;
};

// The LoRA bypass's h = X A^T (m x rank, f32 sums of k products, rounded to the dtype into lora->h) and,
// for the epilogue, h as f32 as it was stored.
void lora_h(const qlora_lora4& lora, const float* x, uint64_t m, uint64_t k, float* hf) {
  const uint64_t r = lora.rank;
#pragma omp parallel for schedule(static) if (m * r * k >= kParallelMin)
  for (int64_t t = 0; t < (int64_t)(m * r); t++) {
    const uint64_t row = (uint64_t)t / r, q = (uint64_t)t % r;
    float part[16] = {};
    for (uint64_t c = 0; c < k; c++) part[c % 16] += x[row * k + c] * load_float(lora.a, lora.dtype, q * k + c);
    float sum = 0.0f;
    for (int l = 0; l < 16; l++) sum += part[l];
    store_float(lora.h, lora.dtype, (uint64_t)t, sum);
    hf[t] = load_float(lora.h, lora.dtype, (uint64_t)t);
  }
}

// C[r][j] = alpha * dot + beta * C[r][j] + scaling * h[r] . B[j], rounded once to C's dtype.
inline void store_output(void* c, int32_t c_dtype, uint64_t at, float alpha, float dot, float beta,
                         const qlora_lora4* lora, const float* hrow, uint64_t j) {
  float v = alpha * dot;
  if (beta != 0.0f) v += beta * load_float(c, c_dtype, at);
  if (lora) {
    float u = 0.0f;
    for (uint64_t q = 0; q < lora->rank; q++) u += hrow[q] * load_float(lora->b, lora->dtype, j * lora->rank + q);
    v += lora->scaling * u;
  }
  store_float(c, c_dtype, at, v);
}

// The 16 scaled codes of a block: code * scale, rounded to bf16 (nearest even, as float_to_bf16 for finite
// values) when X is bf16.
__attribute__((target("avx512f,avx512bw"))) inline __m512 scaled_table_avx512(__m512 codes, float scale, bool bf16) {
  const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(scale));
  if (!bf16) return t;
  __m512i u = _mm512_castps_si512(t);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}

__attribute__((target("avx2,fma"))) inline __m256 scaled_table_avx2(__m256 codes, float scale, bool bf16) {
  const __m256 t = _mm256_mul_ps(codes, _mm256_set1_ps(scale));
  if (!bf16) return t;
  __m256i u = _mm256_castps_si256(t);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)));
}

// The 16 lanes' sum in a fixed order.
__attribute__((target("avx512f"))) inline float sum16(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float sum = 0.0f;
  for (int l = 0; l < 16; l++) sum += lanes[l];
  return sum;
}

// A value of W as X's dtype would hold it: bf16 rounding for bf16 X.
inline float as_x_dtype(float v, bool bf16) { return bf16 ? bf16_to_float(float_to_bf16(v)) : v; }

// ---- trans_w = 1: the kernels, each over blocks [b0, b1) of R consecutive rows of W ------------------
// A kernel adds, for every row r of X and row j0 + q of W, the dot product of the values of the blocks
// [b0, b1) of that row of W with the matching values of x[r], into out[r][q].

// bf16 X, AVX-512 BF16: W decoded to bf16 by one 16-bit lookup per value (vpermw) from the block's
// scaled table rounded to bf16 (the values dequantize_range gives as bf16, bit for bit), then vdpbf16ps
// (exact products of bf16 values, f32 sums). The decode needs no shuffle: the high nibbles of 32 bytes are
// W's even values, the low nibbles its odd ones, and X comes rearranged to match (xb: per 64 values, the
// 32 even ones then the 32 odd ones; see arrange_bf16). Blocks of at least 64 values.
template <int M, int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dots_bf16(const Quant4& w, uint64_t k, uint64_t j0,
                                                                      uint64_t b0, uint64_t b1, const uint16_t* xb,
                                                                      float (&out)[M][R]) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  __m512 acc[M][R];
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) acc[r][q] = _mm512_setzero_ps();
  for (uint64_t blk = b0; blk < b1; blk++) {
    __m512i table[R];
    const uint8_t* p[R];
    for (int q = 0; q < R; q++) {
      const uint64_t row_block = (j0 + q) * blocks + blk;
      // code * scale rounded to bf16 (nearest even), 16 words in the low half of the table
      __m512i u = _mm512_castps_si512(_mm512_mul_ps(codes, _mm512_set1_ps(w.scale(row_block))));
      u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                               _mm512_set1_epi32(0x7fff)));
      table[q] = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
      p[q] = w.d.packed + row_block * (bs / 2);
    }
    const uint16_t* xg = xb + blk * bs;
    for (uint64_t i = 0; i < bs / 2; i += 32) {  // 32 bytes: 64 values
      for (int q = 0; q < R; q++) {
        const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(p[q] + i)));
        const __m512bh even = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table[q]);
        const __m512bh odd = (__m512bh)_mm512_permutexvar_epi16(_mm512_and_si512(bytes, low4), table[q]);
        for (int r = 0; r < M; r++) {
          const uint16_t* xr = xg + (uint64_t)r * k + 2 * i;
          acc[r][q] = _mm512_dpbf16_ps(acc[r][q], even, (__m512bh)_mm512_loadu_si512((const void*)xr));
          acc[r][q] = _mm512_dpbf16_ps(acc[r][q], odd, (__m512bh)_mm512_loadu_si512((const void*)(xr + 32)));
        }
      }
    }
  }
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) out[r][q] += sum16(acc[r][q]);
}

// f32 X, AVX-512: the scaled f32 table looked up with vpermps, 32 values per 16 bytes, FMA into X.
template <int M, int R>
__attribute__((target("avx512f,avx512bw"))) void dots_f32_avx512(const Quant4& w, uint64_t k, uint64_t j0, uint64_t b0,
                                                                  uint64_t b1, const float* x, float (&out)[M][R]) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  __m512 acc[M][R];
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) acc[r][q] = _mm512_setzero_ps();
  for (uint64_t blk = b0; blk < b1; blk++) {
    __m512 table[R];
    const uint8_t* p[R];
    for (int q = 0; q < R; q++) {
      const uint64_t row_block = (j0 + q) * blocks + blk;
      table[q] = _mm512_mul_ps(codes, _mm512_set1_ps(w.scale(row_block)));
      p[q] = w.d.packed + row_block * (bs / 2);
    }
    const float* xb = x + blk * bs;
    for (uint64_t i = 0; i < bs / 2; i += 16) {  // 16 bytes: 32 values
      for (int q = 0; q < R; q++) {
        const __m128i b = _mm_loadu_si128((const __m128i*)(p[q] + i));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4), lo = _mm_and_si128(b, low4);
        const __m512 v0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), table[q]);
        const __m512 v1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), table[q]);
        for (int r = 0; r < M; r++) {
          const float* xr = xb + (uint64_t)r * k + 2 * i;
          acc[r][q] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xr + 16), _mm512_fmadd_ps(v0, _mm512_loadu_ps(xr), acc[r][q]));
        }
      }
    }
  }
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) out[r][q] += sum16(acc[r][q]);
}

// f32 X (bf16 X widened, W's values rounded to bf16), AVX2: 8 lanes; the 16-value table is two 8-value
// tables picked by bit 3 of the code.
template <int M, int R>
__attribute__((target("avx2,fma"))) void dots_avx2(const Quant4& w, uint64_t k, uint64_t j0, uint64_t b0, uint64_t b1,
                                                   bool bf16, const float* x, float (&out)[M][R]) {
  const __m256 codes_lo = _mm256_loadu_ps(w.table), codes_hi = _mm256_loadu_ps(w.table + 8);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const __m256i eight = _mm256_set1_epi32(8);
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  __m256 acc[M][R];
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) acc[r][q] = _mm256_setzero_ps();
  for (uint64_t blk = b0; blk < b1; blk++) {
    __m256 tlo[R], thi[R];
    const uint8_t* p[R];
    for (int q = 0; q < R; q++) {
      const uint64_t row_block = (j0 + q) * blocks + blk;
      const float scale = w.scale(row_block);
      tlo[q] = scaled_table_avx2(codes_lo, scale, bf16);
      thi[q] = scaled_table_avx2(codes_hi, scale, bf16);
      p[q] = w.d.packed + row_block * (bs / 2);
    }
    const float* xb = x + blk * bs;
    for (uint64_t i = 0; i < bs / 2; i += 8) {  // 8 bytes: 16 values
      for (int q = 0; q < R; q++) {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(p[q] + i));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4), lo = _mm_and_si128(b, low4);
        const __m128i idx = _mm_unpacklo_epi8(hi, lo);  // 16 codes in value order
        const __m256i i0 = _mm256_cvtepu8_epi32(idx), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(idx, 8));
        const __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo[q], i0), _mm256_permutevar8x32_ps(thi[q], i0),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(i0, eight), 28)));
        const __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo[q], i1), _mm256_permutevar8x32_ps(thi[q], i1),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(i1, eight), 28)));
        for (int r = 0; r < M; r++) {
          const float* xr = xb + (uint64_t)r * k + 2 * i;
          acc[r][q] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xr + 8), _mm256_fmadd_ps(v0, _mm256_loadu_ps(xr), acc[r][q]));
        }
      }
    }
  }
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[r][q]);
      float sum = 0.0f;
      for (int l = 0; l < 8; l++) sum += lanes[l];
      out[r][q] += sum;
    }
}

// Any shape: row j of W dequantized in chunks on the stack (in X's dtype), dotted with every row of X.
void dots_general(const Quant4& w, uint64_t m, uint64_t k, uint64_t j, bool bf16, const float* x, float* out) {
  constexpr uint64_t kChunk = 512;
  alignas(64) float buf[kChunk];
  float lanes[kGemvMaxRows][8] = {};
  for (uint64_t c0 = 0; c0 < k; c0 += kChunk) {
    const uint64_t len = std::min(kChunk, k - c0);
    dequantize_range(w, j * k + c0, j * k + c0 + len, buf, QLORA_F32);
    for (uint64_t i = 0; i < len; i++) buf[i] = as_x_dtype(buf[i], bf16);
    for (uint64_t r = 0; r < m; r++)
      for (uint64_t i = 0; i < len; i++) lanes[r][i % 8] += buf[i] * x[r * k + c0 + i];
  }
  for (uint64_t r = 0; r < m; r++) {
    float sum = 0.0f;
    for (int l = 0; l < 8; l++) sum += lanes[r][l];
    out[r] = sum;
  }
}

// X (bf16, m x k) as dots_bf16 reads it: per 64 values, the 32 at even positions, then the 32 at odd ones.
void arrange_bf16(const void* x, uint64_t m, uint64_t k, uint16_t* xb) {
  const uint16_t* s = (const uint16_t*)x;
  for (uint64_t r = 0; r < m; r++)
    for (uint64_t g = 0; g < k; g += 64)
      for (uint64_t i = 0; i < 32; i++) {
        xb[r * k + g + i] = s[r * k + g + 2 * i];
        xb[r * k + g + 32 + i] = s[r * k + g + 2 * i + 1];
      }
}

// ---- trans_w = 1: the driver ---------------------------------------------------------------------------
// Rows of W per kernel call (R) for M rows of X, so that the accumulators (M * R vectors) and the tables
// fit the 32 vector registers of AVX-512, or AVX2's 16.
template <int M>
constexpr int rows_avx512() {
  return M == 1 ? 8 : M == 2 ? 4 : M <= 4 ? 2 : 1;
}
template <int M>
constexpr int rows_avx2() {
  return M == 1 ? 2 : 1;
}

// Values of K per tile: the tile of X (M rows) stays in L1 (Zen 5: 48 KiB) while every row of W of this
// thread passes over it; the dot products of a row add up tile by tile (partial sums in `dots`).
constexpr uint64_t kTileValues = 2048;

enum class Kernel { kBf16, kF32Avx512, kAvx2, kGeneral };

template <int M>
void forward_rows(const Quant4& w, uint64_t n, uint64_t k, float alpha, bool bf16, Kernel kernel, const float* x,
                  const uint16_t* xb, const qlora_lora4* lora, const float* h, float beta, void* c, int32_t c_dtype,
                  float* dots) {
  constexpr int R = rows_avx512<M>(), R2 = rows_avx2<M>();
  const int group = kernel == Kernel::kAvx2 ? R2 : kernel == Kernel::kGeneral ? 1 : R;
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  const uint64_t tile_blocks = std::max<uint64_t>(1, kTileValues / bs);
  const int64_t groups = (int64_t)((n + group - 1) / group);
  std::fill(dots, dots + (uint64_t)M * n, 0.0f);  // dots[j * M + r]
#pragma omp parallel if (n * k >= kParallelMin)
  {
    for (uint64_t b0 = 0; b0 < (kernel == Kernel::kGeneral ? 1 : blocks); b0 += tile_blocks) {
      const uint64_t b1 = std::min(blocks, b0 + tile_blocks);
#pragma omp for schedule(static) nowait
      for (int64_t g = 0; g < groups; g++) {  // the same rows for each thread at every tile
        const uint64_t j0 = (uint64_t)g * group;
        const int rows = (int)std::min<uint64_t>(group, n - j0);
        float part[M][R] = {};
        if (kernel == Kernel::kGeneral) {
          if (b0 > 0) continue;  // the whole row at the first tile
          for (int q = 0; q < rows; q++) {
            float col[kGemvMaxRows];
            dots_general(w, M, k, j0 + q, bf16, x, col);
            for (int r = 0; r < M; r++) part[r][q] = col[r];
          }
        } else if (rows < group) {  // the last rows of W, one at a time
          for (int q = 0; q < rows; q++) {
            float one[M][1] = {};
            if (kernel == Kernel::kBf16) dots_bf16<M, 1>(w, k, j0 + q, b0, b1, xb, one);
            else if (kernel == Kernel::kF32Avx512) dots_f32_avx512<M, 1>(w, k, j0 + q, b0, b1, x, one);
            else dots_avx2<M, 1>(w, k, j0 + q, b0, b1, bf16, x, one);
            for (int r = 0; r < M; r++) part[r][q] = one[r][0];
          }
        } else if (kernel == Kernel::kBf16) {
          dots_bf16<M, R>(w, k, j0, b0, b1, xb, part);
        } else if (kernel == Kernel::kF32Avx512) {
          dots_f32_avx512<M, R>(w, k, j0, b0, b1, x, part);
        } else {
          float p2[M][R2] = {};
          dots_avx2<M, R2>(w, k, j0, b0, b1, bf16, x, p2);
          for (int r = 0; r < M; r++)
            for (int q = 0; q < R2; q++) part[r][q] = p2[r][q];
        }
        for (int q = 0; q < rows; q++)
          for (int r = 0; r < M; r++) dots[(j0 + q) * M + r] += part[r][q];
      }
    }
  }
#pragma omp parallel for schedule(static) if (n * M >= kParallelMin)
  for (int64_t jj = 0; jj < (int64_t)n; jj++)
    for (int r = 0; r < M; r++)
      store_output(c, c_dtype, (uint64_t)r * n + (uint64_t)jj, alpha, dots[(uint64_t)jj * M + r], beta, lora,
                   lora ? h + (uint64_t)r * lora->rank : nullptr, (uint64_t)jj);
}

// ---- trans_w = 0: dX = dY W, W stored k x n ------------------------------------------------------------

// Columns j0 .. j0 + cols (a multiple of 32, inside rows that start on block boundaries) of every row of
// W added into acc[r][0 .. cols) times x[r][p], AVX-512.
__attribute__((target("avx512f,avx512bw"))) void accumulate_columns_avx512(const Quant4& w, uint64_t m, uint64_t n,
                                                                            uint64_t k, uint64_t j0, uint64_t cols,
                                                                            bool bf16, const float* x, float* acc) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  const uint64_t bs = w.d.blocksize;
  for (uint64_t p = 0; p < k; p++) {
    __m512 xs[kGemvMaxRows];
    for (uint64_t r = 0; r < m; r++) xs[r] = _mm512_set1_ps(x[r * k + p]);
    __m512 table = _mm512_setzero_ps();
    uint64_t block = ~0ull;
    for (uint64_t j = 0; j < cols; j += 32) {
      const uint64_t at = p * n + j0 + j;
      if (at / bs != block) table = scaled_table_avx512(codes, w.scale(block = at / bs), bf16);
      const __m128i b = _mm_loadu_si128((const __m128i*)(w.d.packed + at / 2));
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4), lo = _mm_and_si128(b, low4);
      const __m512 v0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), table);
      const __m512 v1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), table);
      for (uint64_t r = 0; r < m; r++) {
        float* a = acc + r * cols + j;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(v0, xs[r], _mm512_loadu_ps(a)));
        _mm512_storeu_ps(a + 16, _mm512_fmadd_ps(v1, xs[r], _mm512_loadu_ps(a + 16)));
      }
    }
  }
}

// The same, any shape and ISA: each row's chunk dequantized to f32 first.
void accumulate_columns_general(const Quant4& w, uint64_t m, uint64_t n, uint64_t k, uint64_t j0, uint64_t cols,
                                bool bf16, const float* x, float* acc, float* buf) {
  for (uint64_t p = 0; p < k; p++) {
    dequantize_range(w, p * n + j0, p * n + j0 + cols, buf, QLORA_F32);
    for (uint64_t j = 0; j < cols; j++) buf[j] = as_x_dtype(buf[j], bf16);
    for (uint64_t r = 0; r < m; r++) {
      const float xr = x[r * k + p];
      for (uint64_t j = 0; j < cols; j++) acc[r * cols + j] += xr * buf[j];
    }
  }
}

void backward_columns(const Quant4& w, uint64_t m, uint64_t n, uint64_t k, float alpha, bool bf16, const float* x,
                      float beta, void* c, int32_t c_dtype, int isa) {
  constexpr uint64_t kColumns = 512;
  const bool vector = isa == 2 && n % w.d.blocksize == 0 && n % 32 == 0;
  const int64_t chunks = (int64_t)((n + kColumns - 1) / kColumns);
#pragma omp parallel for schedule(static) if (n * k >= kParallelMin)
  for (int64_t t = 0; t < chunks; t++) {
    alignas(64) float acc[kGemvMaxRows * kColumns];
    alignas(64) float buf[kColumns];
    const uint64_t j0 = (uint64_t)t * kColumns, cols = std::min(kColumns, n - j0);
    std::fill(acc, acc + m * cols, 0.0f);
    if (vector) accumulate_columns_avx512(w, m, n, k, j0, cols, bf16, x, acc);
    else accumulate_columns_general(w, m, n, k, j0, cols, bf16, x, acc, buf);
    for (uint64_t r = 0; r < m; r++)
      for (uint64_t j = 0; j < cols; j++)
        store_output(c, c_dtype, r * n + j0 + j, alpha, acc[r * cols + j], beta, nullptr, nullptr, 0);
  }
}

}  // namespace

void gemv4(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
           int32_t x_dtype, const qlora_lora4* lora, float beta, void* c, int32_t c_dtype) {
  const bool bf16 = x_dtype == QLORA_BF16;  // W's values as bf16, as dequantize-then-multiply would use them
  const uint64_t bs = w.d.blocksize;
  const bool whole_blocks = k % bs == 0;
  const Kernel kernel = !whole_blocks ? Kernel::kGeneral
                        : bf16 && bs >= 64 && has_avx512_bf16() ? Kernel::kBf16
                        : has_avx512() ? Kernel::kF32Avx512
                        : has_avx2() ? Kernel::kAvx2
                                     : Kernel::kGeneral;
  if (!trans_w) {
    const RowsF32 xf(x, x_dtype, m, k);
    backward_columns(w, m, n, k, alpha, bf16, xf.get(), beta, c, c_dtype, has_avx512() ? 2 : 0);
    return;
  }
  // Scratch through the ledger, allocated before any output is written: X widened to f32 (or rearranged
  // for the bf16 kernel), the LoRA bypass's h in f32, and the dot products of every row of W.
  Workspace xs, hs, ds;
  const char* fn = kFn;
  const uint64_t x_bytes = kernel == Kernel::kBf16 ? m * k * 2 : bf16 ? m * k * 4 : 0;
  qlora_status s = xs.alloc(x_bytes, fn);
  if (s == QLORA_OK && lora) s = hs.alloc(m * lora->rank * sizeof(float), fn);
  if (s == QLORA_OK) s = ds.alloc(m * n * sizeof(float), fn);
  if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
  const float* xf = (const float*)x;
  const uint16_t* xb = nullptr;
  if (kernel == Kernel::kBf16) {
    arrange_bf16(x, m, k, xs.as<uint16_t>());
    xb = xs.as<uint16_t>();
  } else if (bf16) {
    float* f = xs.as<float>();
    for (uint64_t i = 0; i < m * k; i++) f[i] = load_float(x, x_dtype, i);
    xf = f;
  }
  float* h = lora ? hs.as<float>() : nullptr;
  if (lora) {
    // h = X A^T from X as f32 (widened here when the bf16 kernel runs on the rearranged copy)
    Workspace wide;
    if (kernel == Kernel::kBf16) {
      if ((s = wide.alloc(m * k * sizeof(float), fn)) != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
      float* f = wide.as<float>();
      for (uint64_t i = 0; i < m * k; i++) f[i] = load_float(x, x_dtype, i);
      lora_h(*lora, f, m, k, h);
    } else {
      lora_h(*lora, xf, m, k, h);
    }
  }
  float* dots = ds.as<float>();
  switch (m) {
    case 1: return forward_rows<1>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 2: return forward_rows<2>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 3: return forward_rows<3>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 4: return forward_rows<4>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 5: return forward_rows<5>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 6: return forward_rows<6>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    case 7: return forward_rows<7>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
    default: return forward_rows<8>(w, n, k, alpha, bf16, kernel, xf, xb, lora, h, beta, c, c_dtype, dots);
  }
}

}  // namespace qlora
