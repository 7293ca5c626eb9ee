// half.h: bf16 and f16 conversions, bit-exact and identical on host and device (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QLORA_HD __host__ __device__ __forceinline__
#else
#define QLORA_HD inline
#endif

namespace qlora {

QLORA_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

QLORA_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

QLORA_HD float bf16_to_float(uint16_t h) { return bits_float((uint32_t)h << 16); }

QLORA_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

QLORA_HD float f16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (man << 13));  // Inf, NaN
  if (exp == 0) {
    if (man == 0) return bits_float(sign);
    // subnormal: man * 2^-24, exact in f32
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

QLORA_HD uint16_t float_to_f16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {                                     // below 2^-14: subnormal or zero
    if (a < 0x33000000u) return sign;                        // below 2^-25: rounds to zero
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // (e - 127 + 24) gives the value in units of 2^-24
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t q = ((a - 0x38000000u) >> 13);  // rebias 127 -> 15
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

// Loads element i of a float-typed buffer (f32, bf16 or f16) as f32.
QLORA_HD float load_float(const void* p, int32_t dtype, uint64_t i) {
  if (dtype == 0) return ((const float*)p)[i];
  if (dtype == 1) return bf16_to_float(((const uint16_t*)p)[i]);
  return f16_to_float(((const uint16_t*)p)[i]);
}

// Stores v as element i of a float-typed buffer (f32, bf16 or f16).
QLORA_HD void store_float(void* p, int32_t dtype, uint64_t i, float v) {
  if (dtype == 0) ((float*)p)[i] = v;
  else if (dtype == 1) ((uint16_t*)p)[i] = float_to_bf16(v);
  else ((uint16_t*)p)[i] = float_to_f16(v);
}

}  // namespace qlora
