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
#include "decode4.h"

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

// Values as f32: f32 as they are, bf16 by its bits (loops over these vectorize).
inline float as_f32(float v) { return v; }
inline float as_f32(uint16_t v) { return bits_float((uint32_t)v << 16); }

// Sum of x[c] * a[c] for c < k, in 16 f32 lanes (lane c % 16) added in order at the end.
template <typename TX, typename TA>
float dot16(const TX* x, const TA* a, uint64_t k) {
  float part[16] = {};
  uint64_t c = 0;
  for (; c + 16 <= k; c += 16)
    for (int l = 0; l < 16; l++) part[l] += as_f32(x[c + l]) * as_f32(a[c + l]);
  for (; c < k; c++) part[c % 16] += as_f32(x[c]) * as_f32(a[c]);
  float sum = 0.0f;
  for (int l = 0; l < 16; l++) sum += part[l];
  return sum;
}

// The LoRA bypass's first product, h = X A^T (m x rank, rounded to the dtype into lora->h), and for the
// epilogue h as f32 as it was stored, times the scaling (hs). X is read as stored (f32 or bf16).
template <typename TX, typename TA>
void lora_h_typed(const qlora_lora4& lora, const TX* x, uint64_t m, uint64_t k, float* hs) {
  const uint64_t r = lora.rank;
  const TA* a = (const TA*)lora.a;
#pragma omp parallel for schedule(static) if (m * r * k >= kParallelMin)
  for (int64_t t = 0; t < (int64_t)(m * r); t++) {
    const uint64_t row = (uint64_t)t / r, q = (uint64_t)t % r;
    store_float(lora.h, lora.dtype, (uint64_t)t, dot16(x + row * k, a + q * k, k));
    hs[t] = lora.scaling * load_float(lora.h, lora.dtype, (uint64_t)t);
  }
}

void lora_h(const qlora_lora4& lora, const void* x, int32_t x_dtype, uint64_t m, uint64_t k, float* hs) {
  const bool xb = x_dtype == QLORA_BF16, ab = lora.dtype == QLORA_BF16;
  if (xb && ab) lora_h_typed<uint16_t, uint16_t>(lora, (const uint16_t*)x, m, k, hs);
  else if (xb) lora_h_typed<uint16_t, float>(lora, (const uint16_t*)x, m, k, hs);
  else if (ab) lora_h_typed<float, uint16_t>(lora, (const float*)x, m, k, hs);
  else lora_h_typed<float, float>(lora, (const float*)x, m, k, hs);
}

// B^T as f32 (rank x n) for the epilogue's loops along n.
void transpose_b(const qlora_lora4& lora, uint64_t n, float* bt) {
  const uint64_t r = lora.rank;
#pragma omp parallel for schedule(static) if (n * r >= kParallelMin)
  for (int64_t j = 0; j < (int64_t)n; j++)
    for (uint64_t q = 0; q < r; q++) bt[q * n + (uint64_t)j] = load_float(lora.b, lora.dtype, (uint64_t)j * r + q);
}

// `len` values of a row of C: alpha * d[j] + beta * c[j] + sum_q hs[q] * bt[q * ldbt + j] (rank terms;
// none without a bypass), rounded once to C's dtype (CT: float, or uint16_t for bf16).
template <typename CT>
void epilogue_row(CT* c, const float* d, uint64_t len, float alpha, float beta, const float* hs, const float* bt,
                  uint64_t rank, uint64_t ldbt) {
  alignas(64) float v[256];
  for (uint64_t a = 0; a < len; a += 256) {
    const uint64_t w = std::min<uint64_t>(256, len - a);
    for (uint64_t j = 0; j < w; j++) v[j] = alpha * d[a + j];
    if (beta != 0.0f)
      for (uint64_t j = 0; j < w; j++) v[j] += beta * as_f32(c[a + j]);
    if (rank) {
      alignas(64) float u[256] = {};
      for (uint64_t q = 0; q < rank; q++)
        for (uint64_t j = 0; j < w; j++) u[j] += hs[q] * bt[q * ldbt + a + j];
      for (uint64_t j = 0; j < w; j++) v[j] += u[j];
    }
    if constexpr (sizeof(CT) == 2) {
      for (uint64_t j = 0; j < w; j++) c[a + j] = float_to_bf16(v[j]);
    } else {
      for (uint64_t j = 0; j < w; j++) c[a + j] = v[j];
    }
  }
}

