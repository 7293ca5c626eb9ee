// cpu/model.cpp: the ops of a LLaMA-style model, each forward beside its backward (qlora.h).
// gpu/model.cu implements the same functions; both validate with common/validate_model.h and share its
// math (the GPU's attention works row by row; this one runs on GEMMs, and exp runs 16 lanes wide where
// the CPU has AVX-512). Values are loaded as f32 (load_float), computed in f32 and stored in the caller's
// dtype. Every loop that writes a shared buffer runs in a fixed order, so results are the same on every run.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <cmath>
#include <cstring>
#include <new>

#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate_model.h"
#include "cpu.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

using namespace qlora;

namespace {

// Scratch for the parallel regions is a Workspace (cpu.h), allocated before them (an exception must not
// leave an OpenMP region): counted by the ledger while the call holds it.

// Fails on the first token outside [0, vocab) before anything is written.
qlora_status check_tokens(const int32_t* tokens, uint64_t rows, uint64_t vocab, const char* fn, const char* what,
                          bool allow_ignore) {
  for (uint64_t r = 0; r < rows; r++) {
    const int32_t t = tokens[r];
    if (allow_ignore && t == -1) continue;
    if (t < 0 || (uint64_t)t >= vocab) return bad_token(fn, what, r, t, vocab);
  }
  return QLORA_OK;
}

// ---- 16 lanes at a time (AVX-512, chosen at run time) ----------------------------------------------
// Softmax, cross-entropy and SwiGLU spend their time in exp: glibc's expf is scalar. These helpers
// load, store and exponentiate 16 floats at once; exp_avx512 has a relative error below 2e-7 against
// expf (tests/model_ops_test.ts checks every op that uses it against float64).

// exp(x) = 2^n * e^f with n = round(x / ln 2), f = x - n ln 2 in [-ln2/2, ln2/2] (Cody-Waite split of
// ln 2), e^f by its Taylor polynomial of degree 6, 2^n applied by scalef. x below -87.3 gives ~1e-38.
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) inline __m512 load16(const void* p, uint64_t i) {
  if (DT == QLORA_F32) return _mm512_loadu_ps((const float*)p + i);
  const __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)p + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Stores 16 values as elements i .. i + 16 of a DT buffer: f32, or bf16 rounded to nearest even with
// NaN made quiet, bit for bit what float_to_bf16 gives.
template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) inline void store16(void* p, uint64_t i, __m512 x) {
  if (DT == QLORA_F32) {
    _mm512_storeu_ps((float*)p + i, x);
    return;
  }
  const __m512i u = _mm512_castps_si512(x);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                        _mm512_set1_epi32(0x7fff));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256((__m256i*)((uint16_t*)p + i), _mm512_cvtepi32_epi16(r));
}

// ---- attention on GEMMs --------------------------------------------------------------------------
// Layouts: q, out, dq [batch, seq, heads, hd]; k, v, dk, dv [batch, seq, kv_heads, hd]; lse [batch, heads, seq].
// Each (batch, head) slice is a strided [seq, hd] matrix (leading dimension heads * hd, or kv_heads * hd),
// so the products (gemm_strided: oneDNN) read the tensors in place. Query rows go in blocks of
// kQueryBlock: the rows i0 .. i0 + n of a block attend to keys 0 .. i0 + n (causal), so a block's scores
// are n x (i0 + n), no product reads keys that no row of the block can see, and the scratch holds a few
// blocks of scores, never the seq x seq matrix. Probabilities and score gradients are rounded to the
// tensors' dtype before the products that consume them (as a bf16 attention on a GPU does); everything
// else is f32. The loops run in a fixed order, so results are the same on every run.

constexpr uint64_t kQueryBlock = 128;

// seq queries per sequence at key positions past .. past + seq - 1 (training: past = 0, the keys are the
// queries' own rows); k and v hold kv_seq rows per sequence (training: seq; the cache: its capacity).
// Blocks of block_rows query rows (kQueryBlock, or fewer for a short cached step).
struct AttnShape {
  uint64_t batch, seq, heads, kv_heads, hd;
  uint64_t kv_seq = seq, past = 0, block_rows = kQueryBlock;
  uint64_t keys() const { return past + seq; }         // the most keys a row attends
  uint64_t group() const { return heads / kv_heads; }  // query heads per kv head
  uint64_t ldq() const { return heads * hd; }          // row stride of q, out, dq
  uint64_t ldk() const { return kv_heads * hd; }       // row stride of k, v, dk, dv
  uint64_t q_at(uint64_t b, uint64_t t, uint64_t h) const { return ((b * seq + t) * heads + h) * hd; }
  uint64_t kv_at(uint64_t b, uint64_t t, uint64_t g) const { return ((b * kv_seq + t) * kv_heads + g) * hd; }
  uint64_t lse_at(uint64_t b, uint64_t h, uint64_t t) const { return (b * heads + h) * seq + t; }
};

// Element i of a tensor of dtype DT, as an address.
template <int32_t DT>
const void* elem(const void* base, uint64_t i) {
  return (const char*)base + i * (DT == QLORA_F32 ? 4 : 2);
}
template <int32_t DT>
void* elem(void* base, uint64_t i) {
  return (char*)base + i * (DT == QLORA_F32 ? 4 : 2);
}

