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
// double-quantized scales. Block sizes are powers of two: block and nested indices are shifts.
struct Quant4 {
  qlora_weight4 d;
  const float* table;     // quant4_table(d.quant_type)->code
  const float* map;       // dynamic_map().code
  unsigned block_shift;   // log2(d.blocksize)
  unsigned nested_shift;  // log2(d.nested_blocksize) when double-quantized

  explicit Quant4(const qlora_weight4& w)
      : d(w),
        table(quant4_table(w.quant_type)->code),
        map(dynamic_map().code),
        block_shift((unsigned)__builtin_ctzll(w.blocksize | (1ull << 63))),
        nested_shift((unsigned)__builtin_ctzll(w.nested_blocksize | (1ull << 63))) {}
  // The scale of block b: weight4_scale's arithmetic (map[code] * nested, then + offset, each rounded).
  float scale(uint64_t b) const {
    if (d.absmax) return d.absmax[b];
    const float scaled = map[d.absmax_codes[b]] * d.nested_absmax[b >> nested_shift];
    return scaled + d.offset;
  }
  // Value i as f32.
  float value(uint64_t i) const {
    const uint8_t byte = d.packed[i / 2];
    return table[(i & 1) ? (byte & 15) : (byte >> 4)] * scale(i >> block_shift);
  }
};

// nbytes packed bytes (2 * nbytes values, all in one block of scale amax) into out[0, 2 * nbytes) as
// dtype (f32, bf16 or f16).
void dequantize_bytes(const uint8_t* packed, uint64_t nbytes, float amax, const float* table, void* out,
                      int32_t dtype);

// Values [begin, end) of w (flat, as stored) into out[0, end - begin) as dtype (f32, bf16 or f16). Any
// range: an odd start or end is written on its own, the whole pairs between run block by block in one
// loop (AVX-512, AVX2 or portable, by the CPU and QLORA_CPU_ISA), each block's 16 scaled codes built in
// registers. Cheap enough per call for short ranges (a row of a tile).
void dequantize_range(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype);

// The same, for outputs that will not be read back soon (larger than the caches): when out is 64-byte
// aligned and begin a multiple of 32, whole 32-value steps are written with streaming stores (no read
// for ownership, no cache pollution), then fenced.
void dequantize_range_streaming(const Quant4& w, uint64_t begin, uint64_t end, void* out, int32_t dtype);

// The fused products (gemv4.cpp): C = alpha * X op(W) + beta * C (+ the LoRA bypass, trans_w = 1), each
// block of W decoded in registers, never stored. trans_w = 1 takes X in chunks of up to kGemvMaxRows rows,
// one pass over W each; trans_w = 0 at most kGemvMaxRows rows. gemv4_scratch_bytes: the scratch it takes
// through the ledger (rank 0: no bypass).
constexpr uint64_t kGemvMaxRows = 8;
void gemv4(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
           int32_t x_dtype, const qlora_lora4* lora, float beta, void* c, int32_t c_dtype);
uint64_t gemv4_scratch_bytes(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, int32_t x_dtype, uint64_t rank);

// The fused 4-bit GEMMs of many rows of bf16 X (gemm4.cpp): C = alpha * X op(W) + beta * C, panels of W
// decoded into the thread's cache once per call and multiplied there by vdpbf16ps. They apply on CPUs with
// AVX512_BF16 and blocks of at least 64 values: trans_w = 1 (W stored n x k) up to kGemm4MaxRows rows and k
// a multiple of the blocksize; trans_w = 0 (W stored k x n) any rows, n a multiple of the blocksize and k
// even. Above kGemm4MaxRows rows, dequantized tiles multiplied by oneDNN run as fast (measured on Zen 5 at
// 1,024 rows: 0.96-1.0x), with the decode paid once per tile. Scratch: gemm4_bf16_scratch_bytes, taken
// from the caller's when large enough, else through the ledger.
constexpr uint64_t kGemm4MaxRows = 512;
bool gemm4_bf16_applies(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, int32_t x_dtype);
uint64_t gemm4_bf16_scratch_bytes(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k);
void gemm4_bf16(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
                float beta, void* c, int32_t c_dtype, void* scratch, uint64_t scratch_bytes);

}  // namespace qlora
