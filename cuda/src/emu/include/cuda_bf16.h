// cuda_bf16.h of the CUDA emulator: __nv_bfloat16 (and cuda_fp16.h's __half) as 16-bit storage with the
// conversions the kernels use, rounding to nearest even as the GPU does.
#pragma once
#include <cstdint>

#include "../../common/half.h"  // the project's own conversions: the GPU's rounding, bit for bit

struct __nv_bfloat16 {
  uint16_t x;  // the bits; trivial, so that __shared__ arrays of it need no constructor
};
struct __half {
  uint16_t x;
};

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16{v}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.x; }
inline float __bfloat162float(__nv_bfloat16 v) { return qlora::bf16_to_float(v.x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16{qlora::float_to_bf16(f)}; }
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
inline unsigned short __half_as_ushort(__half v) { return v.x; }