// Scratch of one call: scores and their gradient (f32), their dtype-rounded copies for the products,
// per-row deltas, and f32 accumulators for dk and dv of one kv head (backward only).
struct AttnScratch {
  float *s = nullptr, *ds = nullptr, *delta = nullptr, *dk = nullptr, *dv = nullptr;
  void *p = nullptr, *dsr = nullptr;
  static uint64_t floats(const AttnShape& a, bool backward) {
    const uint64_t block = a.block_rows * a.keys();
    return backward ? 4 * block + kQueryBlock + 2 * a.seq * a.hd : 2 * block;
  }
  AttnScratch(float* base, const AttnShape& a, bool backward) {
    const uint64_t block = a.block_rows * a.keys();
    s = base;
    p = base + block;  // room for f32 even when it holds bf16
    if (!backward) return;
    ds = base + 2 * block;
    dsr = base + 3 * block;
    delta = base + 4 * block;
    dk = delta + kQueryBlock;
    dv = dk + a.seq * a.hd;
  }
};

// One row of the forward's softmax: s[0 .. valid) holds scores (overwritten with exp(s - max)); p gets
// the probabilities at o .. o + valid and zeros up to o + kv. Returns lse = max + log(sum).
template <int32_t DT>
float softmax_row_scalar(float* s, uint64_t valid, uint64_t kv, void* p, uint64_t o) {
  float m = -INFINITY, sum = 0.0f;
  for (uint64_t j = 0; j < valid; j++) m = fmaxf(m, s[j]);
  for (uint64_t j = 0; j < valid; j++) sum += s[j] = expf(s[j] - m);
  const float inv = 1.0f / sum;
  for (uint64_t j = 0; j < valid; j++) store_float(p, DT, o + j, s[j] * inv);
  for (uint64_t j = valid; j < kv; j++) store_float(p, DT, o + j, 0.0f);
  return m + logf(sum);
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) float softmax_row_avx512(float* s, uint64_t valid, uint64_t kv, void* p,
                                                                     uint64_t o) {
  const uint64_t vec = valid / 16 * 16;
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (uint64_t j = 0; j < vec; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(s + j));
  float m = _mm512_reduce_max_ps(mv);
  for (uint64_t j = vec; j < valid; j++) m = fmaxf(m, s[j]);
  const __m512 mm = _mm512_set1_ps(m);
  __m512 sv = _mm512_setzero_ps();
  for (uint64_t j = 0; j < vec; j += 16) {
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mm));
    _mm512_storeu_ps(s + j, e);
    sv = _mm512_add_ps(sv, e);
  }
  float sum = _mm512_reduce_add_ps(sv);
  for (uint64_t j = vec; j < valid; j++) sum += s[j] = expf(s[j] - m);
  const float inv = 1.0f / sum;
  const __m512 iv = _mm512_set1_ps(inv);
  for (uint64_t j = 0; j < vec; j += 16) store16<DT>(p, o + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), iv));
  for (uint64_t j = vec; j < valid; j++) store_float(p, DT, o + j, s[j] * inv);
  for (uint64_t j = valid; j < kv; j++) store_float(p, DT, o + j, 0.0f);
  return m + logf(sum);
}

// One row of the backward: p_j = exp(s_j - lse), ds_j = p_j (dp_j - delta) for j < valid, zeros up to kv,
// stored in DT at o + j.
template <int32_t DT>
void softmax_grad_row_scalar(const float* s, const float* dp, float lse, float delta, uint64_t valid, uint64_t kv,
                             void* p, void* ds, uint64_t o) {
  for (uint64_t j = 0; j < valid; j++) {
    const float pj = expf(s[j] - lse);
    store_float(p, DT, o + j, pj);
    store_float(ds, DT, o + j, pj * (dp[j] - delta));
  }
  for (uint64_t j = valid; j < kv; j++) {
    store_float(p, DT, o + j, 0.0f);
    store_float(ds, DT, o + j, 0.0f);
  }
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) void softmax_grad_row_avx512(const float* s, const float* dp, float lse,
                                                                         float delta, uint64_t valid, uint64_t kv,
                                                                         void* p, void* ds, uint64_t o) {
  const uint64_t vec = valid / 16 * 16;
  const __m512 lv = _mm512_set1_ps(lse), dv = _mm512_set1_ps(delta);
  for (uint64_t j = 0; j < vec; j += 16) {
    const __m512 pj = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), lv));
    store16<DT>(p, o + j, pj);
    store16<DT>(ds, o + j, _mm512_mul_ps(pj, _mm512_sub_ps(_mm512_loadu_ps(dp + j), dv)));
  }
  softmax_grad_row_scalar<DT>(s + vec, dp + vec, lse, delta, valid - vec, kv - vec, p, ds, o + vec);
}

// Runs f(task, scratch) for every task in [0, tasks) (a head, or a kv head, of one sequence). With at
// least as many tasks as threads, each thread takes whole tasks with its own scratch and runs their
// products on its own: one parallel region per call, not one per product, which matters when threads
// sleep between regions (OMP_WAIT_POLICY=passive) and the products are small. With fewer tasks, they run
// one after another and the products use every thread. The first exception is rethrown after the region.
template <typename F>
void for_each_head(uint64_t tasks, float* scratch, uint64_t per_thread, F f) {
  const int threads = omp_get_max_threads();
  std::atomic<bool> failed{false};
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) if (threads > 1 && tasks >= (uint64_t)threads)
  for (int64_t t = 0; t < (int64_t)tasks; t++) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      f((uint64_t)t, scratch + (uint64_t)omp_get_thread_num() * per_thread);
    } catch (...) {
#pragma omp critical(qlora_attention_error)
      if (!error) error = std::current_exception();
      failed.store(true);
    }
  }
  if (error) std::rethrow_exception(error);
}

// Elements i .. i + n of a DT buffer into f32 (a typed loop the compiler vectorises).
template <int32_t DT>
inline void load_row(const void* p, uint64_t i, uint64_t n, float* out) {
  for (uint64_t c = 0; c < n; c++) out[c] = DT == QLORA_F32 ? ((const float*)p)[i + c] : load_float(p, DT, i + c);
}

