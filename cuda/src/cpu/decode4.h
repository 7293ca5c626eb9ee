// decode4.h: the pieces of the fused 4-bit products (gemv4.cpp, gemm4.cpp) that decode W: a block's scale
// table in bf16, the scales of a run of blocks, and a vector's lanes summed in a fixed order. Header-only,
// inline, each function compiled for the instructions its target attribute names.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "dequant4.h"

namespace qlora {

// The block's 16 scaled codes as bf16, in both halves of a vector, for vpermw: code * scale rounded to
// nearest even by vcvtne2ps2bf16, which flushes denormals to zero; a scale so small that a product could
// be denormal (below 2^-100) takes the integer rounding of float_to_bf16 instead, so that every value is
// the one dequantize_range gives, bit for bit. vpermw reads the low 5 bits of each index, so with the
// table twice a byte widened to 16 bits looks up its low nibble as it is: no mask (lookup_low4).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i bf16_table(__m512 codes, float scale) {
  const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(scale));
  if (__builtin_expect(scale >= 0x1p-100f, 1)) return (__m512i)_mm512_cvtne2ps_pbh(t, t);
  __m512i u = _mm512_castps_si512(t);
  u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                           _mm512_set1_epi32(0x7fff)));
  return _mm512_broadcast_i64x4(_mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}

// Two blocks' tables in one vector: words 0-15 block a's, 16-31 block b's (one vcvtne2ps2bf16 for both).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i bf16_table2(__m512 codes, float sa, float sb) {
  if (__builtin_expect(sa >= 0x1p-100f && sb >= 0x1p-100f, 1))
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(codes, _mm512_set1_ps(sb)),
                                        _mm512_mul_ps(codes, _mm512_set1_ps(sa)));
  return _mm512_mask_blend_epi64(0xf0, bf16_table(codes, sa), bf16_table(codes, sb));
}

// 32 bytes' high and low nibbles looked up in a bf16_table: bytes holds them widened to 16 bits.
__attribute__((target("avx512f,avx512bw"))) inline __m512i lookup_high4(__m512i bytes, __m512i table) {
  return _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table);
}
__attribute__((target("avx512f,avx512bw"))) inline __m512i lookup_low4(__m512i bytes, __m512i table) {
  return _mm512_permutexvar_epi16(bytes, table);  // bits 5-15 ignored; bit 4 picks the same half
}

// The 16 lanes' sum, always by the same tree (halves added, then quarters...): the same bits on every run.
__attribute__((target("avx512f"))) inline float sum16(__m512 v) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// The scales of blocks [first, first + count) of w into out, as Quant4::scale gives them (the same
// operations), without its division per block: double-quantized constants are decoded with the nested
// block's absmax loaded once per nested block.
inline void block_scales(const Quant4& w, uint64_t first, uint64_t count, float* out) {
  if (w.d.absmax) {
    std::copy(w.d.absmax + first, w.d.absmax + first + count, out);
    return;
  }
  const uint64_t nb = w.d.nested_blocksize;
  for (uint64_t b = first; b < first + count;) {
    const float nested = w.d.nested_absmax[b / nb];
    const uint64_t stop = std::min(first + count, (b / nb + 1) * nb);
    for (; b < stop; b++) {
      const float scaled = w.map[w.d.absmax_codes[b]] * nested;
      out[b - first] = scaled + w.d.offset;
    }
  }
}

}  // namespace qlora
