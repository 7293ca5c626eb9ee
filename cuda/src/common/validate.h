// validate.h: argument checks shared by both backends, so that they accept and refuse the same calls.
#pragma once
#include <cstdint>

#include "codes.h"
#include "half.h"
#include "status.h"

namespace qlora {

inline qlora_status check_alignment(const void* p, uint64_t align, const char* fn, const char* what) {
  if (((uintptr_t)p) % align != 0)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s is not aligned to %llu bytes", fn, what,
                (unsigned long long)align);
  return QLORA_OK;
}

inline qlora_status check_quantize_4bit(const void* x, int32_t x_dtype, uint64_t n, int32_t quant_type,
                                        uint64_t blocksize, const uint8_t* packed, const float* absmax) {
  const char* fn = "quantize to 4 bits";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(packed, fn);
  QLORA_CHECK_PTR(absmax, fn);
  QLORA_CHECK_FLOAT_DTYPE(x_dtype, fn);
  if (n == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: n is 0", fn);
  if (!quant4_table(quant_type))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: quant type %d is not nf4 (0), fp4 (1) or int4 (2)", fn, quant_type);
  if (!valid_blocksize(blocksize))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: blocksize %llu is not a power of two in 32..4096", fn,
                (unsigned long long)blocksize);
  qlora_status s = check_alignment(x, dtype_size(x_dtype), fn, "x");
  if (s == QLORA_OK) s = check_alignment(absmax, 4, fn, "absmax");
  return s;
}

// A qlora_weight4 (its pointers, type, block sizes, and the offset of double-quantized constants), checked
// once by every function that reads one. fn names the call for the messages.
inline qlora_status check_weight4(const qlora_weight4* w, const char* fn) {
  if (w == nullptr) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the weight descriptor is null", fn);
  if (w->packed == nullptr) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the weight's packed codes are null", fn);
  if (!quant4_table(w->quant_type))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: quant type %d is not nf4 (0), fp4 (1) or int4 (2)", fn,
                w->quant_type);
  if (!valid_blocksize(w->blocksize))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: blocksize %llu is not a power of two in 32..4096", fn,
                (unsigned long long)w->blocksize);
  if (w->absmax) return check_alignment(w->absmax, 4, fn, "absmax");
  if (w->absmax_codes == nullptr || w->nested_absmax == nullptr)
    return fail(QLORA_ERR_INVALID_ARGUMENT,
                "Cannot %s: the weight has no absmax and no double-quantized constants (absmax_codes, "
                "nested_absmax)",
                fn);
  if (!valid_blocksize(w->nested_blocksize))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: nested blocksize %llu is not a power of two in 32..4096",
                fn, (unsigned long long)w->nested_blocksize);
  if (w->offset - w->offset != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the double-quantized offset is not finite", fn);
  return check_alignment(w->nested_absmax, 4, fn, "nested_absmax");
}

inline qlora_status check_dequantize_4bit(const qlora_weight4* w, uint64_t n, const void* out, int32_t out_dtype) {
  const char* fn = "dequantize 4-bit values";
  QLORA_CHECK_PTR(out, fn);
  QLORA_CHECK_FLOAT_DTYPE(out_dtype, fn);
  if (n == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: n is 0", fn);
  qlora_status s = check_weight4(w, fn);
  if (s == QLORA_OK) s = check_alignment(out, dtype_size(out_dtype), fn, "out");
  return s;
}

// The scale of block b of w: its absmax, or decoded from the double-quantized constants exactly as
// qlora_double_dequantize computes it (map[code] * nested, then + offset, each rounded on its own).
// map is the signed dynamic map's 256 values (dynamic_map().code on the host).
QLORA_HD float weight4_scale(const qlora_weight4& w, uint64_t b, const float* map) {
  if (w.absmax) return w.absmax[b];
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(map[w.absmax_codes[b]], w.nested_absmax[b / w.nested_blocksize]), w.offset);
#else
  const float scaled = map[w.absmax_codes[b]] * w.nested_absmax[b / w.nested_blocksize];
  return scaled + w.offset;
#endif
}