// One query row over keys lo .. lo + kv (a decode step: a GEMM of one row would cost more to set up than
// to run, and its shape changes with every step). Scores and the weighted sum of values in f32 with 16
// independent partial sums per dot product (a fixed order, so the result is the same on every run);
// the probabilities are rounded to DT before they weight the values, as the GEMM path does.
template <int32_t DT>
void attend_one_row(const void* q, uint64_t q_off, const void* k, const void* v, const AttnShape& a, uint64_t b,
                    uint64_t g, uint64_t lo, uint64_t kv, float scale, bool simd, void* out, uint64_t out_off,
                    AttnScratch& w) {
  const uint64_t hd = a.hd;
  float qrow[128], krow[128], acc[128] = {};  // head_dim <= 128 (check_attention_dims)
  load_row<DT>(q, q_off, hd, qrow);
  for (uint64_t j = 0; j < kv; j++) {
    load_row<DT>(k, a.kv_at(b, lo + j, g), hd, krow);
    float part[16] = {};
    uint64_t c = 0;
    for (; c + 16 <= hd; c += 16)
      for (int l = 0; l < 16; l++) part[l] += qrow[c + l] * krow[c + l];
    for (; c < hd; c++) part[c % 16] += qrow[c] * krow[c];
    float dot = 0.0f;
    for (int l = 0; l < 16; l++) dot += part[l];
    w.s[j] = scale * dot;
  }
  if (simd) softmax_row_avx512<DT>(w.s, kv, kv, w.p, 0);
  else softmax_row_scalar<DT>(w.s, kv, kv, w.p, 0);
  for (uint64_t j = 0; j < kv; j++) {
    const float pj = load_float(w.p, DT, j);
    load_row<DT>(v, a.kv_at(b, lo + j, g), hd, krow);
    for (uint64_t c = 0; c < hd; c++) acc[c] += pj * krow[c];
  }
  for (uint64_t c = 0; c < hd; c++) store_float(out, DT, out_off + c, acc[c]);
}

// Forward of head h of sequence b, per block of query rows i0 .. i0 + n. Row i is the query at key
// position past + i and attends the keys lo .. past + i (training: lo = past = 0, causal attention; the
// cache: lo skips a sequence's left padding). The block's keys are lo .. lo + kv = past + i0 + n:
//   S = scale * Q_blk K_blk^T                  [n, kv] f32
//   P = softmax over the keys each row attends, 0 after them; lse_i = max + log(sum exp(S - max))
//   O_blk = P V_blk                            [n, hd]
// A row with no key to attend (a padding position) gets zeros, and lse -inf. lse may be NULL (no backward).
template <int32_t DT>
void attention_forward_head(const void* q, const void* k, const void* v, const AttnShape& a, uint64_t b,
                            uint64_t h, uint64_t lo, void* out, float* lse, AttnScratch& w) {
  const float scale = 1.0f / sqrtf((float)a.hd);
  const bool simd = has_avx512();
  const uint64_t g = h / a.group();
  for (uint64_t i0 = 0; i0 < a.seq; i0 += a.block_rows) {
    const uint64_t n = a.seq - i0 < a.block_rows ? a.seq - i0 : a.block_rows, end = a.past + i0 + n;
    const uint64_t kv = end > lo ? end - lo : 0;
    if (n == 1 && kv > 0 && !lse) {  // a decode step over the cache
      attend_one_row<DT>(q, a.q_at(b, i0, h), k, v, a, b, g, lo, kv, scale, simd, out, a.q_at(b, i0, h), w);
      continue;
    }
    if (kv > 0)
      gemm_strided(0, 1, n, kv, a.hd, scale, elem<DT>(q, a.q_at(b, i0, h)), a.ldq(), elem<DT>(k, a.kv_at(b, lo, g)),
                   a.ldk(), 0.0f, w.s, kv, DT, QLORA_F32);
#pragma omp parallel for schedule(static) if (n * kv >= kParallelMin)
    for (int64_t rr = 0; rr < (int64_t)n; rr++) {
      const uint64_t r = (uint64_t)rr, last = a.past + i0 + r;  // row i0 + r sees keys lo .. last
      float* srow = w.s + r * kv;
      float l = -INFINITY;
      if (last >= lo)
        l = simd ? softmax_row_avx512<DT>(srow, last - lo + 1, kv, w.p, r * kv)
                 : softmax_row_scalar<DT>(srow, last - lo + 1, kv, w.p, r * kv);
      else
        for (uint64_t j = 0; j < kv; j++) store_float(w.p, DT, r * kv + j, 0.0f);
      if (lse) lse[a.lse_at(b, h, i0 + r)] = l;
    }
    if (kv > 0)
      gemm_strided(0, 0, n, a.hd, kv, 1.0f, w.p, kv, elem<DT>(v, a.kv_at(b, lo, g)), a.ldk(), 0.0f,
                   elem<DT>(out, a.q_at(b, i0, h)), a.ldq(), DT, DT);
    else
      for (uint64_t r = 0; r < n; r++)
        for (uint64_t c = 0; c < a.hd; c++) store_float(out, DT, a.q_at(b, i0 + r, h) + c, 0.0f);
  }
}