// Row r of C, `len` values from `at` (an element index into C, dtype c_dtype), from d (and the bypass).
inline void epilogue_at(void* c, int32_t c_dtype, uint64_t at, const float* d, uint64_t len, float alpha, float beta,
                        const float* hs, const float* bt, uint64_t rank, uint64_t ldbt) {
  if (c_dtype == QLORA_BF16) epilogue_row((uint16_t*)c + at, d, len, alpha, beta, hs, bt, rank, ldbt);
  else epilogue_row((float*)c + at, d, len, alpha, beta, hs, bt, rank, ldbt);
}

// C's rows [0, m) from their dot products (dots: m x n, f32) and the bypass (hs: m x rank; bt: rank x n).
void epilogue(void* c, int32_t c_dtype, const float* dots, uint64_t m, uint64_t n, float alpha, float beta,
              const float* hs, const float* bt, uint64_t rank) {
  constexpr uint64_t kChunk = 1024;
  const int64_t chunks = (int64_t)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) collapse(2) if (m * n >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)m; r++)
    for (int64_t t = 0; t < chunks; t++) {
      const uint64_t j0 = (uint64_t)t * kChunk, len = std::min(n - j0, kChunk);
      epilogue_at(c, c_dtype, (uint64_t)r * n + j0, dots + (uint64_t)r * n + j0, len, alpha, beta,
                  rank ? hs + (uint64_t)r * rank : nullptr, rank ? bt + j0 : nullptr, rank, n);
    }
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

// A value of W as X's dtype would hold it: bf16 rounding for bf16 X.
inline float as_x_dtype(float v, bool bf16) { return bf16 ? bf16_to_float(float_to_bf16(v)) : v; }

// ---- trans_w = 1: the kernels, each over blocks [b0, b1) of R consecutive rows of W ------------------
// Values of K per tile: the dot products of a row add up tile by tile (partial sums in `dots`). 16384
// values hold all of k for every LLaMA-2 shape, so each row of W streams whole: tiles of 1024 (X's tile
// in L1 for every row of W) ran 0.75-0.95x as fast with W coming from memory, as in a decode step (Zen 5,
// 2 threads, 7B's projections), the short runs of each row defeating the prefetcher. A bf16 X of 16384
// values, arranged, is 32 KiB: still in L1.
constexpr uint64_t kTileValues = 16384;
constexpr int kMaxGroup = 8;  // rows of W per kernel call, at most

// dots_bf16's X, arranged by arrange_quads: per 128 values (rows padded with zeros to a multiple of 128),
// four vectors of 32 holding the values 4i + kQuadOffset[t], the order in which the kernel decodes them.
constexpr int kQuadOffset[4] = {1, 0, 3, 2};
constexpr uint64_t quads_ld(uint64_t k) { return (k + 127) / 128 * 128; }
// The scales of a tile's blocks for one row of W, decoded before the kernel runs (blocks of at least 32
// values); a kernel over R rows reads R of them.
using TileScales = float[kTileValues / 32];

// A kernel adds, for every row r of X and row j0 + q of W, the dot product of the values of the blocks
// [b0, b1) of that row of W with the matching values of x[r], into out[r][q].
//
// Each kernel asks for the same bytes of the next group of R rows while it reads a block (a thread's groups
// are consecutive under the static schedule, and W's rows are contiguous): one row of a 7B projection is
// only 2-5.5 KiB of codes, too short a stream for the hardware prefetcher to run ahead of, and with W
// coming from memory the NF4 GEMV went from 22-28 to 31-36 GB/s (2 threads, Zen 5; prefetching 512 bytes
// ahead in the same row gained nothing). A prefetch past the end of W is harmless (it never faults).
inline void prefetch_next_group(const uint8_t* p, int rows, uint64_t row_bytes) {
  _mm_prefetch((const char*)p + (uint64_t)rows * row_bytes, _MM_HINT_T0);
}

