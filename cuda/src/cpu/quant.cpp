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

#define QLORA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace qlora {
namespace {

constexpr uint64_t kMaxBlock = 4096;

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

// Mean of n floats in the fixed order of codes.h (chunks of kMeanChunk in double, then in order).
float fixed_order_mean(const float* x, uint64_t n) {
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
  return (float)(total / (double)n);
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
  const uint64_t esize = dtype_size(x_dtype);
  const int64_t blocks = (int64_t)((n + blocksize - 1) / blocksize);
  bool any_bad = false;
#pragma omp parallel for schedule(static) reduction(|| : any_bad) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; b++) {
    uint64_t start = (uint64_t)b * blocksize;
    uint64_t len = std::min(blocksize, n - start);
    bool bad = false;
    quantize_block((const char*)x + start * esize, x_dtype, len, t, packed + start / 2, absmax + b, &bad);
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
  const uint64_t esize = dtype_size(out_dtype), blocksize = w.d.blocksize;
  const int64_t blocks = (int64_t)((n + blocksize - 1) / blocksize);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; b++) {
    const uint64_t begin = (uint64_t)b * blocksize, end = std::min(n, begin + blocksize);
    dequantize_range(w, begin, end, (char*)out + begin * esize, out_dtype);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                             uint8_t* codes, float* nested_absmax, float* offset_out) {
  qlora_status s = check_double_quantize(absmax, n, nested_blocksize, codes, nested_absmax, offset_out);
  if (s != QLORA_OK) return s;
  uint64_t bad = first_non_finite(absmax, QLORA_F32, n);
  if (bad < n)
    return fail(QLORA_ERR_NON_FINITE, "Cannot double-quantize constants: absmax[%llu] is not finite",
                (unsigned long long)bad);
  const float offset = fixed_order_mean(absmax, n);
  const DynamicMap& map = dynamic_map();
  const int64_t blocks = (int64_t)((n + nested_blocksize - 1) / nested_blocksize);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; b++) {
    uint64_t start = (uint64_t)b * nested_blocksize, end = std::min(n, start + nested_blocksize);
    float amax = 0.0f;
    for (uint64_t i = start; i < end; i++) amax = std::max(amax, std::fabs(absmax[i] - offset));
    float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
    for (uint64_t i = start; i < end; i++) {
      float v = (absmax[i] - offset) * inv;
      codes[i] = (uint8_t)(std::lower_bound(map.midpoint, map.midpoint + 255, v) - map.midpoint);
    }
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
