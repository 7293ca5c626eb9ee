// validate_model.h: argument checks and shared math of the LLaMA-style model ops (qlora.h, section
// "the ops of a LLaMA-style model"), used by cpu/model.cpp and gpu/model.cu so that both backends
// accept and refuse the same calls and compute the same formulas.
//
// CONTRACT between the backends (changes are announced to both authors):
//  - every entry point calls its check_<op> first and returns its status when not QLORA_OK;
//  - activations (and weights, gradients of weights) are f32 or bf16 (f16 is refused), computed in f32;
//  - rstd, lse and losses are always f32; tokens and targets are int32;
//  - weight gradients (dtable, dweight) may be NULL: that gradient is skipped (frozen weight);
//  - token / target values are checked by the backend while it reads them (they may live on the
//    device): bad_token() gives both backends the same message;
//  - RoPE angles, SiLU and the sigmoid use the QLORA_HD helpers below. Backends agree to float rounding
//    of the transcendental functions (sinf, cosf, expf differ in the last bits between glibc and CUDA),
//    not bit for bit.
#pragma once
#include <cmath>
#include <cstdint>

#include "codes.h"
#include "half.h"
#include "status.h"
#include "validate.h"

namespace qlora {

// ---- shared checks --------------------------------------------------------------------------------

inline qlora_status check_act_dtype(int32_t dtype, const char* fn) {
  if (dtype != QLORA_F32 && dtype != QLORA_BF16)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: dtype must be f32 or bf16, got %s", fn, dtype_name(dtype));
  return QLORA_OK;
}

// Fails naming the first size that is 0 (names and values in pairs, up to 5).
inline qlora_status check_nonzero(const char* fn, const char* n1, uint64_t v1, const char* n2 = nullptr,
                                  uint64_t v2 = 1, const char* n3 = nullptr, uint64_t v3 = 1,
                                  const char* n4 = nullptr, uint64_t v4 = 1, const char* n5 = nullptr,
                                  uint64_t v5 = 1) {
  const char* names[5] = {n1, n2, n3, n4, n5};
  const uint64_t values[5] = {v1, v2, v3, v4, v5};
  for (int i = 0; i < 5; i++)
    if (names[i] && values[i] == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s is 0", fn, names[i]);
  return QLORA_OK;
}

// Alignment of an optional buffer (NULL passes).
inline qlora_status check_alignment_opt(const void* p, uint64_t align, const char* fn, const char* what) {
  return p ? check_alignment(p, align, fn, what) : QLORA_OK;
}

// The same message from both backends for a token or target outside [0, vocab).
inline qlora_status bad_token(const char* fn, const char* what, uint64_t row, int32_t value, uint64_t vocab) {
  return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s[%llu] = %d is outside [0, %llu)", fn, what,
              (unsigned long long)row, value, (unsigned long long)vocab);
}

// int32 tokens index the vocabulary: it must fit in an int32.
inline qlora_status check_vocab(uint64_t vocab, const char* fn) {
  if (vocab > 0x7fffffffull)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: vocab %llu does not fit in int32", fn,
                (unsigned long long)vocab);
  return QLORA_OK;
}

// ---- one check per entry point ----------------------------------------------------------------------

inline qlora_status check_embedding_forward(const int32_t* tokens, uint64_t rows, const void* table, uint64_t vocab,
                                            uint64_t dim, const void* out, int32_t dtype) {
  const char* fn = "look up embeddings";
  QLORA_CHECK_PTR(tokens, fn);
  QLORA_CHECK_PTR(table, fn);
  QLORA_CHECK_PTR(out, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "vocab", vocab, "dim", dim);
  if (s == QLORA_OK) s = check_vocab(vocab, fn);
  if (s == QLORA_OK) s = check_alignment(tokens, 4, fn, "tokens");
  if (s == QLORA_OK) s = check_alignment(table, dtype_size(dtype), fn, "table");
  if (s == QLORA_OK) s = check_alignment(out, dtype_size(dtype), fn, "out");
  return s;
}

