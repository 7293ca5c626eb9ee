// cpu/model.cpp: the ops of a LLaMA-style model, each forward beside its backward (qlora.h).
// gpu/model.cu mirrors this file; both validate with common/validate_model.h and share its math.
// Values are loaded as f32 (load_float), computed in f32 and stored in the caller's dtype. Every
// loop that writes a shared buffer runs in a fixed order, so results are the same on every run.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <new>

#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate_model.h"
#include "cpu.h"

using namespace qlora;

namespace {

// Scratch for the parallel regions, allocated before them (an exception must not leave an OpenMP
// region). Freed on scope exit; p is null when the host is out of memory.
template <typename T>
struct Scratch {
  T* p = nullptr;
  explicit Scratch(uint64_t n) : p(new (std::nothrow) T[n ? n : 1]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

qlora_status out_of_scratch(const char* fn, uint64_t bytes) {
  char buf[32];
  return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot %s: no host memory for %s of scratch", fn,
              format_bytes(bytes, buf, sizeof buf));
}

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

// ---- attention, specialised on the dtype so that the inner loops load without a branch ---------------
// Layouts: q, out, dq [batch, seq, heads, hd]; k, v, dk, dv [batch, seq, kv_heads, hd]; lse [batch, heads, seq].

struct AttnShape {
  uint64_t batch, seq, heads, kv_heads, hd;
  uint64_t group() const { return heads / kv_heads; }  // query heads per kv head
  uint64_t q_at(uint64_t b, uint64_t t, uint64_t h) const { return ((b * seq + t) * heads + h) * hd; }
  uint64_t kv_at(uint64_t b, uint64_t t, uint64_t g) const { return ((b * seq + t) * kv_heads + g) * hd; }
  uint64_t lse_at(uint64_t b, uint64_t h, uint64_t t) const { return (b * heads + h) * seq + t; }
};

// a[a0 .. a0 + n) . b in 8 interleaved partial sums (vectorizes; fixed order, so deterministic).
template <int32_t DT>
float dot(const void* a, uint64_t a0, const float* b, uint64_t n) {
  float lane[8] = {};
  uint64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (uint64_t l = 0; l < 8; l++) lane[l] += load_float(a, DT, a0 + d + l) * b[d + l];
  float s = 0.0f;
  for (; d < n; d++) s += load_float(a, DT, a0 + d) * b[d];
  for (uint64_t l = 0; l < 8; l++) s += lane[l];
  return s;
}

// One row per (b, h, i): scores s_j = q_i . k_j * scale for j <= i, p = softmax(s), out_i = sum_j p_j v_j,
// lse_i = max + log(sum exp(s - max)). Scratch per thread: seq scores, hd for q_i, hd for the output.
template <int32_t DT>
void attention_forward_rows(const void* q, const void* k, const void* v, const AttnShape& a, void* out, float* lse,
                            float* scratch) {
  const float scale = 1.0f / sqrtf((float)a.hd);
  const int64_t total = (int64_t)(a.batch * a.heads * a.seq);
  const uint64_t per_thread = a.seq + 2 * a.hd;
#pragma omp parallel for schedule(dynamic, 8) if ((uint64_t)total * a.seq * a.hd >= kParallelMin)
  for (int64_t row = 0; row < total; row++) {
    const uint64_t i = (uint64_t)row % a.seq, h = ((uint64_t)row / a.seq) % a.heads;
    const uint64_t b = (uint64_t)row / (a.seq * a.heads), g = h / a.group();
    float* s = scratch + (uint64_t)omp_get_thread_num() * per_thread;
    float* qi = s + a.seq;
    float* acc = qi + a.hd;
    const uint64_t qo = a.q_at(b, i, h);
    for (uint64_t d = 0; d < a.hd; d++) qi[d] = load_float(q, DT, qo + d);
    float m = -INFINITY;
    for (uint64_t j = 0; j <= i; j++) {
      s[j] = dot<DT>(k, a.kv_at(b, j, g), qi, a.hd) * scale;
      m = fmaxf(m, s[j]);
    }
    float sum = 0.0f;
    for (uint64_t j = 0; j <= i; j++) {
      s[j] = expf(s[j] - m);
      sum += s[j];
    }
    for (uint64_t d = 0; d < a.hd; d++) acc[d] = 0.0f;
    for (uint64_t j = 0; j <= i; j++) {
      const uint64_t vo = a.kv_at(b, j, g);
      for (uint64_t d = 0; d < a.hd; d++) acc[d] += s[j] * load_float(v, DT, vo + d);
    }
    const float inv = 1.0f / sum;
    for (uint64_t d = 0; d < a.hd; d++) store_float(out, DT, qo + d, acc[d] * inv);
    lse[a.lse_at(b, h, i)] = m + logf(sum);
  }
}

// Backward in three passes, each writing only its own rows (no races, fixed order):
//  1. delta_i = dout_i . out_i                                       per (b, h, i)
//  2. dq_i = scale * sum_{j<=i} dS_ij k_j                            per (b, h, block of kBlock rows i)
//  3. dk_j = scale * sum_{h in group, i>=j} dS_ij q_i,
//     dv_j = sum_{h in group, i>=j} p_ij dout_i                      per (b, kv head, block of kBlock rows j)
// with p_ij = exp(q_i . k_j * scale - lse_i), dP_ij = dout_i . v_j, dS_ij = p_ij (dP_ij - delta_i).
// A block keeps its kBlock rows in f32 scratch, so each row it streams past (k_j, v_j in pass 2; q_i,
// dout_i in pass 3) is loaded once per block instead of once per row. Scratch: delta [batch, heads,
// seq], then per thread kScratchRows * hd floats.
constexpr uint64_t kBlock = 16;
constexpr uint64_t kScratchRows = 4 * kBlock + 2;

template <int32_t DT>
void attention_backward_rows(const void* dout, const void* q, const void* k, const void* v, const void* out,
                             const float* lse, const AttnShape& a, void* dq, void* dk, void* dv, float* delta,
                             float* scratch) {
  const float scale = 1.0f / sqrtf((float)a.hd);
  const uint64_t hd = a.hd, blocks = (a.seq + kBlock - 1) / kBlock;
  const int64_t qrows = (int64_t)(a.batch * a.heads * a.seq);
  const bool par = (uint64_t)qrows * a.seq * hd >= kParallelMin;

#pragma omp parallel for schedule(static) if (par)
  for (int64_t row = 0; row < qrows; row++) {
    const uint64_t i = (uint64_t)row % a.seq, h = ((uint64_t)row / a.seq) % a.heads;
    const uint64_t b = (uint64_t)row / (a.seq * a.heads);
    const uint64_t o = a.q_at(b, i, h);
    float s = 0.0f;
    for (uint64_t d = 0; d < hd; d++) s += load_float(dout, DT, o + d) * load_float(out, DT, o + d);
    delta[a.lse_at(b, h, i)] = s;
  }

  // Pass 2: query rows i0 .. i0 + n of head h.
  const int64_t qtasks = (int64_t)(a.batch * a.heads * blocks);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < qtasks; task++) {
    const uint64_t i0 = ((uint64_t)task % blocks) * kBlock, h = ((uint64_t)task / blocks) % a.heads;
    const uint64_t b = (uint64_t)task / (blocks * a.heads), g = h / a.group();
    const uint64_t n = a.seq - i0 < kBlock ? a.seq - i0 : kBlock;
    float* qb = scratch + (uint64_t)omp_get_thread_num() * kScratchRows * hd;  // [n, hd] each
    float* dob = qb + kBlock * hd;
    float* acc = dob + kBlock * hd;
    float* kj = acc + kBlock * hd;
    float* vj = kj + hd;
    for (uint64_t r = 0; r < n; r++)
      for (uint64_t d = 0; d < hd; d++) {
        qb[r * hd + d] = load_float(q, DT, a.q_at(b, i0 + r, h) + d);
        dob[r * hd + d] = load_float(dout, DT, a.q_at(b, i0 + r, h) + d);
        acc[r * hd + d] = 0.0f;
      }
    for (uint64_t j = 0; j < i0 + n; j++) {
      const uint64_t kvo = a.kv_at(b, j, g);
      for (uint64_t d = 0; d < hd; d++) {
        kj[d] = load_float(k, DT, kvo + d);
        vj[d] = load_float(v, DT, kvo + d);
      }
      for (uint64_t r = (j > i0 ? j - i0 : 0); r < n; r++) {  // causal: i = i0 + r >= j
        const uint64_t li = a.lse_at(b, h, i0 + r);
        const float p = expf(dot<QLORA_F32>(qb, r * hd, kj, hd) * scale - lse[li]);
        const float ds = p * (dot<QLORA_F32>(dob, r * hd, vj, hd) - delta[li]);
        for (uint64_t d = 0; d < hd; d++) acc[r * hd + d] += ds * kj[d];
      }
    }
    for (uint64_t r = 0; r < n; r++)
      for (uint64_t d = 0; d < hd; d++) store_float(dq, DT, a.q_at(b, i0 + r, h) + d, acc[r * hd + d] * scale);
  }