// Backward of kv head g of sequence b; for each query head h of its group and block of query rows:
//   delta_i = dO_i . O_i
//   P = exp(scale * Q_blk K^T - lse) (j <= i, else 0)   dP = dO_blk V^T   dS = P * (dP - delta)
//   dV += P^T dO_blk      dQ_blk = scale * dS K      dK += scale * dS^T Q_blk
// dK and dV of the kv head accumulate in f32 over the heads of its group, then are stored once.
template <int32_t DT>
void attention_backward_kv_head(const void* dout, const void* q, const void* k, const void* v, const void* out,
                                const float* lse, const AttnShape& a, uint64_t b, uint64_t g, void* dq, void* dk,
                                void* dv, AttnScratch& w) {
  const float scale = 1.0f / sqrtf((float)a.hd);
  const bool simd = has_avx512();
  const uint64_t hd = a.hd;
  std::fill(w.dk, w.dk + a.seq * hd, 0.0f);
  std::fill(w.dv, w.dv + a.seq * hd, 0.0f);
  for (uint64_t h = g * a.group(); h < (g + 1) * a.group(); h++)
    for (uint64_t i0 = 0; i0 < a.seq; i0 += kQueryBlock) {
      const uint64_t n = a.seq - i0 < kQueryBlock ? a.seq - i0 : kQueryBlock, kv = i0 + n;
      const void* qb = elem<DT>(q, a.q_at(b, i0, h));
      const void* dob = elem<DT>(dout, a.q_at(b, i0, h));
      const void* k0 = elem<DT>(k, a.kv_at(b, 0, g));
      for (uint64_t r = 0; r < n; r++) {
        const uint64_t o = a.q_at(b, i0 + r, h);
        float d = 0.0f;
        for (uint64_t c = 0; c < hd; c++) d += load_float(dout, DT, o + c) * load_float(out, DT, o + c);
        w.delta[r] = d;
      }
      gemm_strided(0, 1, n, kv, hd, scale, qb, a.ldq(), k0, a.ldk(), 0.0f, w.s, kv, DT, QLORA_F32);
      gemm_strided(0, 1, n, kv, hd, 1.0f, dob, a.ldq(), elem<DT>(v, a.kv_at(b, 0, g)), a.ldk(), 0.0f, w.ds, kv, DT,
                   QLORA_F32);
#pragma omp parallel for schedule(static) if (n * kv >= kParallelMin)
      for (int64_t rr = 0; rr < (int64_t)n; rr++) {
        const uint64_t r = (uint64_t)rr, i = i0 + r, o = r * kv;
        const float l = lse[a.lse_at(b, h, i)];
        if (simd) softmax_grad_row_avx512<DT>(w.s + o, w.ds + o, l, w.delta[r], i + 1, kv, w.p, w.dsr, o);
        else softmax_grad_row_scalar<DT>(w.s + o, w.ds + o, l, w.delta[r], i + 1, kv, w.p, w.dsr, o);
      }
      gemm_strided(1, 0, kv, hd, n, 1.0f, w.p, kv, dob, a.ldq(), 1.0f, w.dv, hd, DT, QLORA_F32);
      gemm_strided(0, 0, n, hd, kv, scale, w.dsr, kv, k0, a.ldk(), 0.0f, elem<DT>(dq, a.q_at(b, i0, h)), a.ldq(), DT,
                   DT);
      gemm_strided(1, 0, kv, hd, n, scale, w.dsr, kv, qb, a.ldq(), 1.0f, w.dk, hd, DT, QLORA_F32);
    }
  for (uint64_t t = 0; t < a.seq; t++)
    for (uint64_t c = 0; c < hd; c++) {
      store_float(dk, DT, a.kv_at(b, t, g) + c, w.dk[t * hd + c]);
      store_float(dv, DT, a.kv_at(b, t, g) + c, w.dv[t * hd + c]);
    }
}

// ---- cross-entropy rows ----------------------------------------------------------------------------
// One row: lse = max + log(sum exp(x - max)); with grad, grad_j = (exp(x_j - lse) - [j == t]) * scale.
// The exponentials go to an f32 row buffer (vocab floats, per thread) in the sum pass and are reused
// for the gradient, so each logit is exponentiated once. With AVX-512 the passes run 16 lanes wide;
// the tail and CPUs without AVX-512 use the scalar loop.

template <int32_t DT>
float ce_row_scalar(const void* logits, uint64_t o, uint64_t vocab, float* buf, float* sum_out) {
  float m = -INFINITY;
  for (uint64_t j = 0; j < vocab; j++) m = fmaxf(m, load_float(logits, DT, o + j));
  // One f32 accumulator over a 32,000-token row loses ~1e-5 of the sum (the 16 lanes of the AVX-512 path
  // lose far less): accumulate in double.
  double sum = 0.0;
  for (uint64_t j = 0; j < vocab; j++) sum += buf[j] = expf(load_float(logits, DT, o + j) - m);
  *sum_out = (float)sum;
  return m;
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) float ce_row_avx512(const void* logits, uint64_t o, uint64_t vocab,
                                                                 float* buf, float* sum_out) {
  const uint64_t vec = vocab / 16 * 16;
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (uint64_t j = 0; j < vec; j += 16) mv = _mm512_max_ps(mv, load16<DT>(logits, o + j));
  float m = _mm512_reduce_max_ps(mv);
  for (uint64_t j = vec; j < vocab; j++) m = fmaxf(m, load_float(logits, DT, o + j));
  const __m512 mm = _mm512_set1_ps(m);
  __m512 sv = _mm512_setzero_ps();
  for (uint64_t j = 0; j < vec; j += 16) {
    const __m512 e = exp_avx512(_mm512_sub_ps(load16<DT>(logits, o + j), mm));
    _mm512_storeu_ps(buf + j, e);
    sv = _mm512_add_ps(sv, e);
  }
  float sum = _mm512_reduce_add_ps(sv);
  for (uint64_t j = vec; j < vocab; j++) sum += buf[j] = expf(load_float(logits, DT, o + j) - m);
  *sum_out = sum;
  return m;
}