inline qlora_status check_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                          const uint8_t* codes, const float* nested_absmax,
                                          const float* offset_out) {
  const char* fn = "double-quantize constants";
  QLORA_CHECK_PTR(absmax, fn);
  QLORA_CHECK_PTR(codes, fn);
  QLORA_CHECK_PTR(nested_absmax, fn);
  QLORA_CHECK_PTR(offset_out, fn);
  if (n == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: n is 0", fn);
  if (!valid_blocksize(nested_blocksize))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: nested blocksize %llu is not a power of two in 32..4096",
                fn, (unsigned long long)nested_blocksize);
  qlora_status s = check_alignment(absmax, 4, fn, "absmax");
  if (s == QLORA_OK) s = check_alignment(nested_absmax, 4, fn, "nested_absmax");
  return s;
}

inline qlora_status check_double_dequantize(const uint8_t* codes, const float* nested_absmax, float offset,
                                            uint64_t n, uint64_t nested_blocksize, const float* absmax) {
  const char* fn = "double-dequantize constants";
  QLORA_CHECK_PTR(codes, fn);
  QLORA_CHECK_PTR(nested_absmax, fn);
  QLORA_CHECK_PTR(absmax, fn);
  if (n == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: n is 0", fn);
  if (!(offset - offset == 0.0f)) return fail(QLORA_ERR_NON_FINITE, "Cannot %s: offset is not finite", fn);
  if (!valid_blocksize(nested_blocksize))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: nested blocksize %llu is not a power of two in 32..4096",
                fn, (unsigned long long)nested_blocksize);
  qlora_status s = check_alignment(absmax, 4, fn, "absmax");
  if (s == QLORA_OK) s = check_alignment(nested_absmax, 4, fn, "nested_absmax");
  return s;
}

inline qlora_status check_cast(const void* src, int32_t src_dtype, const void* dst, int32_t dst_dtype) {
  const char* fn = "cast";
  QLORA_CHECK_PTR(src, fn);
  QLORA_CHECK_PTR(dst, fn);
  QLORA_CHECK_FLOAT_DTYPE(src_dtype, fn);
  QLORA_CHECK_FLOAT_DTYPE(dst_dtype, fn);
  qlora_status s = check_alignment(src, dtype_size(src_dtype), fn, "src");
  if (s == QLORA_OK) s = check_alignment(dst, dtype_size(dst_dtype), fn, "dst");
  return s;
}

inline qlora_status check_fill_normal(const void* p, int32_t dtype, float std) {
  const char* fn = "fill with normal values";
  QLORA_CHECK_PTR(p, fn);
  QLORA_CHECK_FLOAT_DTYPE(dtype, fn);
  if (!(std >= 0.0f) || std - std != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: std must be finite and >= 0", fn);
  return check_alignment(p, dtype_size(dtype), fn, "the buffer");
}

inline qlora_status check_malloc(void** out, uint64_t bytes, int32_t category) {
  QLORA_CHECK_PTR(out, "allocate");
  if (bytes == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot allocate: size is 0 bytes");
  if (category < 0 || category >= QLORA_NUM_CATEGORIES)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot allocate: category %d is not in 0..%d", category,
                QLORA_NUM_CATEGORIES - 1);
  if (bytes > (1ull << 46))
    return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot allocate %llu bytes of %s: larger than any device",
                (unsigned long long)bytes, category_name(category));
  return QLORA_OK;
}

inline qlora_status check_axpby(const void* x, const void* y, int32_t dtype) {
  const char* fn = "compute alpha * x + beta * y";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(y, fn);
  QLORA_CHECK_FLOAT_DTYPE(dtype, fn);
  qlora_status s = check_alignment(x, dtype_size(dtype), fn, "x");
  if (s == QLORA_OK) s = check_alignment(y, dtype_size(dtype), fn, "y");
  return s;
}

inline qlora_status check_dropout(const void* x, const void* y, int32_t dtype, float p) {
  const char* fn = "apply dropout";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(y, fn);
  QLORA_CHECK_FLOAT_DTYPE(dtype, fn);
  qlora_status s = check_alignment(x, dtype_size(dtype), fn, "x");
  if (s == QLORA_OK) s = check_alignment(y, dtype_size(dtype), fn, "y");
  if (s != QLORA_OK) return s;
  if (!(p >= 0.0f && p < 1.0f))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: p = %g is not in [0, 1)", fn, (double)p);
  return QLORA_OK;
}

inline qlora_status check_fill_uniform(const void* ptr, int32_t dtype, float low, float high) {
  const char* fn = "fill with uniform values";
  QLORA_CHECK_PTR(ptr, fn);
  QLORA_CHECK_FLOAT_DTYPE(dtype, fn);
  if (!(low - low == 0.0f) || !(high - high == 0.0f) || !(low <= high))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: need finite low <= high, got [%g, %g)", fn, (double)low,
                (double)high);
  return check_alignment(ptr, dtype_size(dtype), fn, "the buffer");
}

