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
#define QLORA_ABI_VERSION 8

typedef enum qlora_status {
  QLORA_OK = 0,
  QLORA_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad size, dtype, enum or alignment */
  QLORA_ERR_OUT_OF_MEMORY = 2,    /* over the memory budget, or the allocator/driver refused; a call's
                                     own scratch counts (category workspace) and is reserved before its
                                     first write, so a call refused this way has written none of its
                                     outputs and may run again once memory is freed */
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
  QLORA_CAT_WORKSPACE = 7,
  QLORA_CAT_KV_CACHE = 8 /* keys and values kept for generation (ABI 7) */
} qlora_category;
#define QLORA_NUM_CATEGORIES 9

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

/* Ledger snapshot. Fixed layout: 30 uint64_t (ABI 7: 9 categories), read as an array by foreign
 * callers. ABI 6 added process_used, the process's own view of the memory it holds, to compare with the
 * ledger: every byte the library allocates for a call (its scratch included) is counted under a category
 * while it is held, so what the ledger does not account for shows as the difference. */
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
  uint64_t host_current;                  /* host pool (qlora_host_malloc): bytes live now */
  uint64_t host_peak;                     /* host pool: highest host_current since the last peak reset */
  uint64_t process_used;                  /* CPU: native heap in use (glibc mallinfo2: uordblks + hblkhd,
                                             every allocator user of the process, oneDNN included);
                                             CUDA: the driver's used bytes (device_total - device_free) */
  uint64_t refused_bytes;                 /* the last request refused as out of memory (0: none yet) */
  uint64_t refused_category;              /* its qlora_category */
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
 * QLORA_ERR_OUT_OF_MEMORY (message naming request, budget and ledger) past the budget, and for more
 * than 2^46 bytes (larger than any device). */
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

/* Allocates bytes of zero-filled host memory for paged-out data (CUDA: pinned, for fast asynchronous
 * copies; CPU: aligned). Counted in the host pool of the ledger, apart from device memory and the budget.
 * It is host memory on every backend: copy to and from it with qlora_memcpy's device kinds only on the
 * device side (QLORA_HOST_TO_DEVICE from it, QLORA_DEVICE_TO_HOST into it). */
QLORA_API qlora_status qlora_host_malloc(void** out, uint64_t bytes);
/* Frees a pointer from qlora_host_malloc (unknown pointers are an error; NULL is a no-op). */
QLORA_API qlora_status qlora_host_free(void* hptr);

/* ---- elementwise and reductions --------------------------------------------------------- */

/* Converts n values between floating dtypes (f32, bf16, f16); round to nearest even. */
QLORA_API qlora_status qlora_cast(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
                                  uint64_t n);
/* Fills n values (f32, bf16, f16) with N(mean, std^2) from a counter-based generator: the same
 * (seed, index) gives the same value on every thread count; backends agree to float rounding. */
QLORA_API qlora_status qlora_fill_normal(void* dptr, int32_t dtype, uint64_t n, float mean, float std,
                                         uint64_t seed);
/* y[i] = alpha * x[i] + beta * y[i] for n values; x and y of one float dtype (f32, bf16, f16),
 * computed in f32. beta = 0 ignores the old y (even NaN). */
QLORA_API qlora_status qlora_axpby(float alpha, const void* x, float beta, void* y, int32_t dtype, uint64_t n);
/* Inverted dropout: y[i] = keep(seed, i) ? x[i] / (1 - p) : 0, p in [0, 1). The mask is a function of
 * (seed, i) only, so the backward pass is the same call on dy with the same seed. x == y is allowed. */
QLORA_API qlora_status qlora_dropout(const void* x, void* y, int32_t dtype, uint64_t n, float p, uint64_t seed);
/* Fills n values (f32, bf16, f16) uniformly in [low, high) from the counter-based generator. */
QLORA_API qlora_status qlora_fill_uniform(void* dptr, int32_t dtype, uint64_t n, float low, float high,
                                          uint64_t seed);
/* *out (host) = sum of x[i]^2 in double, in the fixed order of the mean (chunks of 4096): the
 * squared norm for clipping by global norm. NaN/Inf give a non-finite sum, not an error. */
QLORA_API qlora_status qlora_sum_squares(const void* x, int32_t dtype, uint64_t n, double* out);

/* ---- 4-bit blockwise quantization ------------------------------------------------------- */

