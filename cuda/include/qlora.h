/*
 * qlora.h: the whole native surface of qlora-lab, one C ABI for two backends.
 *
 *   build/libqlora_cpu.so   C++17 + OpenMP, "device" memory is aligned host memory
 *   build/libqlora_cuda.so  CUDA kernels, device memory is GPU memory
 *
 * Rules every function follows:
 *   - Every function but qlora_abi_version, qlora_backend_name and qlora_last_error returns a
 *     qlora_status; QLORA_OK is 0. On failure, qlora_last_error() gives a message (thread-local).
 *   - Nothing aborts or exits: null pointers, sizes, dtypes, enums and alignment are checked on entry.
 *   - Sizes and counts are uint64_t. "Device pointers" (dptr) come from qlora_malloc; host pointers
 *     (hptr) are plain memory of the caller. On the CPU backend both are host memory.
 *   - Every device allocation carries a category, counted by the ledger (qlora_memory_stats).
 *   - Kernels run on the backend's one stream, in order; qlora_synchronize waits for them. Copies to
 *     the host are synchronous.
 */
#ifndef QLORA_H
#define QLORA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define QLORA_API __declspec(dllexport)
#else
#define QLORA_API __attribute__((visibility("default")))
#endif

/* Bumped on any change of a signature, enum value or struct layout below. */
#define QLORA_ABI_VERSION 2

typedef enum qlora_status {
  QLORA_OK = 0,
  QLORA_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad size, dtype, enum or alignment */
  QLORA_ERR_OUT_OF_MEMORY = 2,    /* over the memory budget, or the allocator/driver refused */
  QLORA_ERR_NON_FINITE = 3,       /* NaN or Inf in an input that must be finite */
  QLORA_ERR_NO_DEVICE = 4,        /* CUDA backend: no usable GPU or driver */
  QLORA_ERR_UNSUPPORTED = 5,      /* valid request this backend cannot do */
  QLORA_ERR_INTERNAL = 6          /* a CUDA or library error that is not the caller's fault */
} qlora_status;

typedef enum qlora_dtype {
  QLORA_F32 = 0,
  QLORA_BF16 = 1,
  QLORA_F16 = 2,
  QLORA_U8 = 3,
  QLORA_I32 = 4
} qlora_dtype;

/* What an allocation is for. The ledger keeps current and peak bytes per category. */
typedef enum qlora_category {
  QLORA_CAT_WEIGHTS = 0,
  QLORA_CAT_QUANTIZED_WEIGHTS = 1,
  QLORA_CAT_QUANT_CONSTANTS = 2,
  QLORA_CAT_ADAPTERS = 3,
  QLORA_CAT_GRADIENTS = 4,
  QLORA_CAT_OPTIMIZER_STATES = 5,
  QLORA_CAT_ACTIVATIONS = 6,
  QLORA_CAT_WORKSPACE = 7
} qlora_category;
#define QLORA_NUM_CATEGORIES 8

/* 4-bit data types: 16 code values in [-1, 1], scaled by each block's absmax. */
typedef enum qlora_quant_type {
  QLORA_NF4 = 0, /* NormalFloat4: quantiles of N(0,1), exact zero (QLoRA paper, bitsandbytes) */
  QLORA_FP4 = 1, /* E2M1 float, sign-magnitude, bitsandbytes' code order */
  QLORA_INT4 = 2 /* symmetric integers k/7, k in [-7, 7] (code 0 unused), a baseline */
} qlora_quant_type;

typedef enum qlora_copy_kind {
  QLORA_HOST_TO_DEVICE = 0,
  QLORA_DEVICE_TO_HOST = 1,
  QLORA_DEVICE_TO_DEVICE = 2
} qlora_copy_kind;

/* Ledger snapshot. Fixed layout: 23 uint64_t, read as an array by foreign callers. */
typedef struct qlora_ledger_snapshot {
  uint64_t current[QLORA_NUM_CATEGORIES]; /* bytes live now, per category */
  uint64_t peak[QLORA_NUM_CATEGORIES];    /* highest current[c] since the last peak reset */
  uint64_t total_current;                 /* sum of current[] */
  uint64_t total_peak;                    /* highest total_current since the last peak reset */
  uint64_t budget;                        /* 0 = unlimited */
  uint64_t live_allocations;              /* number of allocations not yet freed */
  uint64_t device_free;                   /* CUDA: driver's free bytes; CPU: 0 (not measured) */
  uint64_t device_total;                  /* CUDA: driver's total bytes; CPU: physical RAM */
  uint64_t alignment;                     /* every allocation is aligned to this many bytes */
} qlora_ledger_snapshot;