// grad_j = buf_j * (scale / sum), minus scale at the target, stored in DT.
template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) void ce_grad_avx512(const float* buf, uint64_t vocab, float k,
                                                                void* out, uint64_t o) {
  const uint64_t vec = vocab / 16 * 16;
  const __m512 kv = _mm512_set1_ps(k);
  for (uint64_t j = 0; j < vec; j += 16) {
    store16<DT>(out, o + j, _mm512_mul_ps(_mm512_loadu_ps(buf + j), kv));
  }
  for (uint64_t j = vec; j < vocab; j++) store_float(out, DT, o + j, buf[j] * k);
}

template <int32_t DT>
void cross_entropy_rows(const void* logits, const int32_t* targets, uint64_t rows, uint64_t vocab, float* losses,
                        void* dlogits, float grad_scale, float* scratch) {
  const bool simd = has_avx512();
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++) {
    const uint64_t o = (uint64_t)r * vocab;
    const int32_t t = targets[r];
    if (t < 0) {  // ignored row
      losses[r] = 0.0f;
      if (dlogits)
        for (uint64_t j = 0; j < vocab; j++) store_float(dlogits, DT, o + j, 0.0f);
      continue;
    }
    float* buf = scratch + (uint64_t)omp_get_thread_num() * vocab;
    float sum;
    const float m = simd ? ce_row_avx512<DT>(logits, o, vocab, buf, &sum) : ce_row_scalar<DT>(logits, o, vocab, buf, &sum);
    losses[r] = m + logf(sum) - load_float(logits, DT, o + (uint64_t)t);  // read before dlogits (may alias)
    if (!dlogits) continue;
    const float k = grad_scale / sum;
    if (simd) {
      ce_grad_avx512<DT>(buf, vocab, k, dlogits, o);
    } else {
      for (uint64_t j = 0; j < vocab; j++) store_float(dlogits, DT, o + j, buf[j] * k);
    }
    store_float(dlogits, DT, o + (uint64_t)t, (buf[t] * k) - grad_scale);
  }
}

// ---- SwiGLU, 16 lanes at a time ---------------------------------------------------------------------
// The formulas of swiglu_value and swiglu_grad (common/validate_model.h) with exp_avx512 for expf;
// elements [i0, i1), each loaded before it is stored (the outputs may alias the inputs).

__attribute__((target("avx512f"))) inline __m512 sigmoid_avx512(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) void swiglu_forward_avx512(const void* gate, const void* up, uint64_t i0,
                                                                       uint64_t i1, void* out) {
  uint64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const __m512 g = load16<DT>(gate, i), u = load16<DT>(up, i);
    store16<DT>(out, i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid_avx512(g)), u));
  }
  for (; i < i1; i++) store_float(out, DT, i, swiglu_value(load_float(gate, DT, i), load_float(up, DT, i)));
}

template <int32_t DT>
__attribute__((target("avx512f,avx512bw"))) void swiglu_backward_avx512(const void* dout, const void* gate,
                                                                        const void* up, uint64_t i0, uint64_t i1,
                                                                        void* dgate, void* dup) {
  const __m512 one = _mm512_set1_ps(1.0f);
  uint64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const __m512 d = load16<DT>(dout, i), g = load16<DT>(gate, i), u = load16<DT>(up, i);
    const __m512 sig = sigmoid_avx512(g);
    // dgate = dout * u * sig * (1 + g * (1 - sig)), dup = dout * g * sig
    const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), sig),
                                    _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, sig))));
    const __m512 du = _mm512_mul_ps(_mm512_mul_ps(d, g), sig);
    store16<DT>(dgate, i, dg);
    store16<DT>(dup, i, du);
  }
  for (; i < i1; i++) {
    float dg, du;
    swiglu_grad(load_float(dout, DT, i), load_float(gate, DT, i), load_float(up, DT, i), dg, du);
    store_float(dgate, DT, i, dg);
    store_float(dup, DT, i, du);
  }
}

// Attention's forward over every (sequence, head) task, with the scratch of one call: training's causal
// attention (first_key NULL, lse kept) and generation's over a cache (qlora_attention_cached).
qlora_status attention_forward(const void* q, const void* k, const void* v, const AttnShape& a,
                               const int32_t* first_key, void* out, float* lse, int32_t dtype, const char* fn) {
  const uint64_t per_thread = AttnScratch::floats(a, false), n = (uint64_t)omp_get_max_threads() * per_thread;
  Workspace scratch;
  const qlora_status s = scratch.alloc(4 * n, fn);
  if (s != QLORA_OK) return s;
  try {
    for_each_head(a.batch * a.heads, scratch.as<float>(), per_thread, [&](uint64_t task, float* base) {
      AttnScratch w(base, a, false);
      const uint64_t b = task / a.heads, h = task % a.heads, lo = cached_first_key(first_key, b);
      if (dtype == QLORA_F32) attention_forward_head<QLORA_F32>(q, k, v, a, b, h, lo, out, lse, w);
      else attention_forward_head<QLORA_BF16>(q, k, v, a, b, h, lo, out, lse, w);
    });
  } catch (...) {
    return library_error(fn);
  }
  return QLORA_OK;
}

// Elementwise work in chunks of kChunk elements (a multiple of 16) over the OpenMP threads.
constexpr uint64_t kChunk = 1 << 14;

template <typename F>
void for_chunks(uint64_t n, F f) {
  const int64_t chunks = (int64_t)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; c++) {
    const uint64_t i0 = (uint64_t)c * kChunk, i1 = i0 + kChunk < n ? i0 + kChunk : n;
    f(i0, i1);
  }
}
}  // namespace