  // Pass 3: key rows j0 .. j0 + n of kv head g, summed over the query heads of its group.
  const int64_t kvtasks = (int64_t)(a.batch * a.kv_heads * blocks);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < kvtasks; task++) {
    const uint64_t j0 = ((uint64_t)task % blocks) * kBlock, g = ((uint64_t)task / blocks) % a.kv_heads;
    const uint64_t b = (uint64_t)task / (blocks * a.kv_heads);
    const uint64_t n = a.seq - j0 < kBlock ? a.seq - j0 : kBlock;
    float* kb = scratch + (uint64_t)omp_get_thread_num() * kScratchRows * hd;  // [n, hd] each
    float* vb = kb + kBlock * hd;
    float* dkb = vb + kBlock * hd;
    float* dvb = dkb + kBlock * hd;
    float* qi = dvb + kBlock * hd;
    float* doi = qi + hd;
    for (uint64_t r = 0; r < n; r++)
      for (uint64_t d = 0; d < hd; d++) {
        kb[r * hd + d] = load_float(k, DT, a.kv_at(b, j0 + r, g) + d);
        vb[r * hd + d] = load_float(v, DT, a.kv_at(b, j0 + r, g) + d);
        dkb[r * hd + d] = 0.0f;
        dvb[r * hd + d] = 0.0f;
      }
    for (uint64_t h = g * a.group(); h < (g + 1) * a.group(); h++)
      for (uint64_t i = j0; i < a.seq; i++) {
        const uint64_t o = a.q_at(b, i, h), li = a.lse_at(b, h, i);
        for (uint64_t d = 0; d < hd; d++) {
          qi[d] = load_float(q, DT, o + d);
          doi[d] = load_float(dout, DT, o + d);
        }
        const uint64_t rn = i - j0 + 1 < n ? i - j0 + 1 : n;  // causal: j = j0 + r <= i
        for (uint64_t r = 0; r < rn; r++) {
          const float p = expf(dot<QLORA_F32>(kb, r * hd, qi, hd) * scale - lse[li]);
          const float ds = p * (dot<QLORA_F32>(vb, r * hd, doi, hd) - delta[li]);
          for (uint64_t d = 0; d < hd; d++) {
            dkb[r * hd + d] += ds * qi[d];
            dvb[r * hd + d] += p * doi[d];
          }
        }
      }
    for (uint64_t r = 0; r < n; r++)
      for (uint64_t d = 0; d < hd; d++) {
        store_float(dk, DT, a.kv_at(b, j0 + r, g) + d, dkb[r * hd + d] * scale);
        store_float(dv, DT, a.kv_at(b, j0 + r, g) + d, dvb[r * hd + d]);
      }
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
  Scratch<uint32_t> links(2 * rows + vocab);
  if (!links.p) return out_of_scratch(fn, 4 * (2 * rows + vocab));
  uint32_t *next = links.p, *first = next + rows, *last = first + rows;
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
  Scratch<float> table(pairs + 2 * seq * pairs);  // inv_freq of i, then (cos, sin) of (t, i)
  if (!table.p) return out_of_scratch(fn, 4 * (pairs + 2 * seq * pairs));
  float* freq = table.p;
  float* cs = freq + pairs;
  for (uint64_t i = 0; i < pairs; i++) freq[i] = rope_inv_freq(theta, i, head_dim);
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (seq * pairs >= kParallelMin)
  for (int64_t t = 0; t < (int64_t)seq; t++)
    for (uint64_t i = 0; i < pairs; i++) {
      const float angle = rope_angle((uint64_t)t, freq[i]);
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
        float a = load_float(x, dtype, o + 2 * i), b = load_float(x, dtype, o + 2 * i + 1);
        rope_rotate(a, b, cs[2 * (t * pairs + i)], cs[2 * (t * pairs + i) + 1]);
        store_float(x, dtype, o + 2 * i, a);
        store_float(x, dtype, o + 2 * i + 1, b);
      }
    }
  }
  return QLORA_OK;
}