inline qlora_status check_gemm_dims(const char* fn, uint64_t m, uint64_t n, uint64_t k) {
  if (m == 0 || n == 0 || k == 0)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: m, n and k must be > 0, got %llu, %llu, %llu", fn,
                (unsigned long long)m, (unsigned long long)n, (unsigned long long)k);
  const uint64_t limit = 1ull << 31;  // each dimension fits an int for the BLAS libraries below us
  if (m >= limit || n >= limit || k >= limit)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: dimensions must be below 2^31", fn);
  return QLORA_OK;
}

inline qlora_status check_gemm(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k, const void* a,
                               const void* b, int32_t ab_dtype, const void* c, int32_t c_dtype, uint64_t batch) {
  const char* fn = "multiply matrices";
  QLORA_CHECK_PTR(a, fn);
  QLORA_CHECK_PTR(b, fn);
  QLORA_CHECK_PTR(c, fn);
  if ((trans_a != 0 && trans_a != 1) || (trans_b != 0 && trans_b != 1))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: trans_a and trans_b must be 0 or 1", fn);
  if (ab_dtype != QLORA_F32 && ab_dtype != QLORA_BF16)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: A and B must be f32 or bf16, got %s", fn, dtype_name(ab_dtype));
  if (c_dtype != QLORA_F32 && c_dtype != QLORA_BF16)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: C must be f32 or bf16, got %s", fn, dtype_name(c_dtype));
  if (batch == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: batch is 0", fn);
  qlora_status s = check_gemm_dims(fn, m, n, k);
  if (s == QLORA_OK) s = check_alignment(a, dtype_size(ab_dtype), fn, "A");
  if (s == QLORA_OK) s = check_alignment(b, dtype_size(ab_dtype), fn, "B");
  if (s == QLORA_OK) s = check_alignment(c, dtype_size(c_dtype), fn, "C");
  return s;
}

inline qlora_status check_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, const void* x,
                                    int32_t x_dtype, const qlora_weight4* w, const qlora_lora4* lora, const void* c,
                                    int32_t c_dtype) {
  const char* fn = "multiply by a 4-bit matrix";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(c, fn);
  if (trans_w != 0 && trans_w != 1) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: trans_w must be 0 or 1", fn);
  if ((x_dtype != QLORA_F32 && x_dtype != QLORA_BF16) || (c_dtype != QLORA_F32 && c_dtype != QLORA_BF16))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: X and C must be f32 or bf16, got %s and %s", fn,
                dtype_name(x_dtype), dtype_name(c_dtype));
  qlora_status s = check_weight4(w, fn);
  if (s == QLORA_OK) s = check_gemm_dims(fn, m, n, k);
  if (s == QLORA_OK) s = check_alignment(x, dtype_size(x_dtype), fn, "X");
  if (s == QLORA_OK) s = check_alignment(c, dtype_size(c_dtype), fn, "C");
  if (s != QLORA_OK || lora == nullptr) return s;
  // The LoRA bypass: forward only, in X's dtype, a finite scale, three buffers.
  if (trans_w != 1)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: a LoRA bypass goes with trans_w = 1 (the forward pass)", fn);
  if (lora->a == nullptr || lora->b == nullptr || lora->h == nullptr)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the LoRA bypass needs a, b and h", fn);
  if (lora->dtype != x_dtype)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the LoRA bypass is %s, X is %s", fn, dtype_name(lora->dtype),
                dtype_name(x_dtype));
  if (lora->rank == 0 || lora->rank >= (1ull << 31))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the LoRA rank must be in 1..2^31-1, got %llu", fn,
                (unsigned long long)lora->rank);
  if (lora->scaling - lora->scaling != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: the LoRA scaling is not finite", fn);
  const uint64_t es = dtype_size(x_dtype);
  s = check_alignment(lora->a, es, fn, "LoRA A");
  if (s == QLORA_OK) s = check_alignment(lora->b, es, fn, "LoRA B");
  if (s == QLORA_OK) s = check_alignment(lora->h, es, fn, "LoRA h");
  return s;
}

