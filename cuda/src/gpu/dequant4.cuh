// dequant4.cuh: the CUDA backend's one 4-bit decoder (the mirror of cpu/dequant4.h), used by
// quantization (qlora_dequantize_4bit) and by the 4-bit GEMMs (the fused GEMV kernels decode with
// decode8 and quant4_at; the dequantize + GEMM path calls dequantize_4bit_range). Value f of a stored
// 4-bit tensor (flat index) is code[nibble f] * absmax[f >> block_shift], the first value of a byte in
// its high nibble, one f32 product rounded on its own (__fmul_rn), so that every caller gets the same
// bits as the CPU backend.
#pragma once
#include <cstdint>
#include <cstring>

#include "../common/codes.h"
#include "gpu.cuh"

namespace qlora {

// The 16 code values of a 4-bit type, by value (a kernel parameter); kernels copy them to shared
// memory, where lanes can index them with different codes at once.
struct Codes16 {
  float v[16];
};

// The codes of a known quant type (checked by the caller).
inline Codes16 codes16(int32_t quant_type) {
  Codes16 c;
  memcpy(c.v, quant4_table(quant_type)->code, sizeof c.v);
  return c;
}

// Value f of the stored tensor, code[] in shared memory.
__device__ __forceinline__ float quant4_at(const uint8_t* packed, const float* absmax, uint32_t block_shift,
                                           const float* code, uint64_t f) {
  const uint32_t byte = packed[f >> 1];
  return __fmul_rn(code[(f & 1) ? byte & 15u : byte >> 4], absmax[f >> block_shift]);
}

// Eight values from one 32-bit word of packed codes (bytes in memory order, high nibble first), all of
// one block of scale `scale`.
__device__ __forceinline__ void decode8(uint32_t word, float scale, const float* code, float* w) {
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const uint32_t byte = (word >> (8 * q)) & 0xffu;
    w[2 * q] = __fmul_rn(code[byte >> 4], scale);
    w[2 * q + 1] = __fmul_rn(code[byte & 15u], scale);
  }
}

// The f32 scales of a stored tensor's blocks as the kernels read them: its absmax, or for double-quantized
// constants their decoding (qlora_double_dequantize's kernel) into stream-ordered scratch counted by the
// ledger, freed with this object (after the work queued on the stream that reads it).
class Absmax {
 public:
  Absmax() = default;
  ~Absmax();
  Absmax(const Absmax&) = delete;
  Absmax& operator=(const Absmax&) = delete;
  // The scales of w's blocks covering n values; QLORA_OK or the failed allocation or launch.
  qlora_status of(const qlora_weight4& w, uint64_t n, const char* what);
  const float* get() const { return p_; }

 private:
  const float* p_ = nullptr;
  float* scratch_ = nullptr;
  uint64_t bytes_ = 0;
  const char* what_ = "";
};

// Queues out[i] = value first + i of the stored tensor, i < count, as dtype (f32, bf16 or f16), on
// gpu_stream() (gpu_ready() has succeeded; blocksize a power of two >= 32). Returns the launch status.
qlora_status dequantize_4bit_range(const uint8_t* packed, const float* absmax, uint64_t first, uint64_t count,
                                   uint64_t blocksize, const Codes16& codes, void* out, int32_t dtype,
                                   const char* what);

}  // namespace qlora