// dtable NULL: frozen table, the call does nothing (after the checks).
inline qlora_status check_embedding_backward(const int32_t* tokens, uint64_t rows, const void* dout, uint64_t vocab,
                                             uint64_t dim, const void* dtable, int32_t dtype) {
  const char* fn = "compute the embedding gradient";
  QLORA_CHECK_PTR(tokens, fn);
  QLORA_CHECK_PTR(dout, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "vocab", vocab, "dim", dim);
  if (s == QLORA_OK) s = check_vocab(vocab, fn);
  if (s == QLORA_OK) s = check_alignment(tokens, 4, fn, "tokens");
  if (s == QLORA_OK) s = check_alignment(dout, dtype_size(dtype), fn, "dout");
  if (s == QLORA_OK) s = check_alignment_opt(dtable, dtype_size(dtype), fn, "dtable");
  return s;
}

inline qlora_status check_eps(float eps, const char* fn) {
  if (!(eps > 0.0f) || eps - eps != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: eps must be finite and > 0, got %g", fn, (double)eps);
  return QLORA_OK;
}

inline qlora_status check_rmsnorm_forward(const void* x, const void* weight, uint64_t rows, uint64_t dim, float eps,
                                          const void* out, const float* rstd, int32_t dtype) {
  const char* fn = "apply RMSNorm";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(weight, fn);
  QLORA_CHECK_PTR(out, fn);
  QLORA_CHECK_PTR(rstd, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "dim", dim);
  if (s == QLORA_OK) s = check_eps(eps, fn);
  if (s == QLORA_OK) s = check_alignment(x, dtype_size(dtype), fn, "x");
  if (s == QLORA_OK) s = check_alignment(weight, dtype_size(dtype), fn, "weight");
  if (s == QLORA_OK) s = check_alignment(out, dtype_size(dtype), fn, "out");
  if (s == QLORA_OK) s = check_alignment(rstd, 4, fn, "rstd");
  return s;
}

// dweight NULL: frozen weight.
inline qlora_status check_rmsnorm_backward(const void* dout, const void* x, const void* weight, const float* rstd,
                                           uint64_t rows, uint64_t dim, const void* dx, const void* dweight,
                                           int32_t dtype) {
  const char* fn = "compute the RMSNorm gradient";
  QLORA_CHECK_PTR(dout, fn);
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(weight, fn);
  QLORA_CHECK_PTR(rstd, fn);
  QLORA_CHECK_PTR(dx, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "dim", dim);
  if (s == QLORA_OK) s = check_alignment(dout, dtype_size(dtype), fn, "dout");
  if (s == QLORA_OK) s = check_alignment(x, dtype_size(dtype), fn, "x");
  if (s == QLORA_OK) s = check_alignment(weight, dtype_size(dtype), fn, "weight");
  if (s == QLORA_OK) s = check_alignment(rstd, 4, fn, "rstd");
  if (s == QLORA_OK) s = check_alignment(dx, dtype_size(dtype), fn, "dx");
  if (s == QLORA_OK) s = check_alignment_opt(dweight, dtype_size(dtype), fn, "dweight");
  return s;
}

// What qlora_rope and qlora_rope_at check alike, after their sizes (x, head_dim, theta, inverse, dtype).
inline qlora_status check_rope_common(const char* fn, const void* x, uint64_t head_dim, float theta, int32_t inverse,
                                      int32_t dtype) {
  if (head_dim % 2 != 0)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: head_dim %llu is odd", fn, (unsigned long long)head_dim);
  if (!(theta > 0.0f) || theta - theta != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: theta must be finite and > 0, got %g", fn, (double)theta);
  if (inverse != 0 && inverse != 1)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: inverse must be 0 or 1, got %d", fn, inverse);
  return check_alignment(x, dtype_size(dtype), fn, "x");
}

inline qlora_status check_rope(const void* x, uint64_t batch, uint64_t seq, uint64_t heads, uint64_t head_dim,
                               float theta, int32_t inverse, int32_t dtype) {
  const char* fn = "apply rotary embeddings";
  QLORA_CHECK_PTR(x, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "batch", batch, "seq", seq, "heads", heads, "head_dim", head_dim);
  return s == QLORA_OK ? check_rope_common(fn, x, head_dim, theta, inverse, dtype) : s;
}

inline qlora_status check_attention_dims(const char* fn, uint64_t batch, uint64_t seq, uint64_t heads,
                                         uint64_t kv_heads, uint64_t head_dim) {
  qlora_status s = check_nonzero(fn, "batch", batch, "seq", seq, "heads", heads, "kv_heads", kv_heads, "head_dim",
                                 head_dim);
  if (s != QLORA_OK) return s;
  if (heads % kv_heads != 0)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: heads %llu is not a multiple of kv_heads %llu", fn,
                (unsigned long long)heads, (unsigned long long)kv_heads);
  if (seq > 0x7fffffffull)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: seq must be below 2^31", fn);
  // Both backends accept the same calls: the CUDA kernels keep a head in shared memory (LLaMA uses 128).
  if (head_dim > 128)
    return fail(QLORA_ERR_UNSUPPORTED, "Cannot %s: head_dim %llu is above 128", fn, (unsigned long long)head_dim);
  return QLORA_OK;
}

inline qlora_status check_attention_forward(const void* q, const void* k, const void* v, uint64_t batch, uint64_t seq,
                                            uint64_t heads, uint64_t kv_heads, uint64_t head_dim, const void* out,
                                            const float* lse, int32_t dtype) {
  const char* fn = "compute attention";
  QLORA_CHECK_PTR(q, fn);
  QLORA_CHECK_PTR(k, fn);
  QLORA_CHECK_PTR(v, fn);
  QLORA_CHECK_PTR(out, fn);
  QLORA_CHECK_PTR(lse, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_attention_dims(fn, batch, seq, heads, kv_heads, head_dim);
  const uint64_t es = dtype_size(dtype);
  if (s == QLORA_OK) s = check_alignment(q, es, fn, "q");
  if (s == QLORA_OK) s = check_alignment(k, es, fn, "k");
  if (s == QLORA_OK) s = check_alignment(v, es, fn, "v");
  if (s == QLORA_OK) s = check_alignment(out, es, fn, "out");
  if (s == QLORA_OK) s = check_alignment(lse, 4, fn, "lse");
  return s;
}

inline qlora_status check_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                                             const void* out, const float* lse, uint64_t batch, uint64_t seq,
                                             uint64_t heads, uint64_t kv_heads, uint64_t head_dim, const void* dq,
                                             const void* dk, const void* dv, int32_t dtype) {
  const char* fn = "compute the attention gradient";
  QLORA_CHECK_PTR(dout, fn);
  QLORA_CHECK_PTR(q, fn);
  QLORA_CHECK_PTR(k, fn);
  QLORA_CHECK_PTR(v, fn);
  QLORA_CHECK_PTR(out, fn);
  QLORA_CHECK_PTR(lse, fn);
  QLORA_CHECK_PTR(dq, fn);
  QLORA_CHECK_PTR(dk, fn);
  QLORA_CHECK_PTR(dv, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_attention_dims(fn, batch, seq, heads, kv_heads, head_dim);
  const uint64_t es = dtype_size(dtype);
  if (s == QLORA_OK) s = check_alignment(dout, es, fn, "dout");
  if (s == QLORA_OK) s = check_alignment(q, es, fn, "q");
  if (s == QLORA_OK) s = check_alignment(k, es, fn, "k");
  if (s == QLORA_OK) s = check_alignment(v, es, fn, "v");
  if (s == QLORA_OK) s = check_alignment(out, es, fn, "out");
  if (s == QLORA_OK) s = check_alignment(lse, 4, fn, "lse");
  if (s == QLORA_OK) s = check_alignment(dq, es, fn, "dq");
  if (s == QLORA_OK) s = check_alignment(dk, es, fn, "dk");
  if (s == QLORA_OK) s = check_alignment(dv, es, fn, "dv");
  return s;
}

inline qlora_status check_swiglu_forward(const void* gate, const void* up, uint64_t n, const void* out, int32_t dtype) {
  const char* fn = "apply SwiGLU";
  QLORA_CHECK_PTR(gate, fn);
  QLORA_CHECK_PTR(up, fn);
  QLORA_CHECK_PTR(out, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "n", n);
  if (s == QLORA_OK) s = check_alignment(gate, dtype_size(dtype), fn, "gate");
  if (s == QLORA_OK) s = check_alignment(up, dtype_size(dtype), fn, "up");
  if (s == QLORA_OK) s = check_alignment(out, dtype_size(dtype), fn, "out");
  return s;
}

inline qlora_status check_swiglu_backward(const void* dout, const void* gate, const void* up, uint64_t n,
                                          const void* dgate, const void* dup, int32_t dtype) {
  const char* fn = "compute the SwiGLU gradient";
  QLORA_CHECK_PTR(dout, fn);
  QLORA_CHECK_PTR(gate, fn);
  QLORA_CHECK_PTR(up, fn);
  QLORA_CHECK_PTR(dgate, fn);
  QLORA_CHECK_PTR(dup, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "n", n);
  if (s == QLORA_OK) s = check_alignment(dout, dtype_size(dtype), fn, "dout");
  if (s == QLORA_OK) s = check_alignment(gate, dtype_size(dtype), fn, "gate");
  if (s == QLORA_OK) s = check_alignment(up, dtype_size(dtype), fn, "up");
  if (s == QLORA_OK) s = check_alignment(dgate, dtype_size(dtype), fn, "dgate");
  if (s == QLORA_OK) s = check_alignment(dup, dtype_size(dtype), fn, "dup");
  return s;
}

// dlogits NULL: losses only.
inline qlora_status check_cross_entropy(const void* logits, const int32_t* targets, uint64_t rows, uint64_t vocab,
                                        const float* losses, const void* dlogits, float grad_scale, int32_t dtype) {
  const char* fn = "compute the cross-entropy";
  QLORA_CHECK_PTR(logits, fn);
  QLORA_CHECK_PTR(targets, fn);
  QLORA_CHECK_PTR(losses, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "vocab", vocab);
  if (s == QLORA_OK) s = check_vocab(vocab, fn);
  if (s != QLORA_OK) return s;
  if (grad_scale - grad_scale != 0.0f)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: grad_scale is not finite", fn);
  s = check_alignment(logits, dtype_size(dtype), fn, "logits");
  if (s == QLORA_OK) s = check_alignment(targets, 4, fn, "targets");
  if (s == QLORA_OK) s = check_alignment(losses, 4, fn, "losses");
  if (s == QLORA_OK) s = check_alignment_opt(dlogits, dtype_size(dtype), fn, "dlogits");
  return s;
}

// ---- generation (the key/value cache) -----------------------------------------------------------------

inline qlora_status check_rope_at(const void* x, uint64_t rows, uint64_t heads, uint64_t head_dim,
                                  const int32_t* positions, float theta, int32_t inverse, int32_t dtype) {
  const char* fn = "apply rotary embeddings at positions";
  QLORA_CHECK_PTR(x, fn);
  QLORA_CHECK_PTR(positions, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "rows", rows, "heads", heads, "head_dim", head_dim);
  if (s == QLORA_OK) s = check_rope_common(fn, x, head_dim, theta, inverse, dtype);
  if (s == QLORA_OK) s = check_alignment(positions, 4, fn, "positions");
  return s;
}

inline qlora_status check_kv_cache_append(const void* k, const void* v, uint64_t batch, uint64_t tokens,
                                          uint64_t kv_dim, const void* k_cache, const void* v_cache,
                                          uint64_t capacity, uint64_t at, int32_t dtype) {
  const char* fn = "append to the key/value cache";
  QLORA_CHECK_PTR(k, fn);
  QLORA_CHECK_PTR(v, fn);
  QLORA_CHECK_PTR(k_cache, fn);
  QLORA_CHECK_PTR(v_cache, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_nonzero(fn, "batch", batch, "tokens", tokens, "kv_dim", kv_dim, "capacity", capacity);
  if (s != QLORA_OK) return s;
  if (at > capacity || tokens > capacity - at)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: rows %llu .. %llu do not fit a capacity of %llu", fn,
                (unsigned long long)at, (unsigned long long)(at + tokens), (unsigned long long)capacity);
  const uint64_t es = dtype_size(dtype);
  s = check_alignment(k, es, fn, "k");
  if (s == QLORA_OK) s = check_alignment(v, es, fn, "v");
  if (s == QLORA_OK) s = check_alignment(k_cache, es, fn, "k_cache");
  if (s == QLORA_OK) s = check_alignment(v_cache, es, fn, "v_cache");
  return s;
}

inline qlora_status check_attention_cached(const void* q, const void* k_cache, const void* v_cache, uint64_t batch,
                                           uint64_t tokens, uint64_t past, uint64_t capacity, uint64_t heads,
                                           uint64_t kv_heads, uint64_t head_dim, const int32_t* first_key,
                                           const void* out, int32_t dtype) {
  const char* fn = "compute attention over the cache";
  QLORA_CHECK_PTR(q, fn);
  QLORA_CHECK_PTR(k_cache, fn);
  QLORA_CHECK_PTR(v_cache, fn);
  QLORA_CHECK_PTR(out, fn);
  qlora_status s = check_act_dtype(dtype, fn);
  if (s == QLORA_OK) s = check_attention_dims(fn, batch, tokens, heads, kv_heads, head_dim);
  if (s == QLORA_OK) s = check_nonzero(fn, "capacity", capacity);
  if (s != QLORA_OK) return s;
  if (capacity > 0x7fffffffull)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: capacity must be below 2^31", fn);
  if (past > capacity || tokens > capacity - past)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: rows %llu .. %llu do not fit a capacity of %llu", fn,
                (unsigned long long)past, (unsigned long long)(past + tokens), (unsigned long long)capacity);
  const uint64_t es = dtype_size(dtype);
  s = check_alignment(q, es, fn, "q");
  if (s == QLORA_OK) s = check_alignment(k_cache, es, fn, "k_cache");
  if (s == QLORA_OK) s = check_alignment(v_cache, es, fn, "v_cache");
  if (s == QLORA_OK) s = check_alignment(out, es, fn, "out");
  if (s == QLORA_OK) s = check_alignment_opt(first_key, 4, fn, "first_key");
  return s;
}

// The keys query t (cache row past + t) of a sequence attends: [lo, hi) with lo = max(first_key, 0) and
// hi = past + t + 1; empty (a padding position, zeros out) when lo >= hi.
QLORA_HD uint64_t cached_first_key(const int32_t* first_key, uint64_t b) {
  return first_key && first_key[b] > 0 ? (uint64_t)first_key[b] : 0;
}

// ---- math both backends compute the same way ---------------------------------------------------------

// RoPE frequency of pair i (elements i and i + head_dim / 2 of a head, the half-split layout of
// transformers' LlamaForCausalLM): theta^(-2i / head_dim), computed in double and rounded to float, so
// that the CPU and GPU frequencies are identical.
QLORA_HD float rope_inv_freq(float theta, uint64_t i, uint64_t head_dim) {
  return (float)pow((double)theta, -2.0 * (double)i / (double)head_dim);
}

// RoPE angle at position t: t * inv_freq, rounded once from double (exact-ish for |t| up to 2^24; a
// negative position, qlora_rope_at's, turns the other way). Backends then take sinf/cosf of it: they agree
// to float rounding, not bit for bit.
QLORA_HD float rope_angle(int64_t t, float inv_freq) { return (float)((double)t * (double)inv_freq); }

// Rotates the pair (a, b) by the angle with cosine c and sine s: (a c - b s, a s + b c). The inverse
// rotation is the same with -s.
QLORA_HD void rope_rotate(float& a, float& b, float c, float s) {
  const float ra = a * c - b * s;
  const float rb = a * s + b * c;
  a = ra;
  b = rb;
}

// sigmoid(g) = 1 / (1 + exp(-g)): saturates cleanly to 0 and 1 for large |g| (no NaN).
QLORA_HD float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }

// SwiGLU forward value silu(g) * u.
QLORA_HD float swiglu_value(float g, float u) { return g * sigmoidf_(g) * u; }

// SwiGLU gradients for one element: dgate = dout * u * sig * (1 + g * (1 - sig)), dup = dout * silu(g).
QLORA_HD void swiglu_grad(float dout, float g, float u, float& dgate, float& dup) {
  const float sig = sigmoidf_(g);
  dgate = dout * u * sig * (1.0f + g * (1.0f - sig));
  dup = dout * g * sig;
}

}  // namespace qlora