/* The 16 code values of quant_type (as stored in a file's quant_map) into out[16] (host). */
QLORA_API qlora_status qlora_quant_map(int32_t quant_type, float* out16);
/* Quantizes n (> 0) values of x (f32, bf16, f16) in blocks of blocksize (a power of two in 32..4096;
 * the last block
 * may be partial and gets its own absmax). packed gets (n+1)/2 bytes, the first value of a pair in
 * the high nibble; absmax gets ceil(n/blocksize) f32. Each value maps to the nearest code by the
 * midpoints between sorted codes, a value exactly on a midpoint to the lower one. An all-zero block
 * has absmax 0 and dequantizes to zeros. NaN/Inf in x: QLORA_ERR_NON_FINITE. */
QLORA_API qlora_status qlora_quantize_4bit(const void* x, int32_t x_dtype, uint64_t n, int32_t quant_type,
                                           uint64_t blocksize, uint8_t* packed, float* absmax);
/* A stored 4-bit tensor (ABI 8): the packed codes as qlora_quantize_4bit makes them and one scale per
 * block, plain (absmax) or double-quantized (the codes, nested absmax and offset qlora_double_quantize
 * makes of them). The functions that read a weight decode a double-quantized block's scale on the fly,
 * absmax[b] = map[absmax_codes[b]] * nested_absmax[b / nested_blocksize] + offset (each operation rounded
 * on its own, as qlora_double_dequantize), so no f32 copy of the constants is ever made. Fixed layout,
 * 56 bytes. */
typedef struct qlora_weight4 {
  const uint8_t* packed;        /* (n+1)/2 bytes, the first value of a pair in the high nibble, device */
  const float* absmax;          /* ceil(n/blocksize) f32, device; NULL when double-quantized */
  const uint8_t* absmax_codes;  /* double-quantized: ceil(n/blocksize) codes of the signed dynamic map */
  const float* nested_absmax;   /* double-quantized: ceil(blocks/nested_blocksize) f32 */
  float offset;                 /* double-quantized: the mean of the absmax, added back (finite) */
  int32_t quant_type;           /* qlora_quant_type */
  uint64_t blocksize;           /* as for qlora_quantize_4bit */
  uint64_t nested_blocksize;    /* double-quantized: a power of two in 32..4096; else ignored */
} qlora_weight4;

/* out[i] = code[nibble(i)] * absmax[i / blocksize] for n (> 0) values of w (blocksize as for
 * qlora_quantize_4bit), written as out_dtype (f32, bf16, f16). */
QLORA_API qlora_status qlora_dequantize_4bit(const qlora_weight4* w, uint64_t n, void* out, int32_t out_dtype);

/* ---- 8-bit dynamic maps and double quantization of the constants ------------------------ */

/* The 256 sorted values of bitsandbytes' signed dynamic map into out[256] (host). */
QLORA_API qlora_status qlora_dynamic_map(float* out256);
/* The 256 sorted values of bitsandbytes' unsigned dynamic map (create_dynamic_map(signed=False)), the
 * code of the 8-bit AdamW's v, into out[256] (host). */
QLORA_API qlora_status qlora_dynamic_map_unsigned(float* out256);
/* Double quantization of n absmax values (finite, device): offset = mean(absmax); then
 * (absmax - offset) is quantized with the dynamic map in blocks of nested_blocksize (a power of two
 * in 32..4096):
 * codes[n] u8, nested_absmax[ceil(n/nested_blocksize)] f32; *offset_out (host) gets the mean. */
QLORA_API qlora_status qlora_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                             uint8_t* codes, float* nested_absmax, float* offset_out);
/* absmax[i] = map[codes[i]] * nested_absmax[i / nested_blocksize] + offset (offset finite, n > 0,
 * nested_blocksize as for qlora_double_quantize). */
QLORA_API qlora_status qlora_double_dequantize(const uint8_t* codes, const float* nested_absmax,
                                               float offset, uint64_t n, uint64_t nested_blocksize,
                                               float* absmax);

/* ---- GEMM ------------------------------------------------------------------------------- */

/* Row-major, contiguous, batched: for each b < batch,
 *   C_b = alpha * op(A_b) @ op(B_b) + beta * C_b,   op(A) is m x k, op(B) is k x n, C is m x n.
 * A is stored m x k (trans_a = 0) or k x m (trans_a = 1); B is stored k x n or n x k (trans_b = 1).
 * A and B share ab_dtype (f32 or bf16); C is f32 or bf16; products accumulate in f32. stride_* are
 * elements between consecutive matrices of a batch (0 = the same matrix for every b). beta = 0
 * ignores the old C. m, n, k and batch are > 0, and m, n, k below 2^31 (BLAS counts in int). */