// bf16 X, AVX-512 BF16: W decoded to bf16 by one 16-bit lookup per value (vpermw) from the block's
// scaled table rounded to bf16 (the values dequantize_range gives as bf16, bit for bit), then vdpbf16ps
// (exact products of bf16 values, f32 sums). Blocks of at least 64 values; k a multiple of 64.
//
// 128 values a step, the 64 bytes of their codes loaded as they are: 16-bit lane i holds bytes 2i and
// 2i + 1, that is values 4i .. 4i + 3 (high nibble first), and shifts by 0, 4, 8 and 12 bring each of the
// four nibbles to the lane's low bits, where vpermw reads an index (its low 5 bits). The index's bit 4
// picks the table's half: with blocks of 64, lanes 16-31 are the second block's, whose table fills the
// upper half (one vcvtne2ps2bf16 rounds both blocks' tables), so one vpternlogd per index keeps the
// nibble and sets that bit. X comes rearranged to match (arrange_quads). Per 128 values: 4 lookups and one
// conversion on the shuffle pipes, against 8 by a byte widening (vpmovzxbw) per 64 values and a table per
// block (measured on Zen 5, qlora_bench's 8192 x 8192 GEMV at one token, three rounds alternating the two
// libraries on a busy machine: 1,290-1,325 us against 1,361-1,456).
//
// Per step, the R rows of W are decoded first, then each row of X loads its four vectors once for all R.
// A last step of 64 values (k an odd multiple of 64) loads half the bytes; the other half's lanes look up
// zero codes, multiplied by X's zero padding.
template <int M, int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dots_bf16(const Quant4& w, uint64_t k, uint64_t j0,
                                                                      uint64_t b0, uint64_t b1, const TileScales* sc,
                                                                      const uint16_t* xb, uint64_t ldb,
                                                                      float (&out)[M][R]) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  const __m512i low4 = _mm512_set1_epi16(0x0f);
  const uint64_t bs = w.d.blocksize, v0 = b0 * bs, v1 = b1 * bs;
  // Bit 4 of lanes 16-31: the second block's half of the table (blocks of 64; else both halves are equal).
  const __m512i upper = _mm512_maskz_set1_epi16(0xffff0000u, 0x10);
  __m512 acc[M][R];
#pragma GCC unroll 16
  for (int r = 0; r < M; r++)
#pragma GCC unroll 16
    for (int q = 0; q < R; q++) acc[r][q] = _mm512_setzero_ps();
  for (uint64_t v = v0; v < v1; v += 128) {
    const bool half = v + 64 == v1;
    const uint64_t ba = (v - v0) / bs, bb = half ? ba : (v + 64 - v0) / bs;
    __m512i idx[R][4], table[R];
#pragma GCC unroll 16
    for (int q = 0; q < R; q++) {
      table[q] = bf16_table2(codes, sc[q][ba], sc[q][bb]);
      const uint8_t* p = w.d.packed + ((j0 + q) * k + v) / 2;
      prefetch_next_group(p, R, k / 2);
      const __m512i bytes = half ? _mm512_maskz_loadu_epi8(0xffffffffull, p) : _mm512_loadu_si512((const void*)p);
      idx[q][0] = _mm512_ternarylogic_epi32(bytes, low4, upper, 0xea);  // (a & b) | c: value 4i + 1
      idx[q][1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(bytes, 4), low4, upper, 0xea);   // 4i
      idx[q][2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(bytes, 8), low4, upper, 0xea);   // 4i + 3
      idx[q][3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(bytes, 12), low4, upper, 0xea);  // 4i + 2
    }
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
      __m512bh wv[R];
#pragma GCC unroll 16
      for (int q = 0; q < R; q++) wv[q] = (__m512bh)_mm512_permutexvar_epi16(idx[q][t], table[q]);
#pragma GCC unroll 16
      for (int r = 0; r < M; r++) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void*)(xb + (uint64_t)r * ldb + v + 32 * t));
#pragma GCC unroll 16
        for (int q = 0; q < R; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], wv[q], xv);
      }
    }
  }
  for (int r = 0; r < M; r++)
    for (int q = 0; q < R; q++) out[r][q] += sum16(acc[r][q]);
}