/* ---- library ---------------------------------------------------------------------------- */

/* QLORA_ABI_VERSION of the built library; a loader refuses a mismatch. */
QLORA_API uint32_t qlora_abi_version(void);
/* "cpu" or "cuda" (static string). */
QLORA_API const char* qlora_backend_name(void);
/* Message of the last failed call on this thread ("" if none). Valid until the next failing call. */
QLORA_API const char* qlora_last_error(void);
/* Makes the backend ready; idempotent. CUDA: QLORA_ERR_NO_DEVICE when no GPU can be used. */
QLORA_API qlora_status qlora_init(void);
/* Writes a NUL-terminated description of the device (name, memory, threads) into buf. */
QLORA_API qlora_status qlora_device_name(char* buf, uint64_t buf_len);
/* Waits for all queued work of the backend. */
QLORA_API qlora_status qlora_synchronize(void);

/* ---- memory and the ledger -------------------------------------------------------------- */

/* Allocates bytes (> 0) of device memory counted under category; *out gets the pointer. Fails with
 * QLORA_ERR_OUT_OF_MEMORY (message naming request, budget and ledger) past the budget. */
QLORA_API qlora_status qlora_malloc(void** out, uint64_t bytes, int32_t category);
/* Frees a pointer from qlora_malloc. Unknown pointers are an error, never a crash; NULL is a no-op. */
QLORA_API qlora_status qlora_free(void* dptr);
/* Copies bytes between host and device or within the device (see qlora_copy_kind). */
QLORA_API qlora_status qlora_memcpy(void* dst, const void* src, uint64_t bytes, int32_t kind);
/* Sets bytes of device memory to the byte value. */
QLORA_API qlora_status qlora_memset(void* dptr, int32_t value, uint64_t bytes);
/* Fills *out with the ledger (current, peak, budget, driver figures). */
QLORA_API qlora_status qlora_memory_stats(qlora_ledger_snapshot* out);
/* Sets every peak to the current value. */
QLORA_API qlora_status qlora_reset_peak(void);
/* Limits the ledger's total to bytes (0 = unlimited). Live allocations are never revoked. */
QLORA_API qlora_status qlora_set_memory_budget(uint64_t bytes);

/* ---- elementwise ------------------------------------------------------------------------ */

/* Converts n values between floating dtypes (f32, bf16, f16); round to nearest even. */
QLORA_API qlora_status qlora_cast(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
                                  uint64_t n);
/* Fills n values (f32, bf16, f16) with N(mean, std^2) from a counter-based generator: the same
 * (seed, index) gives the same value on every thread count; backends agree to float rounding. */
QLORA_API qlora_status qlora_fill_normal(void* dptr, int32_t dtype, uint64_t n, float mean, float std,
                                         uint64_t seed);

/* ---- 4-bit blockwise quantization ------------------------------------------------------- */

/* The 16 code values of quant_type (as stored in a file's quant_map) into out[16] (host). */
QLORA_API qlora_status qlora_quant_map(int32_t quant_type, float* out16);
/* Quantizes n values of x (f32, bf16, f16) in blocks of blocksize (even, 32..4096; the last block
 * may be partial and gets its own absmax). packed gets (n+1)/2 bytes, the first value of a pair in
 * the high nibble; absmax gets ceil(n/blocksize) f32. Each value maps to the nearest code by the
 * midpoints between sorted codes, a value exactly on a midpoint to the lower one. An all-zero block
 * has absmax 0 and dequantizes to zeros. NaN/Inf in x: QLORA_ERR_NON_FINITE. */
QLORA_API qlora_status qlora_quantize_4bit(const void* x, int32_t x_dtype, uint64_t n, int32_t quant_type,
                                           uint64_t blocksize, uint8_t* packed, float* absmax);
/* out[i] = code[nibble(i)] * absmax[i / blocksize], written as out_dtype (f32, bf16, f16). */
QLORA_API qlora_status qlora_dequantize_4bit(const uint8_t* packed, const float* absmax, uint64_t n,
                                             int32_t quant_type, uint64_t blocksize, void* out,
                                             int32_t out_dtype);

