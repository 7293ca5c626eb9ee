// cpu/quant.cpp: blockwise 4-bit quantization (NF4, FP4, Int4) and double quantization of the
// constants, on the CPU. gpu/quant.cu mirrors this file; both follow the same arithmetic so that
// their results agree bit for bit.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../common/codes.h"
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "cpu.h"
#include "dequant4.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define QLORA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace qlora {
namespace {

constexpr uint64_t kMaxBlock = 4096;
// Values per task of qlora_dequantize_4bit at most (about 4 tasks per thread below that; multiples of
// 4096, so of every blocksize), and the output size from which it streams its stores.
constexpr uint64_t kDequantChunk = 1ull << 18;
constexpr uint64_t kStreamMinBytes = 32ull << 20;

// Max |x| of f32 values as float bits (integer order = float order for non-negative floats); a
// result >= 0x7f800000 means NaN or Inf is present.
QLORA_CLONES uint32_t absmax_bits_f32(const float* x, uint64_t len) {
  const uint32_t* u = (const uint32_t*)x;
  uint32_t amax = 0;
  for (uint64_t j = 0; j < len; j++) {
    uint32_t a = u[j] & 0x7fffffffu;
    amax = a > amax ? a : amax;
  }
  return amax;
}

// Loads x[0..len) of a 16-bit dtype as f32 and returns max |x| as float bits, as above.
QLORA_CLONES uint32_t load_block(const void* x, int32_t dtype, uint64_t len, float* out) {
  uint32_t amax = 0;
  if (dtype == QLORA_BF16) {
    const uint16_t* h = (const uint16_t*)x;
    for (uint64_t j = 0; j < len; j++) {
      uint32_t u = (uint32_t)h[j] << 16;
      uint32_t a = u & 0x7fffffffu;
      amax = a > amax ? a : amax;
      out[j] = bits_float(u);
    }
  } else {
    const uint16_t* h = (const uint16_t*)x;
    for (uint64_t j = 0; j < len; j++) {
      float v = f16_to_float(h[j]);
      uint32_t a = float_bits(v) & 0x7fffffffu;
      amax = a > amax ? a : amax;
      out[j] = v;
    }
  }
  return amax;
}

// code[j] = number of thresholds below x[j] * inv (monotone types: NF4, Int4).
QLORA_CLONES void codes_monotone(const float* x, uint64_t len, float inv, const float* threshold,
                                 uint8_t* code) {
  for (uint64_t j = 0; j < len; j++) code[j] = 0;
  for (int k = 0; k < 15; k++) {
    float t = threshold[k];
    for (uint64_t j = 0; j < len; j++) code[j] += (uint8_t)(x[j] * inv > t);
  }
}

// Sign-magnitude types (FP4): magnitude index from |x| * inv, then its code, plus 8 when x < 0.
QLORA_CLONES void codes_sign_magnitude(const float* x, uint64_t len, float inv, const Quant4Table& t,
                                       uint8_t* code) {
  for (uint64_t j = 0; j < len; j++) code[j] = 0;
  for (int k = 0; k < t.num_thresholds; k++) {
    float th = t.threshold[k];
    for (uint64_t j = 0; j < len; j++) code[j] += (uint8_t)(std::fabs(x[j] * inv) > th);
  }
  for (uint64_t j = 0; j < len; j++) {
    code[j] = (uint8_t)(t.magnitude_code[code[j]] | (x[j] < 0.0f ? 8 : 0));
  }
}

// AVX-512 version of the two code functions above plus packing, 16 values at a time; len % 16 == 0.
// Same arithmetic (x * inv, strict compares, fabs, sign of x), so the codes are identical.
__attribute__((target("avx512f,avx512bw"))) void codes_packed_avx512(const float* x, uint64_t len, float inv,
                                                                     const Quant4Table& t, uint8_t* packed) {
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i one = _mm512_set1_epi32(1);
  __m512 th[15];
  for (int k = 0; k < t.num_thresholds; k++) th[k] = _mm512_set1_ps(t.threshold[k]);
  const __m512i magnitude_code = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, t.magnitude_code[7], t.magnitude_code[6],
                                                  t.magnitude_code[5], t.magnitude_code[4], t.magnitude_code[3],
                                                  t.magnitude_code[2], t.magnitude_code[1], t.magnitude_code[0]);
  for (uint64_t j = 0; j < len; j += 16) {
    __m512 xv = _mm512_loadu_ps(x + j);
    __m512 v = _mm512_mul_ps(xv, vinv);
    __m512i code = _mm512_setzero_si512();
    if (t.sign_magnitude) {
      __m512 a = _mm512_abs_ps(v);
      for (int k = 0; k < t.num_thresholds; k++)
        code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(a, th[k], _CMP_GT_OQ), code, one);
      code = _mm512_permutexvar_epi32(code, magnitude_code);
      __mmask16 negative = _mm512_cmp_ps_mask(xv, _mm512_setzero_ps(), _CMP_LT_OQ);
      code = _mm512_mask_or_epi32(code, negative, code, _mm512_set1_epi32(8));
    } else {
      for (int k = 0; k < 15; k++)
        code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(v, th[k], _CMP_GT_OQ), code, one);
    }
    // 16 codes -> 8 bytes: pair (c0, c1) -> c0 << 4 | c1, as 32-bit lanes hold one code each.
    __m128i bytes = _mm512_cvtepi32_epi8(code);                       // c0 c1 ... c15
    __m128i hi = _mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x00ff)), 4);  // c0 << 4 in 16-bit lanes
    __m128i lo = _mm_srli_epi16(bytes, 8);                            // c1
    __m128i pairs = _mm_packus_epi16(_mm_or_si128(hi, lo), _mm_setzero_si128());
    _mm_storel_epi64((__m128i*)(packed + j / 2), pairs);
  }
}