// ---- causal grouped-query attention ----------------------------------------------------------------

QLORA_API qlora_status qlora_attention_forward(const void* q, const void* k, const void* v, uint64_t batch,
                                               uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                               uint64_t head_dim, void* out, float* lse, int32_t dtype) {
  qlora_status s = check_attention_forward(q, k, v, batch, seq, heads, kv_heads, head_dim, out, lse, dtype);
  if (s != QLORA_OK) return s;
  const AttnShape a{batch, seq, heads, kv_heads, head_dim};
  const uint64_t n = (uint64_t)omp_get_max_threads() * (seq + 2 * head_dim);
  Scratch<float> scratch(n);
  if (!scratch.p) return out_of_scratch("compute attention", 4 * n);
  if (dtype == QLORA_F32) attention_forward_rows<QLORA_F32>(q, k, v, a, out, lse, scratch.p);
  else attention_forward_rows<QLORA_BF16>(q, k, v, a, out, lse, scratch.p);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                                                const void* out, const float* lse, uint64_t batch,
                                                uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                                uint64_t head_dim, void* dq, void* dk, void* dv,
                                                int32_t dtype) {
  qlora_status s = check_attention_backward(dout, q, k, v, out, lse, batch, seq, heads, kv_heads, head_dim, dq, dk,
                                            dv, dtype);
  if (s != QLORA_OK) return s;
  const AttnShape a{batch, seq, heads, kv_heads, head_dim};
  const uint64_t nd = batch * heads * seq, n = nd + (uint64_t)omp_get_max_threads() * kScratchRows * head_dim;
  Scratch<float> scratch(n);
  if (!scratch.p) return out_of_scratch("compute the attention gradient", 4 * n);
  if (dtype == QLORA_F32)
    attention_backward_rows<QLORA_F32>(dout, q, k, v, out, lse, a, dq, dk, dv, scratch.p, scratch.p + nd);
  else
    attention_backward_rows<QLORA_BF16>(dout, q, k, v, out, lse, a, dq, dk, dv, scratch.p, scratch.p + nd);
  return QLORA_OK;
}