// qlora_gemm_4bit_workspace: bytes_out not null, trans_w 0 or 1, the dimensions as for a product.
inline qlora_status check_gemm_4bit_workspace(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k,
                                              const uint64_t* bytes_out) {
  const char* fn = "size the workspace of a 4-bit product";
  QLORA_CHECK_PTR(bytes_out, fn);
  if (trans_w != 0 && trans_w != 1) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: trans_w must be 0 or 1", fn);
  return check_gemm_dims(fn, m, n, k);
}

// qlora_gemm_4bit's workspace against the need of the shape (the backend's qlora_gemm_4bit_workspace):
// none needed (0), anything goes; else not null, at least need bytes, aligned to 4.
inline qlora_status check_gemm_4bit_workspace_arg(uint64_t m, uint64_t n, uint64_t k, const void* workspace,
                                                  uint64_t workspace_bytes, uint64_t need) {
  const char* fn = "multiply by a 4-bit matrix";
  if (need == 0) return QLORA_OK;
  if (workspace == nullptr)
    return fail(QLORA_ERR_INVALID_ARGUMENT,
                "Cannot %s: the workspace is null, this shape (m %llu, n %llu, k %llu) needs %llu bytes "
                "(qlora_gemm_4bit_workspace)",
                fn, (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, (unsigned long long)need);
  if (workspace_bytes < need)
    return fail(QLORA_ERR_INVALID_ARGUMENT,
                "Cannot %s: the workspace has %llu bytes, this shape (m %llu, n %llu, k %llu) needs %llu "
                "(qlora_gemm_4bit_workspace)",
                fn, (unsigned long long)workspace_bytes, (unsigned long long)m, (unsigned long long)n,
                (unsigned long long)k, (unsigned long long)need);
  return check_alignment(workspace, 4, fn, "the workspace");
}

// Counter-based normal generator shared by both backends: value i of (seed) is a Box-Muller pair
// drawn from splitmix64 of (seed, i / 2), cosine for even i and sine for odd i.
QLORA_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The random word of (seed, i) used by uniform fills and dropout (both backends).
QLORA_HD uint64_t random_word(uint64_t seed, uint64_t i) { return splitmix64(splitmix64(seed) ^ splitmix64(i)); }

// A float in [0, 1) from the top 24 bits of a random word: exact on both backends.
QLORA_HD float unit_float(uint64_t r) { return (float)(r >> 40) * 5.9604644775390625e-8f; }

// Dropout keeps value i when its uniform is >= p. Both backends compute the same mask.
QLORA_HD bool dropout_keep(uint64_t seed, uint64_t i, float p) { return unit_float(random_word(seed, i)) >= p; }

// The hyperparameters of both AdamW steps: finite, betas in [0, 1), eps > 0, bias corrections in (0, 1].
inline qlora_status check_adamw_hyper(const char* fn, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bias_correction1, float bias_correction2,
                                      float grad_scale) {
  const float values[8] = {lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale};
  const char* names[8] = {"lr", "beta1", "beta2", "eps", "weight_decay", "bias_correction1", "bias_correction2",
                          "grad_scale"};
  for (int k = 0; k < 8; k++) {
    if (!(values[k] - values[k] == 0.0f))
      return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s = %g is not finite", fn, names[k], (double)values[k]);
  }
  if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: beta1 = %g and beta2 = %g must be in [0, 1)", fn,
                (double)beta1, (double)beta2);
  if (!(eps > 0.0f)) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: eps = %g must be > 0", fn, (double)eps);
  if (!(bias_correction1 > 0.0f && bias_correction1 <= 1.0f) || !(bias_correction2 > 0.0f && bias_correction2 <= 1.0f))
    return fail(QLORA_ERR_INVALID_ARGUMENT,
                "Cannot %s: bias corrections (1 - beta^step) must be in (0, 1], got %g and %g", fn,
                (double)bias_correction1, (double)bias_correction2);
  return QLORA_OK;
}

// A device pointer of a segment, its name in messages and the alignment it needs; only the master may be null.
struct SegmentPointer {
  const void* ptr;
  const char* name;
  uint64_t align;
};