// ---- whole blocks of f32 or bf16 in registers ---------------------------------------------------
//
// The code of v = x * inv is the number of thresholds below v (strictly); the thresholds are sorted, so
// a binary search in registers gives the same count: 4 levels (8, 4, 2, 1) over NF4's and Int4's 15
// thresholds, 3 levels over FP4's 7 magnitudes (then its magnitude code, plus 8 when x < 0). Each level
// looks the next threshold up by the index found so far (a permute of a 16- or 8-entry table). Codes are
// packed by pairs, c0 * 16 + c1, with one multiply-add of 16-bit lanes. Identical to codes_packed_avx512
// and the scalar loops: the same x * inv, the same strict comparisons, the same absmax bits.

#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw")))
#define QLORA_AVX2 __attribute__((target("avx2,fma")))

// Thresholds of each search level, by the index found before it: level s compares with t[idx + s - 1].
struct SearchTables {
  float top;           // t[7] (15 thresholds) or t[3] (7)
  float level[3][16];  // 15 thresholds: s = 4, 2, 1 by idx; 7 thresholds: s = 2, 1 by idx (level[2] unused)
  float half[3][8];    // AVX2 (15 thresholds): s = 4, 2, 1 by idx / 2
  int32_t magnitude[8];
  bool sign_magnitude;
  explicit SearchTables(const Quant4Table& t) {
    const int nt = t.num_thresholds, last = nt - 1;
    sign_magnitude = t.sign_magnitude != 0;
    top = t.threshold[nt / 2];
    const int steps[3] = {nt == 15 ? 4 : 2, nt == 15 ? 2 : 1, 1};
    for (int l = 0; l < 3; l++)
      for (int j = 0; j < 16; j++) level[l][j] = t.threshold[std::min(j + steps[l] - 1, last)];
    for (int l = 0; l < 3; l++)
      for (int j = 0; j < 8; j++) half[l][j] = t.threshold[std::min(2 * j + steps[l] - 1, last)];
    for (int j = 0; j < 8; j++) magnitude[j] = t.magnitude_code[j];
  }
};

struct SearchAvx512 {
  __m512 top, t0, t1, t2;
  __m512i magnitude;
  bool sign_magnitude;
  QLORA_AVX512 explicit SearchAvx512(const SearchTables& s)
      : top(_mm512_set1_ps(s.top)),
        t0(_mm512_loadu_ps(s.level[0])),
        t1(_mm512_loadu_ps(s.level[1])),
        t2(_mm512_loadu_ps(s.level[2])),
        magnitude(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)s.magnitude))),
        sign_magnitude(s.sign_magnitude) {}
  // The codes of 16 values x (as f32), scaled by inv (kSign: the table is sign-magnitude).
  template <bool kSign>
  QLORA_AVX512 __m512i codes(__m512 x, __m512 inv) const {
    const __m512 v = _mm512_mul_ps(x, inv);
    if (kSign) {
      const __m512 a = _mm512_abs_ps(v);
      __m512i idx = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(a, top, _CMP_GT_OQ), _mm512_set1_epi32(4));
      idx = _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_permutexvar_ps(idx, t0), _CMP_GT_OQ), idx,
                                 _mm512_set1_epi32(2));
      idx = _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(a, _mm512_permutexvar_ps(idx, t1), _CMP_GT_OQ), idx,
                                 _mm512_set1_epi32(1));
      const __m512i code = _mm512_permutexvar_epi32(idx, magnitude);
      return _mm512_mask_or_epi32(code, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), code,
                                  _mm512_set1_epi32(8));
    }
    __m512i idx = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(v, top, _CMP_GT_OQ), _mm512_set1_epi32(8));
    idx = _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(v, _mm512_permutexvar_ps(idx, t0), _CMP_GT_OQ), idx,
                               _mm512_set1_epi32(4));
    idx = _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(v, _mm512_permutexvar_ps(idx, t1), _CMP_GT_OQ), idx,
                               _mm512_set1_epi32(2));
    return _mm512_mask_or_epi32(idx, _mm512_cmp_ps_mask(v, _mm512_permutexvar_ps(idx, t2), _CMP_GT_OQ), idx,
                                _mm512_set1_epi32(1));
  }
};

