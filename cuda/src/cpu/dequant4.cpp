// cpu/dequant4.cpp: the 4-bit decoder of dequant4.h, one loop over the blocks of a range per ISA.
//
// Each block's 16 codes are multiplied by its scale in registers (one f32 multiply per code, as the
// scalar value(i)), rounded once to the output dtype, and every packed byte is then two table lookups:
//   AVX-512 f32:  vpermps on 16 dword indices made from 8 bytes (index 2k = byte >> 4, 2k+1 = byte; vpermps
//                 reads the low 4 bits only);
//   AVX-512 16-bit: vpermw on 32 word indices made from 16 bytes (the same trick, the 16-entry table
//                 repeated in the upper half since vpermw reads 5 bits);
//   AVX2 f32:     two vpermps (codes 0-7, 8-15) and a blend on bit 3;
//   AVX2 16-bit:  vpshufb of the low and high bytes of the 16-bit table, interleaved;
//   portable:     a scaled table per block, two lookups per byte.
// Every path gives the bits of store_float(table[c] * scale) (the scalar path of value(i)).
#include "dequant4.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "../common/half.h"
#include "../common/status.h"
#include "cpu.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw")))
#define QLORA_AVX2 __attribute__((target("avx2,fma")))

namespace qlora {
namespace {

// Whether the vector paths may build this scale's table: a non-finite scale (possible only from
// extreme double-quantized constants) goes value by value, where NaN is quieted as float_to_bf16 does.
inline bool finite_scale(float s) { return std::fabs(s) <= 3.4028234663852886e38f; }

// ---- portable ----------------------------------------------------------------------------------

// Bytes [0, nbytes) of one block with its scaled table, value by value.
void block_scalar(const uint8_t* p, uint64_t nbytes, float scale, const float* table, void* out, int32_t dtype,
                  uint64_t at) {
  float t[16];
  for (int c = 0; c < 16; c++) t[c] = table[c] * scale;
  if (dtype == QLORA_F32) {
    float* o = (float*)out + at;
    for (uint64_t j = 0; j < nbytes; j++) {
      o[2 * j] = t[p[j] >> 4];
      o[2 * j + 1] = t[p[j] & 15];
    }
    return;
  }
  uint16_t h[16];
  for (int c = 0; c < 16; c++) h[c] = dtype == QLORA_BF16 ? float_to_bf16(t[c]) : float_to_f16(t[c]);
  uint16_t* o = (uint16_t*)out + at;
  for (uint64_t j = 0; j < nbytes; j++) {
    o[2 * j] = h[p[j] >> 4];
    o[2 * j + 1] = h[p[j] & 15];
  }
}

// Values [i0, i1) of w (both even) into out[0, i1 - i0).
void pairs_scalar(const Quant4& w, uint64_t i0, uint64_t i1, void* out, int32_t dtype) {
  for (uint64_t i = i0; i < i1;) {
    const uint64_t b = i >> w.block_shift, stop = std::min(i1, (b + 1) << w.block_shift);
    block_scalar(w.d.packed + i / 2, (stop - i) / 2, w.scale(b), w.table, out, dtype, i - i0);
    i = stop;
  }
}

// ---- AVX-512 ------------------------------------------------------------------------------------

// The 16 scaled codes rounded to bf16 (nearest even, as float_to_bf16 for finite values) or to f16 (by
// float_to_f16), in both 256-bit halves.
QLORA_AVX512 inline __m512i table16_avx512(__m512 codes, float scale, int32_t dtype) {
  const __m512 scaled = _mm512_mul_ps(codes, _mm512_set1_ps(scale));
  __m256i t;
  if (dtype == QLORA_BF16) {
    __m512i u = _mm512_castps_si512(scaled);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    t = _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
  } else {
    alignas(64) float f[16];
    alignas(32) uint16_t h[16];
    _mm512_store_ps(f, scaled);
    for (int c = 0; c < 16; c++) h[c] = float_to_f16(f[c]);
    t = _mm256_load_si256((const __m256i*)h);
  }
  return _mm512_broadcast_i64x4(t);
}

template <bool kStream>
QLORA_AVX512 inline void store512(void* p, __m512i v) {
  if (kStream) _mm512_stream_si512((__m512i*)p, v);
  else _mm512_storeu_si512(p, v);
}

// Values [i0, i1) of w (both even) into out[0, i1 - i0) as f32; streaming stores need out 64-byte aligned
// and i0 % 32 == 0 (every 16-byte step then starts on a 128-byte boundary: blocks are multiples of 32).
template <bool kStream>
QLORA_AVX512 void pairs_avx512_f32(const Quant4& w, uint64_t i0, uint64_t i1, float* out) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  for (uint64_t i = i0; i < i1;) {
    const uint64_t b = i >> w.block_shift, stop = std::min(i1, (b + 1) << w.block_shift);
    const uint64_t nbytes = (stop - i) / 2;
    const uint8_t* p = w.d.packed + i / 2;
    float* o = out + (i - i0);
    const float scale = w.scale(b);
    if (!finite_scale(scale)) {
      block_scalar(p, nbytes, scale, w.table, o, QLORA_F32, 0);
      i = stop;
      continue;
    }
    const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(scale));
    uint64_t j = 0;
    for (; j + 16 <= nbytes; j += 16) {
      const __m512i d0 = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i*)(p + j)));
      const __m512i d1 = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i*)(p + j + 8)));
      const __m512i x0 = _mm512_or_si512(_mm512_srli_epi64(d0, 4), _mm512_slli_epi64(d0, 32));
      const __m512i x1 = _mm512_or_si512(_mm512_srli_epi64(d1, 4), _mm512_slli_epi64(d1, 32));
      store512<kStream>(o + 2 * j, _mm512_castps_si512(_mm512_permutexvar_ps(x0, t)));
      store512<kStream>(o + 2 * j + 16, _mm512_castps_si512(_mm512_permutexvar_ps(x1, t)));
    }
    if (j < nbytes) {  // the end of a range inside a block
      alignas(64) float f[16];
      _mm512_store_ps(f, t);
      for (; j < nbytes; j++) {
        o[2 * j] = f[p[j] >> 4];
        o[2 * j + 1] = f[p[j] & 15];
      }
    }
    i = stop;
  }
  if (kStream) _mm_sfence();
}