// One segment of either AdamW (index k; total: the values of the segments before it, updated): the
// pointers non-null (but the master, the last one) and aligned, n in range, param and grad f32 or bf16,
// a master only for a bf16 param.
inline qlora_status check_adamw_segment(const char* fn, uint64_t k, uint64_t n, uint64_t& total, int32_t param_dtype,
                                        int32_t grad_dtype, const SegmentPointer* ptrs, int count) {
  const unsigned long long i = (unsigned long long)k;
  for (int p = 0; p + 1 < count; p++)
    if (!ptrs[p].ptr) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: %s is null", fn, i, ptrs[p].name);
  if (n == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: n is 0", fn, i);
  if (n > (1ull << 44) || total + n > (1ull << 46))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: n = %llu is larger than any device", fn, i,
                (unsigned long long)n);
  total += n;
  if ((param_dtype != QLORA_F32 && param_dtype != QLORA_BF16) || (grad_dtype != QLORA_F32 && grad_dtype != QLORA_BF16))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: param and grad must be f32 or bf16, got %s and %s",
                fn, i, dtype_name(param_dtype), dtype_name(grad_dtype));
  if (ptrs[count - 1].ptr && param_dtype != QLORA_BF16)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: a master copy is for a bf16 param, this param is %s",
                fn, i, dtype_name(param_dtype));
  for (int p = 0; p < count; p++) {
    if (ptrs[p].ptr == nullptr || ((uintptr_t)ptrs[p].ptr) % ptrs[p].align == 0) continue;
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu: %s is not aligned to %llu bytes", fn, i,
                ptrs[p].name, (unsigned long long)ptrs[p].align);
  }
  return QLORA_OK;
}

// The device pointers of a segment of either AdamW, in check order, the master (the only one that may
// be null) last; returns their number.
inline int segment_pointers(const qlora_adamw_segment& g, SegmentPointer* out) {
  const SegmentPointer ptrs[5] = {{g.param, "param", dtype_size(g.param_dtype)},
                                  {g.grad, "grad", dtype_size(g.grad_dtype)},
                                  {g.m, "m", 4},
                                  {g.v, "v", 4},
                                  {g.master, "master", 4}};
  for (int p = 0; p < 5; p++) out[p] = ptrs[p];
  return 5;
}
// 8-bit AdamW: the codes (any alignment) and block absmax in place of m and v.
inline int segment_pointers(const qlora_adamw8_segment& g, SegmentPointer* out) {
  const SegmentPointer ptrs[7] = {{g.param, "param", dtype_size(g.param_dtype)},
                                  {g.grad, "grad", dtype_size(g.grad_dtype)},
                                  {g.m_codes, "m_codes", 1},
                                  {g.v_codes, "v_codes", 1},
                                  {g.m_absmax, "m_absmax", 4},
                                  {g.v_absmax, "v_absmax", 4},
                                  {g.master, "master", 4}};
  for (int p = 0; p < 7; p++) out[p] = ptrs[p];
  return 7;
}
inline const char* adamw_name(const qlora_adamw_segment*) { return "take an AdamW step"; }
inline const char* adamw_name(const qlora_adamw8_segment*) { return "take an 8-bit AdamW step"; }

// qlora_adamw_step and qlora_adamw8_step (Segment: qlora_adamw_segment or qlora_adamw8_segment): the
// hyperparameters, then each segment (pointers, n, dtypes, alignment). A bf16 param may have an f32
// master copy or not (pure bf16); an f32 param has no master.
template <typename Segment>
inline qlora_status check_adamw(const Segment* segments, uint64_t count, float lr, float beta1, float beta2,
                                float eps, float weight_decay, float bias_correction1, float bias_correction2,
                                float grad_scale) {
  const char* fn = adamw_name(segments);
  qlora_status s =
      check_adamw_hyper(fn, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  if (s != QLORA_OK) return s;
  if (count > 0 && segments == nullptr)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segments is null but count is %llu", fn,
                (unsigned long long)count);
  uint64_t total = 0;
  for (uint64_t k = 0; k < count && s == QLORA_OK; k++) {
    SegmentPointer ptrs[7];
    const int pointers = segment_pointers(segments[k], ptrs);
    s = check_adamw_segment(fn, k, segments[k].n, total, segments[k].param_dtype, segments[k].grad_dtype, ptrs,
                            pointers);
  }
  return s;
}

// qlora_sum_squares: x of a float dtype, aligned; out (host) not null. n = 0 is allowed (sum 0).
inline qlora_status check_sum_squares(const void* x, int32_t dtype, const double* out) {
  const char* fn = "sum squares";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(out, fn);
  QLORA_CHECK_FLOAT_DTYPE(dtype, fn);
  return check_alignment(x, dtype_size(dtype), fn, "x");
}

}  // namespace qlora