// 32 codes (dwords a: values 0-15, b: 16-31) -> 16 bytes, c0 << 4 | c1 per pair.
QLORA_AVX512 inline void pack32_avx512(__m512i a, __m512i b, uint8_t* out) {
  // Per 128-bit lane k: a[4k..4k+3], b[4k..4k+3] as words; pairs summed as c0 * 16 + c1 in dwords: lane k
  // holds byte pairs (2k, 2k+1) of a, then of b; the qword permute orders them.
  const __m512i pairs = _mm512_madd_epi16(_mm512_packus_epi32(a, b), _mm512_set1_epi32(0x00010010));
  const __m512i ordered = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), pairs);
  _mm_storeu_si128((__m128i*)out, _mm512_cvtepi32_epi8(ordered));
}

// 16 values from x (f32 or bf16) as f32.
template <bool kBf16>
QLORA_AVX512 inline __m512 load16_avx512(const void* x, uint64_t j) {
  if (!kBf16) return _mm512_loadu_ps((const float*)x + j);
  const __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)x + j));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Max |x| over len values (a multiple of 32) as f32 bits, as absmax_bits_f32 and load_block.
QLORA_AVX512 inline uint32_t absmax_bits_avx512(const void* x, int32_t dtype, uint64_t len) {
  __m512i m = _mm512_setzero_si512();
  if (dtype == QLORA_F32) {
    const __m512i abs = _mm512_set1_epi32(0x7fffffff);
    for (uint64_t j = 0; j < len; j += 16)
      m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512((const float*)x + j), abs));
    return _mm512_reduce_max_epu32(m);
  }
  const __m512i abs = _mm512_set1_epi16(0x7fff);
  for (uint64_t j = 0; j < len; j += 32)
    m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512((const uint16_t*)x + j), abs));
  m = _mm512_max_epu32(_mm512_and_si512(m, _mm512_set1_epi32(0xffff)), _mm512_srli_epi32(m, 16));
  return _mm512_reduce_max_epu32(m) << 16;
}

template <bool kBf16, bool kSign>
QLORA_AVX512 void quantize_blocks_avx512_t(const void* x, int32_t dtype, uint64_t bs, uint64_t b0, uint64_t b1,
                                         const SearchTables& tables, uint8_t* packed, float* absmax, bool* bad) {
  const SearchAvx512 search(tables);
  const uint64_t esize = dtype_size(dtype);
  // Groups of blocks (up to kMaxBlock values, in L1): every block's absmax and 1 / absmax first, then the
  // codes, so that no block's codes wait on its own reduction and division.
  const uint64_t group = std::max<uint64_t>(1, kMaxBlock / bs);
  float inv_of[kMaxBlock / 32];
  for (uint64_t g0 = b0; g0 < b1; g0 += group) {
    const uint64_t g1 = std::min(b1, g0 + group);
    for (uint64_t b = g0; b < g1; b++) {
      const uint32_t amax_bits = absmax_bits_avx512((const char*)x + b * bs * esize, dtype, bs);
      if (amax_bits >= 0x7f800000u) *bad = true;
      const float amax = bits_float(amax_bits & 0x7fffffffu);
      absmax[b] = amax;
      inv_of[b - g0] = amax > 0.0f ? 1.0f / amax : 0.0f;
    }
    for (uint64_t b = g0; b < g1; b++) {
      const void* xb = (const char*)x + b * bs * esize;
      const __m512 inv = _mm512_set1_ps(inv_of[b - g0]);
      uint8_t* p = packed + b * bs / 2;
      for (uint64_t j = 0; j < bs; j += 32)
        pack32_avx512(search.codes<kSign>(load16_avx512<kBf16>(xb, j), inv),
                      search.codes<kSign>(load16_avx512<kBf16>(xb, j + 16), inv), p + j / 2);
    }
  }
}

// Blocks [b0, b1) of x (whole blocks of bs values, f32 or bf16); *bad when one holds NaN or Inf.
void quantize_blocks_avx512(const void* x, int32_t dtype, uint64_t bs, uint64_t b0, uint64_t b1,
                         const SearchTables& tables, uint8_t* packed, float* absmax, bool* bad) {
  const bool bf16 = dtype == QLORA_BF16, sign = tables.sign_magnitude;
  auto run = bf16 ? (sign ? quantize_blocks_avx512_t<true, true> : quantize_blocks_avx512_t<true, false>)
                  : (sign ? quantize_blocks_avx512_t<false, true> : quantize_blocks_avx512_t<false, false>);
  run(x, dtype, bs, b0, b1, tables, packed, absmax, bad);
}