QLORA_API qlora_status qlora_gemm(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k,
                                  float alpha, const void* a, const void* b, int32_t ab_dtype, float beta,
                                  void* c, int32_t c_dtype, uint64_t batch, uint64_t stride_a,
                                  uint64_t stride_b, uint64_t stride_c);
/* Bytes of device workspace qlora_gemm_4bit needs for this shape (the caller allocates it, under the
 * workspace category, so that the ledger sees it); 0 when the shape needs none. trans_w and the sizes
 * as for qlora_gemm_4bit. */
QLORA_API qlora_status qlora_gemm_4bit_workspace(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k,
                                                 uint64_t* bytes_out);
/* A LoRA bypass added to a 4-bit product (ABI 8): C += scaling * (X A^T) B^T, the rank-r update of a
 * LoRA layer over a frozen 4-bit base, with h = X A^T written for the backward pass. A is rank x k and B
 * is n x rank, h is m x rank, all of dtype (X's). Fixed layout, 40 bytes. */
typedef struct qlora_lora4 {
  const void* a;   /* rank x k, device */
  const void* b;   /* n x rank, device */
  void* h;         /* m x rank, device: X A^T (overwritten) */
  uint64_t rank;   /* > 0 */
  float scaling;   /* alpha / rank (finite) */
  int32_t dtype;   /* of a, b and h: X's */
} qlora_lora4;

/* C = alpha * X @ op(dequant(W)) + beta * C without a 16-bit copy of the whole W: a few rows of X
 * (decoding a batch of tokens: up to 8 on the CPU, 4 on CUDA) in one pass over W that decodes each block
 * in registers (a GEMV); more rows through tiles of W decoded where they are multiplied: on the CPU into
 * the workspace (on CPUs with AVX512_BF16, up to 64 bf16 rows: small panels that stay in cache), on CUDA
 * into shared memory (no workspace). X is m x k; W is stored n x k (trans_w = 1: the
 * forward pass of a linear layer, C = X W^T) or k x n (trans_w = 0: the input gradient, dX = dY W). X and
 * C are f32 or bf16; products accumulate in f32. m, n, k > 0 and below 2^31; workspace (4-byte aligned) of
 * at least the bytes qlora_gemm_4bit_workspace gives, or anything when that is 0. lora (trans_w = 1 only;
 * NULL: none) adds a LoRA layer's bypass in the same call. */
QLORA_API qlora_status qlora_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                                       const void* x, int32_t x_dtype, const qlora_weight4* w,
                                       const qlora_lora4* lora, float beta, void* c, int32_t c_dtype,
                                       void* workspace, uint64_t workspace_bytes);

/* ---- optimizers ------------------------------------------------------------------------- */

/* One contiguous piece of a parameter and its state: a whole tensor, or the part of it whose
 * optimizer state lies in one page (paged optimizers). Fixed layout, 56 bytes. */
typedef struct qlora_adamw_segment {
  void* param;          /* n values of param_dtype (f32 or bf16), device */
  const void* grad;     /* n values of grad_dtype (f32 or bf16), device */
  float* m;             /* n f32: first moment, device */
  float* v;             /* n f32: second moment, device */
  float* master;        /* n f32 master weights for a bf16 param, or NULL to update param directly */
  uint64_t n;
  int32_t param_dtype;
  int32_t grad_dtype;
} qlora_adamw_segment;

/* One fused AdamW step (decoupled weight decay, as torch.optim.AdamW) over every segment, in f32, each
 * operation rounded on its own:
 *   g = grad * grad_scale                       (grad_scale: clipping by global norm, 1 = none)
 *   w = master ? master : param
 *   w = w * (1 - lr * weight_decay)
 *   m = beta1 * m + (1 - beta1) * g
 *   v = beta2 * v + (1 - beta2) * g * g
 *   w = w - (lr / bias_correction1) * m / (sqrt(v) / sqrt(bias_correction2) + eps)
 *   master ? (master = w, param = round(w)) : (param = round(w))
 * with bias_correction1 = 1 - beta1^step and bias_correction2 = 1 - beta2^step given by the caller.
 * Every scalar is finite; beta1 and beta2 in [0, 1), eps > 0, bias corrections in (0, 1]. segments is a
 * host array of count descriptors (count = 0 is a no-op), each with 0 < n <= 2^44 values, 2^46 in all. */
