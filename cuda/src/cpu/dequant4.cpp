// cpu/dequant4.cpp: the 4-bit decoder of dequant4.h (scalar and AVX-512).
#include "dequant4.h"

#include <immintrin.h>

#include <algorithm>

#include "../common/half.h"
#include "../common/status.h"
#include "cpu.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace qlora {
namespace {

// f32 or bf16 output, 16 packed bytes (32 values) per step, the tail value by value.
__attribute__((target("avx512f,avx512bw"))) void dequantize_bytes_avx512(const uint8_t* packed, uint64_t nbytes,
                                                                         float amax, const float* table,
                                                                         void* out, int32_t dtype) {
  const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(table), _mm512_set1_ps(amax));  // code[c] * amax
  const __m128i low4 = _mm_set1_epi8(0x0f);
  uint64_t i = 0;
  if (dtype == QLORA_BF16) {
    // The 16 scaled codes rounded to bf16 (nearest even, as float_to_bf16 for finite values), then
    // one 16-bit lookup per value.
    __m512i u = _mm512_castps_si512(scaled);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __m512i table16 = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
    uint16_t* o = (uint16_t*)out;
    for (; i + 16 <= nbytes; i += 16) {
      __m128i b = _mm_loadu_si128((const __m128i*)(packed + i));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      __m128i lo = _mm_and_si128(b, low4);
      __m256i idx8 = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
      __m512i v = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(idx8), table16);
      _mm512_storeu_si512((void*)(o + 2 * i), v);
    }
  } else {
    float* o = (float*)out;
    for (; i + 16 <= nbytes; i += 16) {
      __m128i b = _mm_loadu_si128((const __m128i*)(packed + i));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      __m128i lo = _mm_and_si128(b, low4);
      _mm512_storeu_ps(o + 2 * i, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), scaled));
      _mm512_storeu_ps(o + 2 * i + 16,
                       _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), scaled));
    }
  }
  for (; i < nbytes; i++) {
    store_float(out, dtype, 2 * i, table[packed[i] >> 4] * amax);
    store_float(out, dtype, 2 * i + 1, table[packed[i] & 15] * amax);
  }
}

void dequantize_bytes_scalar(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                             int32_t dtype) {
  for (uint64_t i = 0; i < nbytes; i++) {
    store_float(out, dtype, 2 * i, table[packed[i] >> 4] * amax);
    store_float(out, dtype, 2 * i + 1, table[packed[i] & 15] * amax);
  }
}

}  // namespace

void dequantize_bytes(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                      int32_t dtype) {
  if (dtype != QLORA_F16 && has_avx512()) dequantize_bytes_avx512(packed, nbytes, amax, table, out, dtype);
  else dequantize_bytes_scalar(packed, nbytes, amax, table, out, dtype);
}

void dequantize_range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype) {
  const uint64_t esize = dtype_size(dtype), bs = w.d.blocksize;
  uint64_t i = begin;
  if (i < end && (i & 1)) {
    store_float(out, dtype, 0, w.value(i));
    i++;
  }
  while (i < end) {
    const uint64_t block = i / bs;
    const uint64_t stop = std::min(end, (block + 1) * bs);
    const uint64_t nbytes = (stop - i) / 2;
    dequantize_bytes(w.d.packed + i / 2, nbytes, w.scale(block), w.table, (char*)out + (i - begin) * esize, dtype);
    i += 2 * nbytes;
    if (i < stop) {  // an odd end
      store_float(out, dtype, i - begin, w.value(i));
      i++;
    }
  }
}

}  // namespace qlora