struct SearchAvx2 {
  __m256 top, t0, t1, t2;
  __m256i magnitude;
  bool sign_magnitude;
  QLORA_AVX2 explicit SearchAvx2(const SearchTables& s)
      : top(_mm256_set1_ps(s.top)),
        magnitude(_mm256_loadu_si256((const __m256i*)s.magnitude)),
        sign_magnitude(s.sign_magnitude) {
    // 7 thresholds: indices 0..7 fit 8 lanes, the 16-entry tables' first halves; 15: the tables by idx / 2.
    t0 = _mm256_loadu_ps(sign_magnitude ? s.level[0] : s.half[0]);
    t1 = _mm256_loadu_ps(sign_magnitude ? s.level[1] : s.half[1]);
    t2 = _mm256_loadu_ps(s.half[2]);
  }
  template <bool kSign>
  QLORA_AVX2 __m256i codes(__m256 x, __m256 inv) const {
    const __m256 v = _mm256_mul_ps(x, inv);
    if (kSign) {
      const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
      __m256i idx = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(a, top, _CMP_GT_OQ)), _mm256_set1_epi32(4));
      __m256i m = _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_permutevar8x32_ps(t0, idx), _CMP_GT_OQ));
      idx = _mm256_or_si256(idx, _mm256_and_si256(m, _mm256_set1_epi32(2)));
      m = _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_permutevar8x32_ps(t1, idx), _CMP_GT_OQ));
      idx = _mm256_sub_epi32(idx, m);
      const __m256i code = _mm256_permutevar8x32_epi32(magnitude, idx);
      const __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
      return _mm256_or_si256(code, _mm256_and_si256(negative, _mm256_set1_epi32(8)));
    }
    // h = idx / 2 while idx is even.
    __m256i h = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, top, _CMP_GT_OQ)), _mm256_set1_epi32(4));
    __m256i m = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(t0, h), _CMP_GT_OQ));
    h = _mm256_or_si256(h, _mm256_and_si256(m, _mm256_set1_epi32(2)));
    m = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(t1, h), _CMP_GT_OQ));
    h = _mm256_or_si256(h, _mm256_and_si256(m, _mm256_set1_epi32(1)));
    m = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_permutevar8x32_ps(t2, h), _CMP_GT_OQ));
    return _mm256_sub_epi32(_mm256_slli_epi32(h, 1), m);
  }
};

// 32 codes (dwords a, b, c, d: values 0-7, 8-15, 16-23, 24-31) -> 16 bytes.
QLORA_AVX2 inline void pack32_avx2(__m256i a, __m256i b, __m256i c, __m256i d, uint8_t* out) {
  // Bytes per lane k: a[4k..4k+3], b[4k..], c[4k..], d[4k..]; pairs as c0 * 16 + c1 in words, back to bytes
  // (per lane: pairs 2k, 2k+1 of a, b, c, d), then lane 0's and lane 1's 16-bit units interleaved.
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x0110));
  const __m256i packed = _mm256_packus_epi16(pairs, pairs);
  const __m128i r = _mm_unpacklo_epi16(_mm256_castsi256_si128(packed), _mm256_extracti128_si256(packed, 1));
  _mm_storeu_si128((__m128i*)out, r);
}

template <bool kBf16>
QLORA_AVX2 inline __m256 load8_avx2(const void* x, uint64_t j) {
  if (!kBf16) return _mm256_loadu_ps((const float*)x + j);
  const __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)x + j));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

QLORA_AVX2 inline uint32_t absmax_bits_avx2(const void* x, int32_t dtype, uint64_t len) {
  __m256i m = _mm256_setzero_si256();
  if (dtype == QLORA_F32) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff);
    for (uint64_t j = 0; j < len; j += 8)
      m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i*)((const float*)x + j)), abs));
  } else {
    const __m256i abs = _mm256_set1_epi16(0x7fff);
    for (uint64_t j = 0; j < len; j += 16)
      m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i*)((const uint16_t*)x + j)), abs));
    const __m256i low = _mm256_and_si256(m, _mm256_set1_epi32(0xffff));
    m = _mm256_slli_epi32(_mm256_max_epu32(low, _mm256_srli_epi32(m, 16)), 16);
  }
  __m128i r = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  r = _mm_max_epu32(r, _mm_shuffle_epi32(r, 0x4e));
  r = _mm_max_epu32(r, _mm_shuffle_epi32(r, 0xb1));
  return (uint32_t)_mm_cvtsi128_si32(r);
}

