// dequant4.h: the CPU backend's one 4-bit decoder, used by quantization (qlora_dequantize_4bit) and by
// the 4-bit products (tiles, GEMV). Value i of a stored 4-bit tensor is code[nibble(i)] * scale(i /
// blocksize), the first value of a byte in its high nibble; the scale is the block's absmax, or decoded
// from double-quantized constants (weight4_scale); every product is one f32 multiply, rounded to the
// output dtype (nearest even), so that all callers produce the same bits.
#pragma once
#include <cstdint>

#include "../common/codes.h"
#include "../common/validate.h"
#include "qlora.h"

namespace qlora {

// A stored 4-bit tensor (a qlora_weight4) with its type's 16 code values and the dynamic map that decodes
// double-quantized scales.
struct Quant4 {
  qlora_weight4 d;
  const float* table;  // quant4_table(d.quant_type)->code
  const float* map;    // dynamic_map().code

  explicit Quant4(const qlora_weight4& w) : d(w), table(quant4_table(w.quant_type)->code), map(dynamic_map().code) {}
  // The scale of block b.
  float scale(uint64_t b) const { return weight4_scale(d, b, map); }
  // Value i as f32.
  float value(uint64_t i) const {
    const uint8_t byte = d.packed[i / 2];
    return table[(i & 1) ? (byte & 15) : (byte >> 4)] * scale(i / d.blocksize);
  }
};

// nbytes packed bytes (2 * nbytes values, all in one block of scale amax) into out[0, 2 * nbytes) as
// dtype (f32, bf16 or f16); AVX-512 where the CPU has it (f32 and bf16), else value by value.
void dequantize_bytes(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                      int32_t dtype);

// Values [begin, end) of w (flat, as stored) into out[0, end - begin) as dtype (f32, bf16 or f16).
// Any range: an odd start or end is written on its own, the rest block by block.
void dequantize_range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype);

// The fused products of at most kGemvMaxRows rows of X (gemv4.cpp): C = alpha * X op(W) + beta * C
// (+ the LoRA bypass, trans_w = 1), each block of W decoded once, in registers, for every row of X.
constexpr uint64_t kGemvMaxRows = 8;
void gemv4(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
           int32_t x_dtype, const qlora_lora4* lora, float beta, void* c, int32_t c_dtype);

}  // namespace qlora