// The same as bf16 or f16.
template <bool kStream>
QLORA_AVX512 void pairs_avx512_16(const Quant4& w, uint64_t i0, uint64_t i1, uint16_t* out, int32_t dtype) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  for (uint64_t i = i0; i < i1;) {
    const uint64_t b = i >> w.block_shift, stop = std::min(i1, (b + 1) << w.block_shift);
    const uint64_t nbytes = (stop - i) / 2;
    const uint8_t* p = w.d.packed + i / 2;
    uint16_t* o = out + (i - i0);
    const float scale = w.scale(b);
    if (!finite_scale(scale)) {
      block_scalar(p, nbytes, scale, w.table, o, dtype, 0);
      i = stop;
      continue;
    }
    const __m512i t = table16_avx512(codes, scale, dtype);
    uint64_t j = 0;
    for (; j + 16 <= nbytes; j += 16) {
      const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + j)));
      const __m512i x = _mm512_or_si512(_mm512_srli_epi32(d, 4), _mm512_slli_epi32(d, 16));
      store512<kStream>(o + 2 * j, _mm512_permutexvar_epi16(x, t));
    }
    if (j < nbytes) {
      alignas(64) uint16_t h[32];
      _mm512_store_si512((__m512i*)h, t);
      for (; j < nbytes; j++) {
        o[2 * j] = h[p[j] >> 4];
        o[2 * j + 1] = h[p[j] & 15];
      }
    }
    i = stop;
  }
  if (kStream) _mm_sfence();
}

// ---- AVX2 ---------------------------------------------------------------------------------------

template <bool kStream>
QLORA_AVX2 inline void store256(void* p, __m256i v) {
  if (kStream) _mm256_stream_si256((__m256i*)p, v);
  else _mm256_storeu_si256((__m256i*)p, v);
}