template <bool kBf16, bool kSign>
QLORA_AVX2 void quantize_blocks_avx2_t(const void* x, int32_t dtype, uint64_t bs, uint64_t b0, uint64_t b1,
                                     const SearchTables& tables, uint8_t* packed, float* absmax, bool* bad) {
  const SearchAvx2 search(tables);
  const uint64_t esize = dtype_size(dtype);
  // Groups of blocks (up to kMaxBlock values, in L1): every block's absmax and 1 / absmax first, then the
  // codes, so that no block's codes wait on its own reduction and division.
  const uint64_t group = std::max<uint64_t>(1, kMaxBlock / bs);
  float inv_of[kMaxBlock / 32];
  for (uint64_t g0 = b0; g0 < b1; g0 += group) {
    const uint64_t g1 = std::min(b1, g0 + group);
    for (uint64_t b = g0; b < g1; b++) {
      const uint32_t amax_bits = absmax_bits_avx2((const char*)x + b * bs * esize, dtype, bs);
      if (amax_bits >= 0x7f800000u) *bad = true;
      const float amax = bits_float(amax_bits & 0x7fffffffu);
      absmax[b] = amax;
      inv_of[b - g0] = amax > 0.0f ? 1.0f / amax : 0.0f;
    }
    for (uint64_t b = g0; b < g1; b++) {
      const void* xb = (const char*)x + b * bs * esize;
      const __m256 inv = _mm256_set1_ps(inv_of[b - g0]);
      uint8_t* p = packed + b * bs / 2;
      for (uint64_t j = 0; j < bs; j += 32)
        pack32_avx2(search.codes<kSign>(load8_avx2<kBf16>(xb, j), inv),
                    search.codes<kSign>(load8_avx2<kBf16>(xb, j + 8), inv),
                    search.codes<kSign>(load8_avx2<kBf16>(xb, j + 16), inv),
                    search.codes<kSign>(load8_avx2<kBf16>(xb, j + 24), inv), p + j / 2);
    }
  }
}

// Blocks [b0, b1) of x (whole blocks of bs values, f32 or bf16); *bad when one holds NaN or Inf.
void quantize_blocks_avx2(const void* x, int32_t dtype, uint64_t bs, uint64_t b0, uint64_t b1,
                         const SearchTables& tables, uint8_t* packed, float* absmax, bool* bad) {
  const bool bf16 = dtype == QLORA_BF16, sign = tables.sign_magnitude;
  auto run = bf16 ? (sign ? quantize_blocks_avx2_t<true, true> : quantize_blocks_avx2_t<true, false>)
                  : (sign ? quantize_blocks_avx2_t<false, true> : quantize_blocks_avx2_t<false, false>);
  run(x, dtype, bs, b0, b1, tables, packed, absmax, bad);
}

// Quantizes one block of len values (len even, or odd for the very last block).
void quantize_block(const void* x, int32_t dtype, uint64_t len, const Quant4Table& t, uint8_t* packed,
                    float* absmax, bool* bad) {
  alignas(64) float buf[kMaxBlock];
  alignas(64) uint8_t code[kMaxBlock + 1];
  const float* xs = (const float*)x;  // f32 is used in place; 16-bit dtypes are widened into buf
  uint32_t amax_bits = dtype == QLORA_F32 ? absmax_bits_f32(xs, len) : load_block(x, dtype, len, buf);
  if (dtype != QLORA_F32) xs = buf;
  if (amax_bits >= 0x7f800000u) {
    *bad = true;
    return;
  }
  float amax = bits_float(amax_bits);
  float inv = amax > 0.0f ? 1.0f / amax : 0.0f;  // an all-zero block quantizes to the zero code
  if (len % 16 == 0 && has_avx512()) {
    codes_packed_avx512(xs, len, inv, t, packed);
    *absmax = amax;
    return;
  }
  if (t.sign_magnitude) codes_sign_magnitude(xs, len, inv, t, code);
  else codes_monotone(xs, len, inv, t.threshold, code);
  code[len] = 0;  // pads an odd tail: its low nibble is 0
  for (uint64_t j = 0; j < len; j += 2) packed[j / 2] = (uint8_t)((code[j] << 4) | code[j + 1]);
  *absmax = amax;
}