QLORA_API qlora_status qlora_adamw_step(const qlora_adamw_segment* segments, uint64_t count, float lr, float beta1,
                                        float beta2, float eps, float weight_decay, float bias_correction1,
                                        float bias_correction2, float grad_scale);
/* 8-bit AdamW (bitsandbytes' blockwise 8-bit Adam): the same update, with m and v kept in 8 bits per value
 * in blocks of QLORA_ADAMW8_BLOCK values: m[i] = signed_map[m_codes[i]] * m_absmax[i / 256] and
 * v[i] = unsigned_map[v_codes[i]] * v_absmax[i / 256] (qlora_dynamic_map, qlora_dynamic_map_unsigned):
 * 2 bytes per parameter plus 8 per block instead of 8. Fixed layout, 72 bytes; blocks start at index 0 of
 * each segment (the last may be partial). States start as codes of 0 with absmax 0. */
#define QLORA_ADAMW8_BLOCK 256
typedef struct qlora_adamw8_segment {
  void* param;          /* n values of param_dtype (f32 or bf16), device */
  const void* grad;     /* n values of grad_dtype (f32 or bf16), device */
  uint8_t* m_codes;     /* n codes of the signed dynamic map, device */
  uint8_t* v_codes;     /* n codes of the unsigned dynamic map, device */
  float* m_absmax;      /* ceil(n / 256) f32, device */
  float* v_absmax;      /* ceil(n / 256) f32, device */
  float* master;        /* n f32 master weights for a bf16 param, or NULL */
  uint64_t n;
  int32_t param_dtype;
  int32_t grad_dtype;
} qlora_adamw8_segment;

/* One fused 8-bit AdamW step over every segment: per block, m and v are decoded, updated and applied to
 * the weights exactly as in qlora_adamw_step (with the decoded m and v in place of the f32 states), then
 * encoded again: absmax = the largest |m| (largest v) of the block's new values, code = the nearest map
 * value of m / absmax (v / absmax), a value on a midpoint going to the lower code; a block of zeros keeps
 * absmax 0. */
QLORA_API qlora_status qlora_adamw8_step(const qlora_adamw8_segment* segments, uint64_t count, float lr,
                                         float beta1, float beta2, float eps, float weight_decay,
                                         float bias_correction1, float bias_correction2, float grad_scale);

/* ---- the ops of a LLaMA-style model (forward and backward side by side) ---------------------
 * Activations are row-major [rows, dim] with rows = batch * seq, in f32 or bf16 (dtype), computed in
 * f32; every size is > 0. A backward function writes the input gradients (overwriting) and ADDS weight gradients into
 * their buffers (accumulation over micro-batches); a NULL weight-gradient pointer skips it (frozen). */

/* out[r, :] = table[tokens[r], :]. Tokens outside [0, vocab) are an error; vocab < 2^31 (int32 tokens),
 * here and in qlora_cross_entropy. */
QLORA_API qlora_status qlora_embedding_forward(const int32_t* tokens, uint64_t rows, const void* table,
                                               uint64_t vocab, uint64_t dim, void* out, int32_t dtype);
/* dtable[tokens[r], :] += dout[r, :]. */
QLORA_API qlora_status qlora_embedding_backward(const int32_t* tokens, uint64_t rows, const void* dout,
                                                uint64_t vocab, uint64_t dim, void* dtable, int32_t dtype);
/* out = x * rstd * weight with rstd[r] = 1 / sqrt(mean(x[r, :]^2) + eps) (eps finite, > 0), saved (f32)
 * for backward. */
QLORA_API qlora_status qlora_rmsnorm_forward(const void* x, const void* weight, uint64_t rows, uint64_t dim,
                                             float eps, void* out, float* rstd, int32_t dtype);
/* dx from dout; dweight += sum over rows of dout * x * rstd (NULL: frozen weight). */
QLORA_API qlora_status qlora_rmsnorm_backward(const void* dout, const void* x, const void* weight,
                                              const float* rstd, uint64_t rows, uint64_t dim, void* dx,
                                              void* dweight, int32_t dtype);
/* Rotary embedding in place on x [batch, seq, heads, head_dim] (head_dim even): the pair (x[i],
 * x[i + head_dim/2]) at position t turns by t * theta^(-2i / head_dim), the half-split layout of Hugging
 * Face transformers' LLaMA (rotate_half), so that its checkpoints load as they are; inverse = 1 turns
 * back (the backward). ABI 5: earlier versions turned interleaved pairs (x[2i], x[2i+1]). */
