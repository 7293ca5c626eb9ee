// dequant4.h: the CPU backend's one 4-bit decoder, used by quantization (qlora_dequantize_4bit) and by
// the 4-bit GEMMs (tiles, GEMV). Value i of a stored 4-bit tensor is code[nibble(i)] * absmax[i /
// blocksize], the first value of a byte in its high nibble; every product is one f32 multiply, rounded
// to the output dtype (nearest even), so that all callers produce the same bits.
#pragma once
#include <cstdint>

#include "qlora.h"

namespace qlora {

// A stored 4-bit tensor: packed codes, one f32 absmax per block, the type's 16 code values.
struct Quant4 {
  const uint8_t* packed;
  const float* absmax;
  const float* table;  // quant4_table(quant_type)->code
  uint64_t blocksize;  // a power of two (so block boundaries are even)
};

// Value i of w as f32.
inline float quant4_value(const Quant4& w, uint64_t i) {
  const uint8_t byte = w.packed[i / 2];
  return w.table[(i & 1) ? (byte & 15) : (byte >> 4)] * w.absmax[i / w.blocksize];
}

// nbytes packed bytes (2 * nbytes values, all in one block of scale amax) into out[0, 2 * nbytes) as
// dtype (f32, bf16 or f16); AVX-512 where the CPU has it (f32 and bf16), else value by value.
void dequantize_bytes(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                      int32_t dtype);

// Values [begin, end) of w (flat, as stored) into out[0, end - begin) as dtype (f32, bf16 or f16).
// Any range: an odd start or end is written on its own, the rest block by block.
void dequantize_range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype);

}  // namespace qlora