extern "C" {

// ---- embedding ------------------------------------------------------------------------------------

QLORA_API qlora_status qlora_embedding_forward(const int32_t* tokens, uint64_t rows, const void* table,
                                               uint64_t vocab, uint64_t dim, void* out, int32_t dtype) {
  qlora_status s = check_embedding_forward(tokens, rows, table, vocab, dim, out, dtype);
  if (s == QLORA_OK) s = check_tokens(tokens, rows, vocab, "look up embeddings", "tokens", false);
  if (s != QLORA_OK) return s;
  const uint64_t bytes = dim * dtype_size(dtype);
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++)
    memcpy((char*)out + (uint64_t)r * bytes, (const char*)table + (uint64_t)tokens[r] * bytes, bytes);
  return QLORA_OK;
}

// Deterministic: each column j of dtable is owned by one thread, which adds the rows in order. The
// rows of one token are summed in f32 first, then added once (one bf16 rounding per token and column).
QLORA_API qlora_status qlora_embedding_backward(const int32_t* tokens, uint64_t rows, const void* dout,
                                                uint64_t vocab, uint64_t dim, void* dtable, int32_t dtype) {
  const char* fn = "compute the embedding gradient";
  qlora_status s = check_embedding_backward(tokens, rows, dout, vocab, dim, dtable, dtype);
  if (s == QLORA_OK) s = check_tokens(tokens, rows, vocab, fn, "tokens", false);
  if (s != QLORA_OK || dtable == nullptr) return s;
  if (rows >= 0xffffffffull) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: rows must be below 2^32", fn);
  // Link the rows of each token: first[r] is 1 where r is its token's first row, next[r] is the
  // token's next row (rows after the last). Built in one backward walk with last[token].
  Workspace links;
  if ((s = links.alloc(4 * (2 * rows + vocab), fn)) != QLORA_OK) return s;
  uint32_t *next = links.as<uint32_t>(), *first = next + rows, *last = first + rows;
  const uint32_t none = 0xffffffffu;
  for (uint64_t t = 0; t < vocab; t++) last[t] = none;
  for (uint64_t r = rows; r-- > 0;) {
    const uint32_t t = (uint32_t)tokens[r];
    next[r] = last[t] == none ? (uint32_t)rows : last[t];
    last[t] = (uint32_t)r;
  }
  for (uint64_t r = 0; r < rows; r++) first[r] = last[tokens[r]] == (uint32_t)r ? 1u : 0u;
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t j = 0; j < (int64_t)dim; j++) {
    for (uint64_t r = 0; r < rows; r++) {
      if (!first[r]) continue;
      float sum = 0.0f;
      for (uint64_t x = r; x < rows; x = next[x]) sum += load_float(dout, dtype, x * dim + (uint64_t)j);
      const uint64_t at = (uint64_t)tokens[r] * dim + (uint64_t)j;
      store_float(dtable, dtype, at, load_float(dtable, dtype, at) + sum);
    }
  }
  return QLORA_OK;
}

// ---- RMSNorm ---------------------------------------------------------------------------------------

QLORA_API qlora_status qlora_rmsnorm_forward(const void* x, const void* weight, uint64_t rows, uint64_t dim,
                                             float eps, void* out, float* rstd, int32_t dtype) {
  qlora_status s = check_rmsnorm_forward(x, weight, rows, dim, eps, out, rstd, dtype);
  if (s != QLORA_OK) return s;
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++) {
    const uint64_t o = (uint64_t)r * dim;
    float ss = 0.0f;
    for (uint64_t j = 0; j < dim; j++) {
      const float xv = load_float(x, dtype, o + j);
      ss += xv * xv;
    }
    const float rs = 1.0f / sqrtf(ss / (float)dim + eps);
    for (uint64_t j = 0; j < dim; j++)
      store_float(out, dtype, o + j, load_float(x, dtype, o + j) * rs * load_float(weight, dtype, j));
    rstd[r] = rs;
  }
  return QLORA_OK;
}

// With xhat = x * rstd and g = dout * weight: dx = rstd * (g - xhat * mean(g * xhat));
// dweight[j] += sum_r dout[r, j] * xhat[r, j] (columns in blocks, each block owned by one thread).
QLORA_API qlora_status qlora_rmsnorm_backward(const void* dout, const void* x, const void* weight,
                                              const float* rstd, uint64_t rows, uint64_t dim, void* dx,
                                              void* dweight, int32_t dtype) {
  qlora_status s = check_rmsnorm_backward(dout, x, weight, rstd, rows, dim, dx, dweight, dtype);
  if (s != QLORA_OK) return s;
  const bool par = rows * dim >= kParallelMin;
  // dweight first: dx may alias dout or x.
  if (dweight) {
    constexpr uint64_t kBlock = 64;
    const int64_t blocks = (int64_t)((dim + kBlock - 1) / kBlock);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t blk = 0; blk < blocks; blk++) {
      const uint64_t j0 = (uint64_t)blk * kBlock, n = dim - j0 < kBlock ? dim - j0 : kBlock;
      float acc[kBlock] = {};
      for (uint64_t r = 0; r < rows; r++)
        for (uint64_t j = 0; j < n; j++)
          acc[j] += load_float(dout, dtype, r * dim + j0 + j) * (load_float(x, dtype, r * dim + j0 + j) * rstd[r]);
      for (uint64_t j = 0; j < n; j++) store_float(dweight, dtype, j0 + j, load_float(dweight, dtype, j0 + j) + acc[j]);
    }
  }
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < (int64_t)rows; r++) {
    const uint64_t o = (uint64_t)r * dim;
    const float rs = rstd[r];
    float dot = 0.0f;
    for (uint64_t j = 0; j < dim; j++)
      dot += load_float(dout, dtype, o + j) * load_float(weight, dtype, j) * (load_float(x, dtype, o + j) * rs);
    const float mean = dot / (float)dim;
    for (uint64_t j = 0; j < dim; j++) {
      const float g = load_float(dout, dtype, o + j) * load_float(weight, dtype, j);
      const float xhat = load_float(x, dtype, o + j) * rs;
      store_float(dx, dtype, o + j, rs * (g - xhat * mean));
    }
  }
  return QLORA_OK;
}

