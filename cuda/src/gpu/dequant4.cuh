// dequant4.cuh: the CUDA backend's one 4-bit decoder (the mirror of cpu/dequant4.h), used by
// qlora_dequantize_4bit (quant.cu), the fused GEMV of a few rows (gemv4.cu) and the 4-bit GEMM's tiles
// (gemm.cu). Value f of a stored 4-bit tensor (flat index) is code[nibble f] * scale(f >> block_shift), the
// first value of a byte in its high nibble, one f32 product rounded on its own (__fmul_rn), so that every
// caller gets the bits of qlora_dequantize_4bit (and of the CPU backend). The scale is the block's absmax,
// or decoded where it is read from double-quantized constants (weight4_scale's arithmetic, with shifts):
// no f32 copy of the constants is ever made.
//
// The 16 code values live in registers: lane l of a warp holds code[l & 15], and a lane gets code[c] from
// lane c with a warp shuffle. So every function below that decodes is warp-collective: the 32 lanes of a
// warp call it together, each with its own word (a lane with nothing to decode passes zeros and ignores
// the result), and kernels keep their loops around it uniform across the warp.
#pragma once
#include <cstdint>
#include <cstring>

#include "../common/codes.h"
#include "../common/half.h"
#include "gpu.cuh"

namespace qlora {

// A stored 4-bit tensor (a qlora_weight4) as kernels take it, by value: its codes, its scales (plain or
// double-quantized), its type's 16 values and the dynamic map that decodes double-quantized scales.
struct Quant4 {
  const uint8_t* packed;
  const float* absmax;          // one f32 scale per block, or null: double-quantized (the three below)
  const uint8_t* absmax_codes;  // one code of the dynamic map per block
  const float* nested_absmax;   // one f32 per nested block of scales
  float offset;
  uint32_t block_shift, nested_shift;  // log2 of blocksize and nested_blocksize
  float code[16];
  float map[256];  // the signed dynamic map; a kernel copies it to shared memory (load_map)
};

// The kernels' view of w (checked by the caller).
inline Quant4 quant4(const qlora_weight4& w) {
  Quant4 q;
  q.packed = w.packed;
  q.absmax = w.absmax;
  q.absmax_codes = w.absmax_codes;
  q.nested_absmax = w.nested_absmax;
  q.offset = w.offset;
  q.block_shift = log2_pow2(w.blocksize);
  q.nested_shift = w.absmax ? 0 : log2_pow2(w.nested_blocksize);
  memcpy(q.code, quant4_table(w.quant_type)->code, sizeof q.code);
  memcpy(q.map, dynamic_map().code, sizeof q.map);
  return q;
}

// This lane's entry of the register table: code[lane & 15] (1-D blocks of whole warps).
__device__ __forceinline__ float lane_code(const Quant4& w) { return w.code[threadIdx.x & 15]; }

// Copies the dynamic map into map (256 floats of shared memory) when w's scales are double-quantized.
// Every thread of the block calls it: it ends with __syncthreads.
__device__ __forceinline__ void load_map(const Quant4& w, float* map) {
  if (!w.absmax)
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) map[i] = w.map[i];
  __syncthreads();
}

// The scale of block b: absmax[b], or map[codes[b]] * nested_absmax[b / nested_blocksize] + offset, each
// operation rounded on its own as qlora_double_dequantize (map: load_map's shared copy).
__device__ __forceinline__ float block_scale(const Quant4& w, const float* map, uint64_t b) {
  if (w.absmax) return w.absmax[b];
  return __fadd_rn(__fmul_rn(map[w.absmax_codes[b]], w.nested_absmax[b >> w.nested_shift]), w.offset);
}

// code[c], from the lane that holds it (warp-collective).
__device__ __forceinline__ float code_of(float lane_code, uint32_t c) {
  return __shfl_sync(0xffffffffu, lane_code, (int)c);
}

// Eight values from one 32-bit word of codes (bytes in memory order, the high nibble first), all of one
// block of scale `scale` (warp-collective). A word of zeros with scale 0 decodes to zeros.
__device__ __forceinline__ void decode8(uint32_t word, float scale, float lane_code, float* v) {
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const uint32_t byte = (word >> (8 * q)) & 0xffu;
    v[2 * q] = __fmul_rn(code_of(lane_code, byte >> 4), scale);
    v[2 * q + 1] = __fmul_rn(code_of(lane_code, byte & 15u), scale);
  }
}

// Value f of the tensor, any f (the slow paths: shapes whose rows do not fall on whole words); 0 without
// reading memory where !valid (warp-collective).
__device__ __forceinline__ float decode1(const Quant4& w, const float* map, float lane_code, uint64_t f, bool valid) {
  uint32_t nibble = 0;
  float scale = 0.0f;
  if (valid) {
    const uint32_t byte = w.packed[f >> 1];
    nibble = (f & 1) ? byte & 15u : byte >> 4;
    scale = block_scale(w, map, f >> w.block_shift);
  }
  const float v = __fmul_rn(code_of(lane_code, nibble), scale);
  return valid ? v : 0.0f;
}

// A value of W as a bf16 X's product uses it: rounded to bf16 (nearest even), as qlora_dequantize_4bit
// would store it.
__device__ __forceinline__ float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

// m <= kGemvMaxRows (gemv4.cu): C = alpha * X op(W) + beta * C, with the LoRA bypass when lora is not
// null (trans_w = 1), W streamed once and decoded in registers. Queued on gpu_stream() (gpu_ready() has
// succeeded, the arguments are checked); returns the launch status.
constexpr uint64_t kGemvMaxRows = 4;
qlora_status gemv4(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
                   int32_t x_dtype, const qlora_lora4* lora, float beta, void* c, int32_t c_dtype, const char* what);

}  // namespace qlora