QLORA_API qlora_status qlora_rope(void* x, uint64_t batch, uint64_t seq, uint64_t heads, uint64_t head_dim,
                                  float theta, int32_t inverse, int32_t dtype);
/* Causal attention: q [batch, seq, heads, head_dim], k and v [batch, seq, kv_heads, head_dim] (heads a
 * multiple of kv_heads: grouped-query attention; head_dim <= 128, above is QLORA_ERR_UNSUPPORTED; seq
 * below 2^31), out like q; scale 1/sqrt(head_dim). lse [batch,
 * heads, seq] (f32) keeps each row's log-sum-exp so backward recomputes the probabilities. */
QLORA_API qlora_status qlora_attention_forward(const void* q, const void* k, const void* v, uint64_t batch,
                                               uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                               uint64_t head_dim, void* out, float* lse, int32_t dtype);
/* dq, dk, dv (overwritten) from dout, the inputs, out and lse of the forward pass. */
QLORA_API qlora_status qlora_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                                                const void* out, const float* lse, uint64_t batch,
                                                uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                                uint64_t head_dim, void* dq, void* dk, void* dv,
                                                int32_t dtype);
/* SwiGLU: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, n values. */
QLORA_API qlora_status qlora_swiglu_forward(const void* gate, const void* up, uint64_t n, void* out,
                                            int32_t dtype);
/* dgate and dup (overwritten) from dout. */
QLORA_API qlora_status qlora_swiglu_backward(const void* dout, const void* gate, const void* up, uint64_t n,
                                             void* dgate, void* dup, int32_t dtype);
/* Softmax cross-entropy per row: losses[r] (f32, device) = logsumexp(logits[r]) - logits[r, targets[r]],
 * 0 where targets[r] = -1 (ignored). If dlogits is not NULL it gets (softmax - onehot) * grad_scale
 * (0 on ignored rows); it may alias logits. Other targets outside [0, vocab) are an error. */
QLORA_API qlora_status qlora_cross_entropy(const void* logits, const int32_t* targets, uint64_t rows,
                                           uint64_t vocab, float* losses, void* dlogits, float grad_scale,
                                           int32_t dtype);

/* ---- generation: a key/value cache and attention over it --------------------------------------
 * A layer's cache holds k and v as [batch, capacity, kv_heads, head_dim] each (the dtype of the
 * activations): the keys and values of every token seen so far, RoPE already applied to the keys.
 * A generation step appends the new tokens' k and v (qlora_kv_cache_append), then attends the new
 * queries over the cache (qlora_attention_cached): a prompt (prefill, causal within its tokens) or one
 * token per sequence (decode). Positions are explicit (qlora_rope_at), so that sequences of a batch padded
 * on the left start at position 0 at their first real token. ABI 7. */

/* RoPE as qlora_rope, in place on x [rows, heads, head_dim], row r turned to the position positions[r]
 * (device int32, any value: a negative position turns the other way). */
QLORA_API qlora_status qlora_rope_at(void* x, uint64_t rows, uint64_t heads, uint64_t head_dim,
                                     const int32_t* positions, float theta, int32_t inverse, int32_t dtype);
/* Copies k and v [batch, tokens, kv_dim] (kv_dim = kv_heads * head_dim) into rows at .. at + tokens of
 * every sequence of k_cache and v_cache [batch, capacity, kv_dim]; at + tokens <= capacity. */
QLORA_API qlora_status qlora_kv_cache_append(const void* k, const void* v, uint64_t batch, uint64_t tokens,
                                             uint64_t kv_dim, void* k_cache, void* v_cache, uint64_t capacity,
                                             uint64_t at, int32_t dtype);
/* Attention of q [batch, tokens, heads, head_dim], the queries at cache rows past .. past + tokens - 1,
 * over the cache (their own keys already appended; past + tokens <= capacity): query t of sequence b
 * attends the keys max(first_key[b], 0) .. past + t of its sequence (first_key: device int32 [batch], the
 * first real token after left padding; NULL: 0 for every sequence), scale 1/sqrt(head_dim); out like q.
 * A query with no key to attend (first_key[b] > past + t: a padding position) gets zeros. heads, kv_heads
 * and head_dim as for qlora_attention_forward. */
QLORA_API qlora_status qlora_attention_cached(const void* q, const void* k_cache, const void* v_cache,
                                              uint64_t batch, uint64_t tokens, uint64_t past, uint64_t capacity,
                                              uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                                              const int32_t* first_key, void* out, int32_t dtype);

#ifdef __cplusplus
}
#endif

#endif /* QLORA_H */