template <bool kStream>
QLORA_AVX2 void pairs_avx2_f32(const Quant4& w, uint64_t i0, uint64_t i1, float* out) {
  const __m256 codes_lo = _mm256_loadu_ps(w.table), codes_hi = _mm256_loadu_ps(w.table + 8);
  for (uint64_t i = i0; i < i1;) {
    const uint64_t b = i >> w.block_shift, stop = std::min(i1, (b + 1) << w.block_shift);
    const uint64_t nbytes = (stop - i) / 2;
    const uint8_t* p = w.d.packed + i / 2;
    float* o = out + (i - i0);
    const float scale = w.scale(b);
    if (!finite_scale(scale)) {
      block_scalar(p, nbytes, scale, w.table, o, QLORA_F32, 0);
      i = stop;
      continue;
    }
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 t_lo = _mm256_mul_ps(codes_lo, s), t_hi = _mm256_mul_ps(codes_hi, s);
    uint64_t j = 0;
    for (; j + 16 <= nbytes; j += 16) {
      for (int q = 0; q < 4; q++) {  // 4 bytes -> 8 values
        int32_t four;
        __builtin_memcpy(&four, p + j + 4 * q, 4);
        const __m256i d = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(four));
        const __m256i x = _mm256_or_si256(_mm256_srli_epi64(d, 4), _mm256_slli_epi64(d, 32));
        const __m256 lo = _mm256_permutevar8x32_ps(t_lo, x), hi = _mm256_permutevar8x32_ps(t_hi, x);
        const __m256 v = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(x, 28)));
        store256<kStream>(o + 2 * j + 8 * q, _mm256_castps_si256(v));
      }
    }
    if (j < nbytes) {
      alignas(32) float f[16];
      _mm256_store_ps(f, t_lo);
      _mm256_store_ps(f + 8, t_hi);
      for (; j < nbytes; j++) {
        o[2 * j] = f[p[j] >> 4];
        o[2 * j + 1] = f[p[j] & 15];
      }
    }
    i = stop;
  }
  if (kStream) _mm_sfence();
}

// The 16-bit table of a block split into its low bytes (lo) and high bytes (hi), each in both lanes.
QLORA_AVX2 inline void table16_avx2(__m256 codes_lo, __m256 codes_hi, float scale, int32_t dtype, __m256i& lo,
                                    __m256i& hi) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256 f0 = _mm256_mul_ps(codes_lo, s), f1 = _mm256_mul_ps(codes_hi, s);
  __m256i words;  // the 16 values, in order
  if (dtype == QLORA_BF16) {
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    __m256i u0 = _mm256_castps_si256(f0), u1 = _mm256_castps_si256(f1);
    u0 = _mm256_add_epi32(u0, _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 16), one), bias));
    u1 = _mm256_add_epi32(u1, _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 16), one), bias));
    u0 = _mm256_srli_epi32(u0, 16);
    u1 = _mm256_srli_epi32(u1, 16);
    // packus: lane 0 = values 0-3, 8-11; lane 1 = 4-7, 12-15; the qword permute puts them in order.
    words = _mm256_permute4x64_epi64(_mm256_packus_epi32(u0, u1), 0xd8);
  } else {
    alignas(32) float f[16];
    alignas(32) uint16_t h[16];
    _mm256_store_ps(f, f0);
    _mm256_store_ps(f + 8, f1);
    for (int c = 0; c < 16; c++) h[c] = float_to_f16(f[c]);
    words = _mm256_load_si256((const __m256i*)h);
  }
  // Per lane: the 8 low bytes, then the 8 high bytes; then lane 0's and lane 1's halves gathered.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                         14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i bytes = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(words, split), 0xd8);  // lo 0-15, hi 0-15
  lo = _mm256_permute2x128_si256(bytes, bytes, 0x00);
  hi = _mm256_permute2x128_si256(bytes, bytes, 0x11);
}