// Sum of n floats in the fixed order of codes.h (chunks of kMeanChunk in double, then in order). The sum
// of finite floats is finite in double, so a non-finite sum means a NaN or an Inf among them.
double fixed_order_sum(const float* x, uint64_t n) {
  uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  double* partial = new double[chunks];
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < (int64_t)chunks; c++) {
    uint64_t begin = (uint64_t)c * kMeanChunk, end = std::min(n, begin + kMeanChunk);
    double s = 0.0;
    for (uint64_t i = begin; i < end; i++) s += (double)x[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (uint64_t c = 0; c < chunks; c++) total += partial[c];
  delete[] partial;
  return total;
}

// codes[i] = the code of (absmax[i] - offset) * inv in the dynamic map (the number of its 255 sorted
// midpoints below it, as dynamic_code): 8 halvings, the first ones (steps 128 to 16, or to 32 with 8 lanes)
// by permutes of the midpoints they can reach (midpoint[16j + 15], or [32j + 31]), the last ones by
// gathers; two vectors at a time, so that their gathers overlap. The rest one by one.
// The dynamic map's 255 midpoints arranged for a search in registers (AVX-512): the top nibble hi of the
// code by 4 halvings over midpoint[16j + 15] (top, then upper[] by hi), the low bits by 4 more, each
// level's candidates midpoint[16 hi + r] in 32-entry tables indexed by hi + 16 * (the bit found last):
// a8[j] = midpoint[16j + 7]; b4[j + 16 b8] = midpoint[16j + 8 b8 + 3];
// c2[b8][j + 16 b4] = midpoint[16j + 8 b8 + 4 b4 + 1]; d1[b8][b4][j + 16 b2] = midpoint[16j + 8 b8 + 4 b4 + 2 b2].
struct DynamicSearch {
  alignas(64) float upper[3][16], a8[16], b4[32], c2[2][32], d1[2][2][32];
  float top;
  explicit DynamicSearch(const float* m) {
    top = m[127];
    for (int l = 0; l < 3; l++)
      for (int j = 0; j < 16; j++) upper[l][j] = m[16 * std::min(j + (4 >> l) - 1, 14) + 15];
    for (int j = 0; j < 16; j++) {
      a8[j] = m[16 * j + 7];
      for (int x = 0; x < 2; x++) {
        b4[j + 16 * x] = m[16 * j + 8 * x + 3];
        for (int y = 0; y < 2; y++) {
          c2[x][j + 16 * y] = m[16 * j + 8 * x + 4 * y + 1];
          for (int z = 0; z < 2; z++) d1[x][y][j + 16 * z] = m[16 * j + 8 * x + 4 * y + 2 * z];
        }
      }
    }
  }
};

QLORA_AVX512 inline __m512i dynamic_code16(__m512 v, const DynamicSearch& t) {
  const __m512i sixteen = _mm512_set1_epi32(16);
  __mmask16 m = _mm512_cmp_ps_mask(_mm512_set1_ps(t.top), v, _CMP_LT_OQ);
  __m512i hi = _mm512_maskz_mov_epi32(m, _mm512_set1_epi32(8));
  for (int l = 0; l < 3; l++) {
    m = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(hi, _mm512_load_ps(t.upper[l])), v, _CMP_LT_OQ);
    hi = _mm512_mask_or_epi32(hi, m, hi, _mm512_set1_epi32(4 >> l));
  }
  const __mmask16 m8 = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(hi, _mm512_load_ps(t.a8)), v, _CMP_LT_OQ);
  __m512i at = _mm512_mask_or_epi32(hi, m8, hi, sixteen);
  const __mmask16 m4 = _mm512_cmp_ps_mask(
      _mm512_permutex2var_ps(_mm512_load_ps(t.b4), at, _mm512_load_ps(t.b4 + 16)), v, _CMP_LT_OQ);
  at = _mm512_mask_or_epi32(hi, m4, hi, sixteen);
  const __m512 c = _mm512_mask_blend_ps(
      m8, _mm512_permutex2var_ps(_mm512_load_ps(t.c2[0]), at, _mm512_load_ps(t.c2[0] + 16)),
      _mm512_permutex2var_ps(_mm512_load_ps(t.c2[1]), at, _mm512_load_ps(t.c2[1] + 16)));
  const __mmask16 m2 = _mm512_cmp_ps_mask(c, v, _CMP_LT_OQ);
  at = _mm512_mask_or_epi32(hi, m2, hi, sixteen);
  __m512 d[2];
  for (int x = 0; x < 2; x++)
    d[x] = _mm512_mask_blend_ps(
        m4, _mm512_permutex2var_ps(_mm512_load_ps(t.d1[x][0]), at, _mm512_load_ps(t.d1[x][0] + 16)),
        _mm512_permutex2var_ps(_mm512_load_ps(t.d1[x][1]), at, _mm512_load_ps(t.d1[x][1] + 16)));
  const __mmask16 m1 = _mm512_cmp_ps_mask(_mm512_mask_blend_ps(m8, d[0], d[1]), v, _CMP_LT_OQ);
  __m512i code = _mm512_slli_epi32(hi, 4);
  code = _mm512_mask_or_epi32(code, m8, code, _mm512_set1_epi32(8));
  code = _mm512_mask_or_epi32(code, m4, code, _mm512_set1_epi32(4));
  code = _mm512_mask_or_epi32(code, m2, code, _mm512_set1_epi32(2));
  return _mm512_mask_or_epi32(code, m1, code, _mm512_set1_epi32(1));
}

// Max |absmax[i] - offset| over [0, len), and codes[i] for i < the returned count (a multiple of 16).
QLORA_AVX512 uint64_t dynamic_codes_avx512(const float* absmax, uint64_t len, float offset, const float* midpoint,
                                           uint8_t* codes, float* amax_out) {
  static const DynamicSearch t(midpoint);
  const __m512 off = _mm512_set1_ps(offset);
  const uint64_t whole = len / 16 * 16;
  __m512 m = _mm512_setzero_ps();
  for (uint64_t i = 0; i < whole; i += 16)
    m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_sub_ps(_mm512_loadu_ps(absmax + i), off)));
  float amax = _mm512_reduce_max_ps(m);
  for (uint64_t i = whole; i < len; i++) amax = std::max(amax, std::fabs(absmax[i] - offset));
  *amax_out = amax;
  const __m512 scale = _mm512_set1_ps(amax > 0.0f ? 1.0f / amax : 0.0f);
  for (uint64_t i = 0; i < whole; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(absmax + i), off), scale);
    _mm_storeu_si128((__m128i*)(codes + i), _mm512_cvtepi32_epi8(dynamic_code16(v, t)));
  }
  return whole;
}