// f32 X, AVX-512: the scaled f32 table looked up with vpermps, 32 values per 16 bytes, FMA into X.
template <int M, int R>
__attribute__((target("avx512f,avx512bw"))) void dots_f32_avx512(const Quant4& w, uint64_t k, uint64_t j0, uint64_t b0,
                                                                  uint64_t b1, const TileScales* sc, const float* x,
                                                                  float (&out)[M][R]) {
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
      table[q] = _mm512_mul_ps(codes, _mm512_set1_ps(sc[q][blk - b0]));
      p[q] = w.d.packed + row_block * (bs / 2);
      prefetch_next_group(p[q], R, blocks * (bs / 2));
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
                                                   const TileScales* sc, bool bf16, const float* x,
                                                   float (&out)[M][R]) {
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
      const float scale = sc[q][blk - b0];
      tlo[q] = scaled_table_avx2(codes_lo, scale, bf16);
      thi[q] = scaled_table_avx2(codes_hi, scale, bf16);
      p[q] = w.d.packed + row_block * (bs / 2);
      prefetch_next_group(p[q], R, blocks * (bs / 2));
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

// ---- trans_w = 1: the driver ---------------------------------------------------------------------------
// Rows of W per kernel call (R) for M rows of X, so that the accumulators (M * R vectors) and the tables
// fit the 32 vector registers of AVX-512, or AVX2's 16: each vector of X loaded serves R rows of W.
template <int M>
constexpr int rows_avx512() {
  return M == 1 ? 8 : M == 2 ? 6 : M <= 4 ? 4 : 2;
}
template <int M>
constexpr int rows_avx2() {
  return M == 1 ? 2 : 1;
}

enum class Kernel { kBf16, kF32Avx512, kAvx2, kGeneral };

// One kernel call: rows [j0, j0 + G) of W over blocks [b0, b1), added into part.
template <int M, int G>
void dots_group(Kernel kernel, const Quant4& w, uint64_t k, uint64_t j0, uint64_t b0, uint64_t b1,
                const TileScales* sc, bool bf16, const float* x, const uint16_t* xb, float (&part)[M][G]) {
  if (kernel == Kernel::kBf16) dots_bf16<M, G>(w, k, j0, b0, b1, sc, xb, quads_ld(k), part);
  else if (kernel == Kernel::kF32Avx512) dots_f32_avx512<M, G>(w, k, j0, b0, b1, sc, x, part);
  else dots_avx2<M, G>(w, k, j0, b0, b1, sc, bf16, x, part);
}

// dots (M x n, f32) = the rows of X times every row of W.
template <int M>
void forward_rows(const Quant4& w, uint64_t n, uint64_t k, bool bf16, Kernel kernel, const float* x,
                  const uint16_t* xb, float* dots) {
  constexpr int R = rows_avx512<M>(), R2 = rows_avx2<M>();
  static_assert(R <= kMaxGroup && R2 <= kMaxGroup, "a group has at most kMaxGroup rows of scales");
  const int group = kernel == Kernel::kAvx2 ? R2 : kernel == Kernel::kGeneral ? 1 : R;
  const uint64_t bs = w.d.blocksize, blocks = k / bs;
  const uint64_t tile_blocks = std::max<uint64_t>(1, kTileValues / bs);
  const int64_t groups = (int64_t)((n + group - 1) / group);
  std::fill(dots, dots + (uint64_t)M * n, 0.0f);
#pragma omp parallel if (n * k >= kParallelMin)
  {
    TileScales sc[kMaxGroup];
    for (uint64_t b0 = 0; b0 < (kernel == Kernel::kGeneral ? 1 : blocks); b0 += tile_blocks) {
      const uint64_t b1 = std::min(blocks, b0 + tile_blocks);
#pragma omp for schedule(static) nowait
      for (int64_t g = 0; g < groups; g++) {  // the same rows for each thread at every tile
        const uint64_t j0 = (uint64_t)g * group;
        const int rows = (int)std::min<uint64_t>(group, n - j0);
        float part[M][R > R2 ? R : R2] = {};
        if (kernel == Kernel::kGeneral) {
          for (int q = 0; q < rows; q++) {
            float col[kGemvMaxRows];
            dots_general(w, M, k, j0 + q, bf16, x, col);
            for (int r = 0; r < M; r++) part[r][q] = col[r];
          }
        } else {
          for (int q = 0; q < rows; q++) block_scales(w, (j0 + q) * blocks + b0, b1 - b0, sc[q]);
          if (rows < group) {  // the last rows of W, one at a time
            for (int q = 0; q < rows; q++) {
              float one[M][1] = {};
              dots_group<M, 1>(kernel, w, k, j0 + q, b0, b1, sc + q, bf16, x, xb, one);
              for (int r = 0; r < M; r++) part[r][q] = one[r][0];
            }
          } else if (group == R) {
            float p[M][R] = {};
            dots_group<M, R>(kernel, w, k, j0, b0, b1, sc, bf16, x, xb, p);
            for (int r = 0; r < M; r++)
              for (int q = 0; q < R; q++) part[r][q] = p[r][q];
          } else {
            float p[M][R2] = {};
            dots_group<M, R2>(kernel, w, k, j0, b0, b1, sc, bf16, x, xb, p);
            for (int r = 0; r < M; r++)
              for (int q = 0; q < R2; q++) part[r][q] = p[r][q];
          }
        }
        for (int r = 0; r < M; r++)
          for (int q = 0; q < rows; q++) dots[(uint64_t)r * n + j0 + q] += part[r][q];
      }
    }
  }
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
      epilogue_at(c, c_dtype, r * n + j0, acc + r * cols, cols, alpha, beta, nullptr, nullptr, 0, 0);
  }
}