// ---- rotary embedding (its own backward: inverse = 1 turns by -angle) -------------------------------

QLORA_API qlora_status qlora_rope(void* x, uint64_t batch, uint64_t seq, uint64_t heads, uint64_t head_dim,
                                  float theta, int32_t inverse, int32_t dtype) {
  const char* fn = "apply rotary embeddings";
  qlora_status s = check_rope(x, batch, seq, heads, head_dim, theta, inverse, dtype);
  if (s != QLORA_OK) return s;
  const uint64_t pairs = head_dim / 2;
  Workspace table;  // inv_freq of i, then (cos, sin) of (t, i)
  if ((s = table.alloc(4 * (pairs + 2 * seq * pairs), fn)) != QLORA_OK) return s;
  float* freq = table.as<float>();
  float* cs = freq + pairs;
  for (uint64_t i = 0; i < pairs; i++) freq[i] = rope_inv_freq(theta, i, head_dim);
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (seq * pairs >= kParallelMin)
  for (int64_t t = 0; t < (int64_t)seq; t++)
    for (uint64_t i = 0; i < pairs; i++) {
      const float angle = rope_angle(t, freq[i]);
      cs[2 * ((uint64_t)t * pairs + i)] = cosf(angle);
      cs[2 * ((uint64_t)t * pairs + i) + 1] = sign * sinf(angle);
    }
  const int64_t rows = (int64_t)(batch * seq);
#pragma omp parallel for schedule(static) if (batch * seq * heads * head_dim >= kParallelMin)
  for (int64_t row = 0; row < rows; row++) {
    const uint64_t t = (uint64_t)row % seq;
    for (uint64_t h = 0; h < heads; h++) {
      const uint64_t o = ((uint64_t)row * heads + h) * head_dim;
      for (uint64_t i = 0; i < pairs; i++) {
        float a = load_float(x, dtype, o + i), b = load_float(x, dtype, o + pairs + i);  // half-split pair
        rope_rotate(a, b, cs[2 * (t * pairs + i)], cs[2 * (t * pairs + i) + 1]);
        store_float(x, dtype, o + i, a);
        store_float(x, dtype, o + pairs + i, b);
      }
    }
  }
  return QLORA_OK;
}

// Position by position: each row computes its own angles (a decode step turns one row per sequence).
QLORA_API qlora_status qlora_rope_at(void* x, uint64_t rows, uint64_t heads, uint64_t head_dim,
                                     const int32_t* positions, float theta, int32_t inverse, int32_t dtype) {
  const char* fn = "apply rotary embeddings at positions";
  qlora_status s = check_rope_at(x, rows, heads, head_dim, positions, theta, inverse, dtype);
  if (s != QLORA_OK) return s;
  const uint64_t pairs = head_dim / 2;
  Workspace table;  // inv_freq of i
  if ((s = table.alloc(4 * pairs, fn)) != QLORA_OK) return s;
  float* freq = table.as<float>();
  for (uint64_t i = 0; i < pairs; i++) freq[i] = rope_inv_freq(theta, i, head_dim);
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (rows * heads * head_dim >= kParallelMin)
  for (int64_t row = 0; row < (int64_t)rows; row++) {
    const int64_t t = positions[row];
    for (uint64_t i = 0; i < pairs; i++) {
      const float angle = rope_angle(t, freq[i]), c = cosf(angle), sn = sign * sinf(angle);
      for (uint64_t h = 0; h < heads; h++) {
        const uint64_t o = ((uint64_t)row * heads + h) * head_dim;
        float a = load_float(x, dtype, o + i), b = load_float(x, dtype, o + pairs + i);  // half-split pair
        rope_rotate(a, b, c, sn);
        store_float(x, dtype, o + i, a);
        store_float(x, dtype, o + pairs + i, b);
      }
    }
  }
  return QLORA_OK;
}

// ---- causal grouped-query attention ----------------------------------------------------------------

QLORA_API qlora_status qlora_attention_forward(const void* q, const void* k, const void* v, uint64_t batch,
                                               uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                               uint64_t head_dim, void* out, float* lse, int32_t dtype) {
  const char* fn = "compute attention";
  qlora_status s = check_attention_forward(q, k, v, batch, seq, heads, kv_heads, head_dim, out, lse, dtype);
  if (s != QLORA_OK) return s;
  return attention_forward(q, k, v, AttnShape{batch, seq, heads, kv_heads, head_dim}, nullptr, out, lse, dtype, fn);
}

QLORA_API qlora_status qlora_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                                                const void* out, const float* lse, uint64_t batch,
                                                uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                                uint64_t head_dim, void* dq, void* dk, void* dv,
                                                int32_t dtype) {
  const char* fn = "compute the attention gradient";
  qlora_status s = check_attention_backward(dout, q, k, v, out, lse, batch, seq, heads, kv_heads, head_dim, dq, dk,
                                            dv, dtype);
  if (s != QLORA_OK) return s;
  const AttnShape a{batch, seq, heads, kv_heads, head_dim};
  const uint64_t per_thread = AttnScratch::floats(a, true), n = (uint64_t)omp_get_max_threads() * per_thread;
  Workspace scratch;
  if ((s = scratch.alloc(4 * n, fn)) != QLORA_OK) return s;
  try {
    for_each_head(batch * kv_heads, scratch.as<float>(), per_thread, [&](uint64_t task, float* base) {
      AttnScratch w(base, a, true);
      const uint64_t b = task / kv_heads, g = task % kv_heads;
      if (dtype == QLORA_F32) attention_backward_kv_head<QLORA_F32>(dout, q, k, v, out, lse, a, b, g, dq, dk, dv, w);
      else attention_backward_kv_head<QLORA_BF16>(dout, q, k, v, out, lse, a, b, g, dq, dk, dv, w);
    });
  } catch (...) {
    return library_error(fn);
  }
  return QLORA_OK;
}