QLORA_AVX2 inline __m256i dynamic_code8(__m256 v, __m256 top, const __m256* upper, const float* midpoint) {
  // upper[l][j] = midpoint[32 * min(j + step / 32 - 1, 6) + 31], steps 64, 32; top = midpoint[127].
  __m256i hi = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(top, v, _CMP_LT_OQ)), _mm256_set1_epi32(4));
  for (int l = 0; l < 2; l++) {
    const __m256 below = _mm256_cmp_ps(_mm256_permutevar8x32_ps(upper[l], hi), v, _CMP_LT_OQ);
    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_castps_si256(below), _mm256_set1_epi32(2 >> l)));
  }
  __m256i lo = _mm256_slli_epi32(hi, 5);
  for (int step = 16; step > 0; step >>= 1) {
    const __m256i at = _mm256_add_epi32(lo, _mm256_set1_epi32(step - 1));
    const __m256 below = _mm256_cmp_ps(_mm256_i32gather_ps(midpoint, at, 4), v, _CMP_LT_OQ);
    lo = _mm256_add_epi32(lo, _mm256_and_si256(_mm256_castps_si256(below), _mm256_set1_epi32(step)));
  }
  return lo;
}

QLORA_AVX2 uint64_t dynamic_codes_avx2(const float* absmax, uint64_t len, float offset, const float* midpoint,
                                       uint8_t* codes, float* amax_out) {
  const __m256 off = _mm256_set1_ps(offset), top = _mm256_set1_ps(midpoint[127]);
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const uint64_t whole = len / 16 * 16;
  __m256 m = _mm256_setzero_ps();
  for (uint64_t i = 0; i < whole; i += 8)
    m = _mm256_max_ps(m, _mm256_and_ps(_mm256_sub_ps(_mm256_loadu_ps(absmax + i), off), abs));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float amax = 0.0f;
  for (int l = 0; l < 8; l++) amax = std::max(amax, lanes[l]);
  for (uint64_t i = whole; i < len; i++) amax = std::max(amax, std::fabs(absmax[i] - offset));
  *amax_out = amax;
  const __m256 scale = _mm256_set1_ps(amax > 0.0f ? 1.0f / amax : 0.0f);
  __m256 upper[2];
  for (int l = 0; l < 2; l++) {
    alignas(32) float t[8];
    for (int j = 0; j < 8; j++) t[j] = midpoint[32 * std::min(j + (2 >> l) - 1, 6) + 31];
    upper[l] = _mm256_load_ps(t);
  }
  uint64_t i = 0;
  for (; i < whole; i += 16) {
    const __m256 v0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(absmax + i), off), scale);
    const __m256 v1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(absmax + i + 8), off), scale);
    const __m256i c0 = dynamic_code8(v0, top, upper, midpoint), c1 = dynamic_code8(v1, top, upper, midpoint);
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(c0, c1), 0xd8);  // 16 codes in order
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128((__m128i*)(codes + i), bytes);
  }
  return i;
}

// codes of one nested block (len values): the max |absmax - offset| (its nested absmax, returned), then
// each value's code in the dynamic map; vectors where the CPU has them, the rest one by one.
float dynamic_block(const float* absmax, uint64_t len, float offset, const DynamicMap& map, uint8_t* codes) {
  float amax = 0.0f;
  uint64_t done = has_avx512() ? dynamic_codes_avx512(absmax, len, offset, map.midpoint, codes, &amax)
                  : has_avx2() ? dynamic_codes_avx2(absmax, len, offset, map.midpoint, codes, &amax)
                               : 0;
  if (!has_avx512() && !has_avx2())
    for (uint64_t i = 0; i < len; i++) amax = std::max(amax, std::fabs(absmax[i] - offset));
  const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
  for (uint64_t i = done; i < len; i++) codes[i] = dynamic_code(map, (absmax[i] - offset) * inv);
  return amax;
}