/* ---- double quantization of the constants (8-bit dynamic map) --------------------------- */

/* The 256 sorted values of bitsandbytes' signed dynamic map into out[256] (host). */
QLORA_API qlora_status qlora_dynamic_map(float* out256);
/* Double quantization of n absmax values (finite, device): offset = mean(absmax); then
 * (absmax - offset) is quantized with the dynamic map in blocks of nested_blocksize (32..4096):
 * codes[n] u8, nested_absmax[ceil(n/nested_blocksize)] f32; *offset_out (host) gets the mean. */
QLORA_API qlora_status qlora_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                             uint8_t* codes, float* nested_absmax, float* offset_out);
/* absmax[i] = map[codes[i]] * nested_absmax[i / nested_blocksize] + offset. */
QLORA_API qlora_status qlora_double_dequantize(const uint8_t* codes, const float* nested_absmax,
                                               float offset, uint64_t n, uint64_t nested_blocksize,
                                               float* absmax);

/* ---- elementwise, for layers -------------------------------------------------------------- */

/* y[i] = alpha * x[i] + beta * y[i] for n values; x and y of one float dtype (f32, bf16, f16),
 * computed in f32. beta = 0 ignores the old y (even NaN). */
QLORA_API qlora_status qlora_axpby(float alpha, const void* x, float beta, void* y, int32_t dtype, uint64_t n);
/* Inverted dropout: y[i] = keep(seed, i) ? x[i] / (1 - p) : 0, p in [0, 1). The mask is a function of
 * (seed, i) only, so the backward pass is the same call on dy with the same seed. x == y is allowed. */
QLORA_API qlora_status qlora_dropout(const void* x, void* y, int32_t dtype, uint64_t n, float p, uint64_t seed);
/* Fills n values (f32, bf16, f16) uniformly in [low, high) from the counter-based generator. */
QLORA_API qlora_status qlora_fill_uniform(void* dptr, int32_t dtype, uint64_t n, float low, float high,
                                          uint64_t seed);

/* ---- GEMM --------------------------------------------------------------------------------- */

/* Row-major, contiguous, batched: for each b < batch,
 *   C_b = alpha * op(A_b) @ op(B_b) + beta * C_b,   op(A) is m x k, op(B) is k x n, C is m x n.
 * A is stored m x k (trans_a = 0) or k x m (trans_a = 1); B is stored k x n or n x k (trans_b = 1).
 * A and B share ab_dtype (f32 or bf16); C is f32 or bf16; products accumulate in f32. stride_* are
 * elements between consecutive matrices of a batch (0 = the same matrix for every b). beta = 0
 * ignores the old C. */
QLORA_API qlora_status qlora_gemm(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k,
                                  float alpha, const void* a, const void* b, int32_t ab_dtype, float beta,
                                  void* c, int32_t c_dtype, uint64_t batch, uint64_t stride_a,
                                  uint64_t stride_b, uint64_t stride_c);
/* Bytes of device workspace qlora_gemm_4bit needs for this shape (the caller allocates it, under the
 * workspace category, so that the ledger sees it). */
QLORA_API qlora_status qlora_gemm_4bit_workspace(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k,
                                                 uint64_t* bytes_out);
/* C = alpha * X @ op(dequant(W)) + beta * C without a 16-bit copy of the whole W on the CPU (tiles
 * dequantized into the workspace), with a reused workspace or a fused GEMV on CUDA. X is m x k; W
 * (packed 4-bit codes + f32 absmax per block, as qlora_quantize_4bit makes them) is stored n x k
 * (trans_w = 1: the forward pass of a linear layer, C = X W^T) or k x n (trans_w = 0: the input
 * gradient, dX = dY W). X and C are f32 or bf16; products accumulate in f32. */
QLORA_API qlora_status qlora_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                                       const void* x, int32_t x_dtype, const uint8_t* packed,
                                       const float* absmax, int32_t quant_type, uint64_t blocksize,
                                       float beta, void* c, int32_t c_dtype, void* workspace,
                                       uint64_t workspace_bytes);

#ifdef __cplusplus
}
#endif

#endif /* QLORA_H */