// ---- generation: the key/value cache ----------------------------------------------------------------

QLORA_API qlora_status qlora_kv_cache_append(const void* k, const void* v, uint64_t batch, uint64_t tokens,
                                             uint64_t kv_dim, void* k_cache, void* v_cache, uint64_t capacity,
                                             uint64_t at, int32_t dtype) {
  qlora_status s = check_kv_cache_append(k, v, batch, tokens, kv_dim, k_cache, v_cache, capacity, at, dtype);
  if (s != QLORA_OK) return s;
  const uint64_t row = kv_dim * dtype_size(dtype), bytes = tokens * row;
  for (uint64_t b = 0; b < batch; b++) {
    parallel_copy((char*)k_cache + (b * capacity + at) * row, (const char*)k + b * bytes, bytes);
    parallel_copy((char*)v_cache + (b * capacity + at) * row, (const char*)v + b * bytes, bytes);
  }
  return QLORA_OK;
}

// The training forward's head loop over the cache: kv_seq = capacity, the queries at past .. past + tokens,
// each sequence's keys from its first_key on.
QLORA_API qlora_status qlora_attention_cached(const void* q, const void* k_cache, const void* v_cache,
                                              uint64_t batch, uint64_t tokens, uint64_t past, uint64_t capacity,
                                              uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                                              const int32_t* first_key, void* out, int32_t dtype) {
  const char* fn = "compute attention over the cache";
  qlora_status s = check_attention_cached(q, k_cache, v_cache, batch, tokens, past, capacity, heads, kv_heads,
                                          head_dim, first_key, out, dtype);
  if (s != QLORA_OK) return s;
  AttnShape a{batch, tokens, heads, kv_heads, head_dim};
  a.kv_seq = capacity;
  a.past = past;
  a.block_rows = tokens < kQueryBlock ? tokens : kQueryBlock;
  return attention_forward(q, k_cache, v_cache, a, first_key, out, nullptr, dtype, fn);
}

// ---- SwiGLU (outputs may alias the inputs: each element is loaded before it is stored) ---------------

QLORA_API qlora_status qlora_swiglu_forward(const void* gate, const void* up, uint64_t n, void* out,
                                            int32_t dtype) {
  qlora_status s = check_swiglu_forward(gate, up, n, out, dtype);
  if (s != QLORA_OK) return s;
  if (has_avx512()) {
    for_chunks(n, [&](uint64_t i0, uint64_t i1) {
      if (dtype == QLORA_F32) swiglu_forward_avx512<QLORA_F32>(gate, up, i0, i1, out);
      else swiglu_forward_avx512<QLORA_BF16>(gate, up, i0, i1, out);
    });
    return QLORA_OK;
  }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++)
    store_float(out, dtype, (uint64_t)i,
                swiglu_value(load_float(gate, dtype, (uint64_t)i), load_float(up, dtype, (uint64_t)i)));
  return QLORA_OK;
}

QLORA_API qlora_status qlora_swiglu_backward(const void* dout, const void* gate, const void* up, uint64_t n,
                                             void* dgate, void* dup, int32_t dtype) {
  qlora_status s = check_swiglu_backward(dout, gate, up, n, dgate, dup, dtype);
  if (s != QLORA_OK) return s;
  if (has_avx512()) {
    for_chunks(n, [&](uint64_t i0, uint64_t i1) {
      if (dtype == QLORA_F32) swiglu_backward_avx512<QLORA_F32>(dout, gate, up, i0, i1, dgate, dup);
      else swiglu_backward_avx512<QLORA_BF16>(dout, gate, up, i0, i1, dgate, dup);
    });
    return QLORA_OK;
  }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) {
    float dg, du;
    swiglu_grad(load_float(dout, dtype, (uint64_t)i), load_float(gate, dtype, (uint64_t)i),
                load_float(up, dtype, (uint64_t)i), dg, du);
    store_float(dgate, dtype, (uint64_t)i, dg);
    store_float(dup, dtype, (uint64_t)i, du);
  }
  return QLORA_OK;
}

// ---- softmax cross-entropy (its gradient in the same pass) -----------------------------------------

QLORA_API qlora_status qlora_cross_entropy(const void* logits, const int32_t* targets, uint64_t rows,
                                           uint64_t vocab, float* losses, void* dlogits, float grad_scale,
                                           int32_t dtype) {
  const char* fn = "compute the cross-entropy";
  qlora_status s = check_cross_entropy(logits, targets, rows, vocab, losses, dlogits, grad_scale, dtype);
  if (s == QLORA_OK) s = check_tokens(targets, rows, vocab, fn, "targets", true);
  if (s != QLORA_OK) return s;
  const uint64_t n = (uint64_t)omp_get_max_threads() * vocab;
  Workspace scratch;
  if ((s = scratch.alloc(4 * n, fn)) != QLORA_OK) return s;
  if (dtype == QLORA_F32)
    cross_entropy_rows<QLORA_F32>(logits, targets, rows, vocab, losses, dlogits, grad_scale, scratch.as<float>());
  else
    cross_entropy_rows<QLORA_BF16>(logits, targets, rows, vocab, losses, dlogits, grad_scale, scratch.as<float>());
  return QLORA_OK;
}

}  // extern "C"