// Index of the first NaN or Inf in a float buffer of any float dtype.
uint64_t first_non_finite(const void* x, int32_t dtype, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    float v = load_float(x, dtype, i);
    if (!(v - v == 0.0f)) return i;
  }
  return n;
}

}  // namespace
}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_quantize_4bit(const void* x, int32_t x_dtype, uint64_t n, int32_t quant_type,
                                           uint64_t blocksize, uint8_t* packed, float* absmax) {
  qlora_status s = check_quantize_4bit(x, x_dtype, n, quant_type, blocksize, packed, absmax);
  if (s != QLORA_OK) return s;
  const Quant4Table& t = *quant4_table(quant_type);
  const SearchTables tables(t);
  const uint64_t esize = dtype_size(x_dtype);
  const uint64_t blocks = (n + blocksize - 1) / blocksize, whole = n / blocksize;
  // Whole blocks of f32 or bf16 in registers (AVX-512, else AVX2), the rest block by block; tasks of
  // about 64K values.
  const int isa = x_dtype == QLORA_F16 ? 0 : has_avx512() ? 2 : has_avx2() ? 1 : 0;
  const uint64_t per_task = std::max<uint64_t>(1, (1ull << 16) / blocksize);
  const int64_t tasks = (int64_t)((blocks + per_task - 1) / per_task);
  bool any_bad = false;
#pragma omp parallel for schedule(dynamic, 4) reduction(|| : any_bad) if (n >= kParallelMin)
  for (int64_t task = 0; task < tasks; task++) {
    const uint64_t b0 = (uint64_t)task * per_task, b1 = std::min(blocks, b0 + per_task);
    const uint64_t v1 = isa ? std::min(b1, whole) : b0;  // the vector kernels' blocks end here
    bool bad = false;
    if (isa == 2 && v1 > b0) quantize_blocks_avx512(x, x_dtype, blocksize, b0, v1, tables, packed, absmax, &bad);
    if (isa == 1 && v1 > b0) quantize_blocks_avx2(x, x_dtype, blocksize, b0, v1, tables, packed, absmax, &bad);
    for (uint64_t b = std::max(b0, v1); b < b1; b++) {
      const uint64_t start = b * blocksize, len = std::min(blocksize, n - start);
      quantize_block((const char*)x + start * esize, x_dtype, len, t, packed + start / 2, absmax + b, &bad);
    }
    any_bad = any_bad || bad;
  }
  if (any_bad) {
    uint64_t i = first_non_finite(x, x_dtype, n);
    return fail(QLORA_ERR_NON_FINITE, "Cannot quantize to 4 bits: x[%llu] is %s (NaN or Inf)",
                (unsigned long long)i, std::isnan(load_float(x, x_dtype, i)) ? "NaN" : "Inf");
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_dequantize_4bit(const qlora_weight4* weight, uint64_t n, void* out, int32_t out_dtype) {
  qlora_status s = check_dequantize_4bit(weight, n, out, out_dtype);
  if (s != QLORA_OK) return s;
  const Quant4 w(*weight);
  const uint64_t esize = dtype_size(out_dtype);
  // Outputs larger than the caches are streamed (they would evict everything and be read back from
  // memory anyway); chunks of whole blocks (kDequantChunk is a multiple of every blocksize) per thread.
  const bool stream = n * esize >= kStreamMinBytes;
  const uint64_t tasks_wanted = 4 * (uint64_t)omp_get_max_threads();
  const uint64_t chunk = std::min(kDequantChunk, (n + tasks_wanted - 1) / tasks_wanted / 4096 * 4096 + 4096);
  const int64_t chunks = (int64_t)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(dynamic, 1) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; c++) {
    const uint64_t begin = (uint64_t)c * chunk, end = std::min(n, begin + chunk);
    void* o = (char*)out + begin * esize;
    if (stream) dequantize_range_streaming(w, begin, end, o, out_dtype);
    else dequantize_range(w, begin, end, o, out_dtype);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                             uint8_t* codes, float* nested_absmax, float* offset_out) {
  qlora_status s = check_double_quantize(absmax, n, nested_blocksize, codes, nested_absmax, offset_out);
  if (s != QLORA_OK) return s;
  const double total = fixed_order_sum(absmax, n);
  if (!std::isfinite(total))
    return fail(QLORA_ERR_NON_FINITE, "Cannot double-quantize constants: absmax[%llu] is not finite",
                (unsigned long long)first_non_finite(absmax, QLORA_F32, n));
  const float offset = (float)(total / (double)n);
  const DynamicMap& map = dynamic_map();
  const int64_t blocks = (int64_t)((n + nested_blocksize - 1) / nested_blocksize);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; b++) {
    uint64_t start = (uint64_t)b * nested_blocksize, end = std::min(n, start + nested_blocksize);
    const float amax = dynamic_block(absmax + start, end - start, offset, map, codes + start);
    nested_absmax[b] = amax;
  }
  *offset_out = offset;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_double_dequantize(const uint8_t* codes, const float* nested_absmax, float offset,
                                               uint64_t n, uint64_t nested_blocksize, float* absmax) {
  qlora_status s = check_double_dequantize(codes, nested_absmax, offset, n, nested_blocksize, absmax);
  if (s != QLORA_OK) return s;
  const float* map = dynamic_map().code;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) {
    float scaled = map[codes[i]] * nested_absmax[(uint64_t)i / nested_blocksize];
    absmax[i] = scaled + offset;
  }
  return QLORA_OK;
}

}  // extern "C"