// X's rows (bf16, k values each) into xq as dots_bf16 reads them (kQuadOffset), rows quads_ld(k) apart.
__attribute__((target("avx512f,avx512bw"))) void arrange_quads(const uint16_t* x, uint64_t rows, uint64_t k,
                                                                uint16_t* xq) {
  const uint64_t ld = quads_ld(k);
#pragma omp parallel for schedule(static) if (rows * k >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++) {
    const uint16_t* xr = x + (uint64_t)r * k;
    uint16_t* out = xq + (uint64_t)r * ld;
    for (uint64_t g = 0; g < ld; g += 128)
      for (int t = 0; t < 4; t++)
        for (int i = 0; i < 32; i++) {
          const uint64_t c = g + 4 * i + (uint64_t)kQuadOffset[t];
          out[g + 32 * t + i] = c < k ? xr[c] : 0;
        }
  }
}

}  // namespace

uint64_t gemv4_scratch_bytes(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, int32_t x_dtype, uint64_t rank) {
  const uint64_t x = x_dtype == QLORA_BF16 ? 4 : 0;  // per value of X: widened to f32 (or rearranged bf16)
  if (!trans_w) return x * m * k;
  const uint64_t rows = std::min(m, kGemvMaxRows);
  return x * rows * k + 4 * rows * n + 4 * (m + n) * rank;
}

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
  // Scratch through the ledger (gemv4_scratch_bytes), allocated before any output is written: a chunk of
  // up to kGemvMaxRows rows of X widened to f32 (or rearranged for the bf16 kernel, in half of it), the
  // dot products of those rows with every row of W, and for the bypass h (times the scaling) and B^T in f32.
  const uint64_t rows = std::min(m, kGemvMaxRows), rank = lora ? lora->rank : 0;
  Workspace xs, ds, hs, bts;
  const char* fn = kFn;
  qlora_status s = xs.alloc(bf16 ? rows * k * 4 : 0, fn);
  if (s == QLORA_OK) s = ds.alloc(rows * n * sizeof(float), fn);
  if (s == QLORA_OK) s = hs.alloc(m * rank * sizeof(float), fn);
  if (s == QLORA_OK) s = bts.alloc(n * rank * sizeof(float), fn);
  if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
  if (lora) {
    lora_h(*lora, x, x_dtype, m, k, hs.as<float>());
    transpose_b(*lora, n, bts.as<float>());
  }
  const uint64_t x_size = dtype_size(x_dtype), c_size = dtype_size(c_dtype);
  float* dots = ds.as<float>();
  // Chunks of rows of X, each one pass over W (decoded once per chunk, in registers).
  for (uint64_t r0 = 0; r0 < m; r0 += rows) {
    const uint64_t mc = std::min(rows, m - r0);
    const void* xc = (const char*)x + r0 * k * x_size;
    const float* xf = (const float*)xc;
    const uint16_t* xb = nullptr;
    if (kernel == Kernel::kBf16) {
      arrange_quads((const uint16_t*)xc, mc, k, xs.as<uint16_t>());
      xb = xs.as<uint16_t>();
    } else if (bf16) {
      float* f = xs.as<float>();
      for (uint64_t i = 0; i < mc * k; i++) f[i] = load_float(xc, x_dtype, i);
      xf = f;
    }
    switch (mc) {
      case 1: forward_rows<1>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 2: forward_rows<2>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 3: forward_rows<3>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 4: forward_rows<4>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 5: forward_rows<5>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 6: forward_rows<6>(w, n, k, bf16, kernel, xf, xb, dots); break;
      case 7: forward_rows<7>(w, n, k, bf16, kernel, xf, xb, dots); break;
      default: forward_rows<8>(w, n, k, bf16, kernel, xf, xb, dots); break;
    }
    epilogue((char*)c + r0 * n * c_size, c_dtype, dots, mc, n, alpha, beta, lora ? hs.as<float>() + r0 * rank : nullptr,
             bts.as<float>(), rank);
  }
}

}  // namespace qlora