template <bool kStream>
QLORA_AVX2 void pairs_avx2_16(const Quant4& w, uint64_t i0, uint64_t i1, uint16_t* out, int32_t dtype) {
  const __m256 codes_lo = _mm256_loadu_ps(w.table), codes_hi = _mm256_loadu_ps(w.table + 8);
  const __m256i low_nibble_hi_byte = _mm256_set1_epi16(0x0f00);
  for (uint64_t i = i0; i < i1;) {
    const uint64_t b = i >> w.block_shift, stop = std::min(i1, (b + 1) << w.block_shift);
    const uint64_t nbytes = (stop - i) / 2;
    const uint8_t* p = w.d.packed + i / 2;
    uint16_t* o = out + (i - i0);
    const float scale = w.scale(b);
    if (!finite_scale(scale)) {
      block_scalar(p, nbytes, scale, w.table, o, dtype, 0);
      i = stop;
      continue;
    }
    __m256i t_lo, t_hi;
    table16_avx2(codes_lo, codes_hi, scale, dtype, t_lo, t_hi);
    uint64_t j = 0;
    for (; j + 16 <= nbytes; j += 16) {
      // Word k = byte k; as bytes: 2k = byte >> 4, 2k + 1 = byte & 15: the 32 codes in order.
      const __m256i d = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(p + j)));
      const __m256i x =
          _mm256_or_si256(_mm256_srli_epi16(d, 4), _mm256_and_si256(_mm256_slli_epi16(d, 8), low_nibble_hi_byte));
      const __m256i l = _mm256_shuffle_epi8(t_lo, x), h = _mm256_shuffle_epi8(t_hi, x);
      const __m256i a = _mm256_unpacklo_epi8(l, h), c = _mm256_unpackhi_epi8(l, h);  // 0-7 16-23, 8-15 24-31
      store256<kStream>(o + 2 * j, _mm256_permute2x128_si256(a, c, 0x20));
      store256<kStream>(o + 2 * j + 16, _mm256_permute2x128_si256(a, c, 0x31));
    }
    if (j < nbytes) block_scalar(p + j, nbytes - j, scale, w.table, o + 2 * j, dtype, 0);
    i = stop;
  }
  if (kStream) _mm_sfence();
}

// ---- dispatch -----------------------------------------------------------------------------------

// Values [i0, i1) of w, both even, into out[0, i1 - i0).
template <bool kStream>
void pairs(const Quant4& w, uint64_t i0, uint64_t i1, void* out, int32_t dtype) {
  if (has_avx512()) {
    if (dtype == QLORA_F32) pairs_avx512_f32<kStream>(w, i0, i1, (float*)out);
    else pairs_avx512_16<kStream>(w, i0, i1, (uint16_t*)out, dtype);
  } else if (has_avx2()) {
    if (dtype == QLORA_F32) pairs_avx2_f32<kStream>(w, i0, i1, (float*)out);
    else pairs_avx2_16<kStream>(w, i0, i1, (uint16_t*)out, dtype);
  } else {
    pairs_scalar(w, i0, i1, out, dtype);
  }
}

template <bool kStream>
void range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype) {
  if (begin >= end) return;
  uint64_t i = begin;
  if (i & 1) store_float(out, dtype, 0, w.value(i++));
  const uint64_t even_end = end & ~1ull, esize = dtype_size(dtype);
  if (even_end > i) pairs<kStream>(w, i, even_end, (char*)out + (i - begin) * esize, dtype);
  if ((end & 1) && end - 1 >= i) store_float(out, dtype, end - 1 - begin, w.value(end - 1));
}

}  // namespace

void dequantize_bytes(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                      int32_t dtype) {
  // One block of scale amax, as a plain weight of one block.
  qlora_weight4 d{};
  d.packed = packed;
  d.absmax = &amax;
  d.blocksize = 1ull << 62;
  Quant4 w(d);
  w.table = table;
  pairs<false>(w, 0, 2 * nbytes, out, dtype);
}

void dequantize_range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype) {
  range<false>(w, begin, end, out, dtype);
}

void dequantize_range_streaming(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype) {
  if ((uintptr_t)out % 64 == 0 && begin % 32 == 0) range<true>(w, begin, end, out, dtype);
  else range<false>(w, begin, end, out, dtype);
}

}  // namespace qlora