// ---- SwiGLU (outputs may alias the inputs: each element is loaded before it is stored) ---------------

QLORA_API qlora_status qlora_swiglu_forward(const void* gate, const void* up, uint64_t n, void* out,
                                            int32_t dtype) {
  qlora_status s = check_swiglu_forward(gate, up, n, out, dtype);
  if (s != QLORA_OK) return s;
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
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++) {
    const uint64_t o = (uint64_t)r * vocab;
    const int32_t t = targets[r];
    if (t < 0) {  // ignored row
      losses[r] = 0.0f;
      if (dlogits)
        for (uint64_t j = 0; j < vocab; j++) store_float(dlogits, dtype, o + j, 0.0f);
      continue;
    }
    float m = -INFINITY;
    for (uint64_t j = 0; j < vocab; j++) m = fmaxf(m, load_float(logits, dtype, o + j));
    float sum = 0.0f;
    for (uint64_t j = 0; j < vocab; j++) sum += expf(load_float(logits, dtype, o + j) - m);
    const float lse = m + logf(sum);
    losses[r] = lse - load_float(logits, dtype, o + (uint64_t)t);  // read before dlogits (may alias) is written
    if (dlogits)
      for (uint64_t j = 0; j < vocab; j++) {
        const float p = expf(load_float(logits, dtype, o + j) - lse);
        store_float(dlogits, dtype, o + j, (p - (j == (uint64_t)t ? 1.0f : 0.0f)) * grad_scale);
      }
  }
  return QLORA_OK;
}

}  // extern "C"
