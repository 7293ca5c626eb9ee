// gpu/model.cu: the ops of a LLaMA-style model on the GPU (mirrors cpu/model.cpp): embedding, RMSNorm,
// RoPE, causal grouped-query attention, SwiGLU and cross-entropy, forward and backward side by side, and
// generation's key/value cache.
// Activations are f32 or bf16, loaded to f32 and computed in f32; argument checks and the shared
// formulas (RoPE angles, SiLU) come from common/validate_model.h, so both backends accept the same calls
// and agree to float rounding (expf, sinf, logf and the order of sums differ from the CPU in the last bits).
//
//   embedding     forward: token check (read back), then one block per row gathers; backward: the same
//                 check, rows sorted by token (CUB radix sort, stable), then one block per token sums
//                 its rows in order and adds once: deterministic, bit for bit the CPU's result.
//   rmsnorm       one warp per row (shuffle sums); dweight from per-chunk column sums (f32 scratch), added
//                 in a fixed order: deterministic (the CPU sums the rows in another order: float rounding).
//   rope          one thread per pair, blocks over (batch, position) rows.
//   attention     FlashAttention-2 style on CUDA cores, f32 in shared memory: one block of 16 x 16 threads
//                 per (query tile, batch, head), keys and values streamed in tiles, online softmax; lse
//                 saved. Backward: D = rowsum(dout * out), then one kernel per key tile for dk and dv (all
//                 query heads of its kv head, so grouped-query sums need no atomics) and one per query
//                 tile for dq, both recomputing P from lse: deterministic, O(seq) extra memory.
//                 Over a key/value cache (qlora_attention_cached) the same forward kernel, its queries at
//                 positions past.., keys from each sequence's first_key, 16-row query tiles for a decode step.
//   rope_at, kv   RoPE at explicit positions (one thread per pair); the cache append is a strided copy.
//   swiglu        elementwise.
//   cross-entropy target check (read back), then one block per row: online max and sum of exp, loss,
//                 then the gradient (in place when dlogits aliases logits).
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <mutex>

#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "../common/validate_model.h"
#include "gpu.cuh"

namespace qlora {
namespace {

// ---- shared pieces ----------------------------------------------------------------------------

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum and max over the 16 lanes of a half warp (lanes that differ only in bits 0..3); all 32 lanes call.
__device__ __forceinline__ float half_warp_sum(float v) {
  for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float half_warp_max(float v) {
  for (int offset = 8; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The lowest row whose token (or target) is bad, read back by the host; one call at a time uses it.
__device__ unsigned long long g_first_bad;
std::mutex g_first_bad_mutex;
constexpr unsigned long long kNone = ~0ull;

// One thread per row: rows whose index is outside [0, vocab) (and, with allow_ignore, not -1) go to
// first_bad (the lowest wins).
__global__ void check_indices_kernel(const int32_t* idx, uint64_t rows, uint64_t vocab, bool allow_ignore,
                                     unsigned long long* first_bad) {
  for (uint64_t r = global_thread(); r < rows; r += grid_threads()) {
    const int32_t t = idx[r];
    if ((t < 0 || (uint64_t)t >= vocab) && !(allow_ignore && t == -1)) atomicMin(first_bad, (unsigned long long)r);
  }
}

// Checks the rows' token values on the device before anything is written; waits for the stream. Fails
// with bad_token()'s message (the lowest bad row) as the CPU does.
qlora_status check_indices(const int32_t* idx, uint64_t rows, uint64_t vocab, bool allow_ignore, const char* fn,
                           const char* what) {
  std::lock_guard<std::mutex> lock(g_first_bad_mutex);
  void* p = nullptr;
  qlora_status s = cuda_status(cudaGetSymbolAddress(&p, g_first_bad), fn);
  if (s == QLORA_OK) s = cuda_status(cudaMemsetAsync(p, 0xff, sizeof(unsigned long long), gpu_stream()), fn);
  if (s != QLORA_OK) return s;
  auto* first_bad = (unsigned long long*)p;
  QLORA_LAUNCH(check_indices_kernel, grid_for(rows), kThreads, 0, gpu_stream())(idx, rows, vocab, allow_ignore, first_bad);
  if ((s = launch_status(fn)) != QLORA_OK) return s;
  unsigned long long bad = kNone;
  s = cuda_status(cudaMemcpyAsync(&bad, first_bad, sizeof bad, cudaMemcpyDeviceToHost, gpu_stream()), fn);
  if (s == QLORA_OK) s = cuda_status(cudaStreamSynchronize(gpu_stream()), fn);
  if (s != QLORA_OK || bad == kNone) return s;
  int32_t value = 0;
  s = cuda_status(cudaMemcpyAsync(&value, idx + bad, sizeof value, cudaMemcpyDeviceToHost, gpu_stream()), fn);
  if (s == QLORA_OK) s = cuda_status(cudaStreamSynchronize(gpu_stream()), fn);
  if (s != QLORA_OK) return s;
  return bad_token(fn, what, bad, value, vocab);
}

// ---- embedding ------------------------------------------------------------------------------------

// Blocks over rows (grid-stride), threads over dim: out[r, :] = table[tokens[r], :] (tokens checked).
__global__ void embedding_forward_kernel(const int32_t* tokens, uint64_t rows, const void* table, uint64_t dim,
                                         void* out, int32_t dtype) {
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const uint64_t src = (uint64_t)tokens[r] * dim, dst = r * dim;
    if (dtype == QLORA_F32) {
      for (uint64_t d = threadIdx.x; d < dim; d += blockDim.x) ((float*)out)[dst + d] = ((const float*)table)[src + d];
    } else {
      for (uint64_t d = threadIdx.x; d < dim; d += blockDim.x)
        ((uint16_t*)out)[dst + d] = ((const uint16_t*)table)[src + d];
    }
  }
}

// Backward, after the rows were sorted by token (stable: rows of a token in ascending order): one block
// per sorted position that starts a token's run sums the run's dout rows in f32, in row order, and adds
// the sum to dtable once, exactly as the CPU does (the same additions in the same order: bit for bit,
// and deterministic).
__global__ void embedding_backward_kernel(const uint32_t* sorted_tokens, const uint32_t* sorted_rows, uint64_t rows,
                                          const void* dout, uint64_t dim, void* dtable, int32_t dtype) {
  for (uint64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const uint32_t token = sorted_tokens[i];
    if (i > 0 && sorted_tokens[i - 1] == token) continue;  // not the start of a run (uniform across the block)
    for (uint64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      float sum = 0.0f;
      for (uint64_t x = i; x < rows && sorted_tokens[x] == token; x++)
        sum += load_float(dout, dtype, (uint64_t)sorted_rows[x] * dim + d);
      const uint64_t at = (uint64_t)token * dim + d;
      store_float(dtable, dtype, at, load_float(dtable, dtype, at) + sum);
    }
  }
}

__global__ void iota_kernel(uint32_t* out, uint64_t n) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads()) out[i] = (uint32_t)i;
}

// ---- RMSNorm --------------------------------------------------------------------------------------

constexpr unsigned kWarpsPerBlock = kThreads / 32;

// One warp per row: rstd = 1 / sqrt(mean(x^2) + eps), out = x * rstd * weight.
__global__ void rmsnorm_forward_kernel(const void* x, const void* weight, uint64_t rows, uint64_t dim, float eps,
                                       void* out, float* rstd, int32_t dtype) {
  const unsigned lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t r = global_thread() / 32; r < rows; r += warps) {  // uniform across the warp
    const uint64_t base = r * dim;
    float ss = 0.0f;
    for (uint64_t d = lane; d < dim; d += 32) {
      const float v = load_float(x, dtype, base + d);
      ss += v * v;
    }
    ss = warp_sum(ss);
    const float rs = 1.0f / sqrtf(ss / (float)dim + eps);
    for (uint64_t d = lane; d < dim; d += 32)
      store_float(out, dtype, base + d, load_float(x, dtype, base + d) * rs * load_float(weight, dtype, d));
    if (lane == 0) rstd[r] = rs;
  }
}

// One warp per row, the CPU's formula: with xhat = x * rstd and g = dout * weight,
//   dx = rstd * (g - xhat * mean(g * xhat)).
__global__ void rmsnorm_backward_dx_kernel(const void* dout, const void* x, const void* weight, const float* rstd,
                                           uint64_t rows, uint64_t dim, void* dx, int32_t dtype) {
  const unsigned lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t r = global_thread() / 32; r < rows; r += warps) {
    const uint64_t base = r * dim;
    const float rs = rstd[r];
    float dot = 0.0f;
    for (uint64_t d = lane; d < dim; d += 32)
      dot += load_float(dout, dtype, base + d) * load_float(weight, dtype, d) * (load_float(x, dtype, base + d) * rs);
    const float mean = warp_sum(dot) / (float)dim;
    for (uint64_t d = lane; d < dim; d += 32) {
      const float g = load_float(dout, dtype, base + d) * load_float(weight, dtype, d);
      const float xhat = load_float(x, dtype, base + d) * rs;
      store_float(dx, dtype, base + d, rs * (g - xhat * mean));
    }
  }
}

// dweight in two deterministic steps: partial[c, j] = sum over the rows of chunk c of dout * x * rstd
// (thread per column, grid (column blocks, chunks)), then dweight[j] += sum over c of partial[c, j].
__global__ void rmsnorm_dweight_partial_kernel(const void* dout, const void* x, const float* rstd, uint64_t rows,
                                               uint64_t dim, uint64_t rows_per_chunk, float* partial,
                                               int32_t dtype) {
  const uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= dim) return;
  const uint64_t r0 = blockIdx.y * rows_per_chunk;
  const uint64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc = 0.0f;
  for (uint64_t r = r0; r < r1; r++)
    acc += load_float(dout, dtype, r * dim + j) * (load_float(x, dtype, r * dim + j) * rstd[r]);
  partial[blockIdx.y * dim + j] = acc;
}

__global__ void rmsnorm_dweight_sum_kernel(const float* partial, uint64_t chunks, uint64_t dim, void* dweight,
                                           int32_t dtype) {
  for (uint64_t j = global_thread(); j < dim; j += grid_threads()) {
    float acc = 0.0f;
    for (uint64_t c = 0; c < chunks; c++) acc += partial[c * dim + j];
    store_float(dweight, dtype, j, load_float(dweight, dtype, j) + acc);
  }
}

// ---- RoPE -----------------------------------------------------------------------------------------

// Blocks over the rows, threads over the heads * head_dim / 2 pairs of a row. Row r turns to position
// positions[r] (qlora_rope_at), or without positions to r % seq (qlora_rope: [batch, seq] rows).
__global__ void rope_kernel(void* x, uint64_t rows, uint64_t seq, const int32_t* positions, uint64_t heads,
                            uint64_t head_dim, float theta, int32_t inverse, int32_t dtype) {
  const uint64_t half = head_dim / 2, pairs = heads * half;
  for (uint64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = positions ? (int64_t)positions[row] : (int64_t)(row % seq);
    for (uint64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const uint64_t i = p % half;
      const float angle = rope_angle(t, rope_inv_freq(theta, i, head_dim));
      float s, c;
      sincosf(angle, &s, &c);
      if (inverse) s = -s;
      // pair p of the row: head p / half, elements i and i + half of that head (half-split layout)
      const uint64_t at = row * heads * head_dim + (p / half) * head_dim + i;
      float a = load_float(x, dtype, at), b = load_float(x, dtype, at + half);
      rope_rotate(a, b, c, s);
      store_float(x, dtype, at, a);
      store_float(x, dtype, at + half, b);
    }
  }
}

// ---- the key/value cache ----------------------------------------------------------------------------

// Copies n elements of [batch, tokens, kv_dim] into rows at.. of [batch, capacity, kv_dim], 16-bit or 32-bit
// words (es bytes each), grid-stride.
__global__ void kv_append_kernel(const void* src, void* cache, uint64_t tokens, uint64_t kv_dim, uint64_t capacity,
                                 uint64_t at, uint64_t n, uint64_t es) {
  const uint64_t per_seq = tokens * kv_dim;
  for (uint64_t i = global_thread(); i < n; i += grid_threads()) {
    const uint64_t b = i / per_seq, r = i % per_seq, dst = (b * capacity + at) * kv_dim + r;
    if (es == 4) ((uint32_t*)cache)[dst] = ((const uint32_t*)src)[i];
    else ((uint16_t*)cache)[dst] = ((const uint16_t*)src)[i];
  }
}

// ---- attention --------------------------------------------------------------------------------------
// Every attention kernel runs 256 threads as a 16 x 16 grid: tx = tid % 16 picks columns, ty = tid / 16
// rows; a thread owns rows ty + 16 i and columns tx + 16 j of each tile product (the 16 threads of a row
// are one half warp, so row maxima and sums are half-warp shuffles). Tiles live in shared memory as f32,
// zero-filled past seq and past head_dim (the kernels are compiled for D = 64 and 128 and take any
// head_dim <= D). Shared-memory row strides avoid bank conflicts: D + 1 (odd) for tiles read down a
// column by different rows, BK + 16 for probability tiles (the two rows of a warp 16 banks apart).

constexpr int kAttnThreads = 256;

struct AttnArgs {
  const void* q;     // [batch, seq, heads, hd]
  const void* k;     // [batch, seq, kv_heads, hd]
  const void* v;     // [batch, seq, kv_heads, hd]
  const void* dout;  // backward: like q
  const void* out;   // backward: like q
  void* o;           // forward: out; backward: dq
  void* dk;          // backward
  void* dv;          // backward
  float* lse;        // [batch, heads, seq]
  float* di;         // backward: rowsum(dout * out), like lse
  const int32_t* first_key;  // forward over a cache: each sequence's first key (NULL: 0)
  uint64_t batch, heads, kv_heads;
  int seq, hd;
  int past;     // forward over a cache: the key position of query 0 (training: 0)
  int kv_rows;  // rows per sequence of k and v (training: seq; a cache: its capacity)
  float scale;
  int32_t dtype;
};

// rows x D tile of a [batch, rows, nh, hd] tensor: rows row0.. of head `head` of batch b (zeros from row
// `bound` on), stride ld.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(float* dst, int ld, const void* src, int32_t dtype, uint64_t b,
                                          uint64_t head, uint64_t nh, int row0, int rows, int bound, int hd) {
  const uint64_t base = (b * (uint64_t)rows * nh + head) * (uint64_t)hd, row_stride = nh * (uint64_t)hd;
  for (int e = threadIdx.x; e < ROWS * D; e += kAttnThreads) {
    const int r = e / D, d = e % D, t = row0 + r;
    dst[r * ld + d] = (t < bound && d < hd) ? load_float(src, dtype, base + (uint64_t)t * row_stride + d) : 0.0f;
  }
}
// The same for a [batch, seq, nh, hd] tensor, zeros past seq.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(float* dst, int ld, const void* src, int32_t dtype, uint64_t b,
                                          uint64_t head, uint64_t nh, int row0, int seq, int hd) {
  load_tile<D, ROWS>(dst, ld, src, dtype, b, head, nh, row0, seq, seq, hd);
}

// rows of an f32 [batch, heads, seq] vector (lse, di) into dst; pad past seq.
template <int ROWS>
__device__ __forceinline__ void load_row_values(float* dst, const float* src, uint64_t bh, int row0, int seq,
                                                float pad) {
  for (int r = threadIdx.x; r < ROWS; r += kAttnThreads)
    dst[r] = row0 + r < seq ? src[bh * (uint64_t)seq + row0 + r] : pad;
}

// acc[i][j] = sum_d a[ty + 16 i][d] * b[tx + 16 j][d]: a tile times a transposed tile.
template <int D, int RI, int CJ>
__device__ __forceinline__ void tile_dot(float (&acc)[RI][CJ], const float* a, int lda, const float* b, int ldb,
                                         int ty, int tx) {
#pragma unroll
  for (int i = 0; i < RI; i++)
#pragma unroll
    for (int j = 0; j < CJ; j++) acc[i][j] = 0.0f;
#pragma unroll 8
  for (int d = 0; d < D; d++) {
    float av[RI], bv[CJ];
#pragma unroll
    for (int i = 0; i < RI; i++) av[i] = a[(ty + 16 * i) * lda + d];
#pragma unroll
    for (int j = 0; j < CJ; j++) bv[j] = b[(tx + 16 * j) * ldb + d];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// acc[i][j] += sum_c p[ty + 16 i][c] * v[c][tx + 16 j] for c < K: a tile times a tile.
template <int K, int RI, int DJ>
__device__ __forceinline__ void tile_mul_add(float (&acc)[RI][DJ], const float* p, int ldp, const float* v, int ldv,
                                             int ty, int tx) {
#pragma unroll 4
  for (int c = 0; c < K; c++) {
    float pv[RI], vv[DJ];
#pragma unroll
    for (int i = 0; i < RI; i++) pv[i] = p[(ty + 16 * i) * ldp + c];
#pragma unroll
    for (int j = 0; j < DJ; j++) vv[j] = v[c * ldv + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < DJ; j++) acc[i][j] = fmaf(pv[i], vv[j], acc[i][j]);
  }
}

// acc[i][j] += sum_r p[r][ty + 16 i] * v[r][tx + 16 j] for r < K: a transposed tile times a tile.
template <int K, int RI, int DJ>
__device__ __forceinline__ void tile_tmul_add(float (&acc)[RI][DJ], const float* p, int ldp, const float* v, int ldv,
                                              int ty, int tx) {
#pragma unroll 4
  for (int r = 0; r < K; r++) {
    float pv[RI], vv[DJ];
#pragma unroll
    for (int i = 0; i < RI; i++) pv[i] = p[r * ldp + ty + 16 * i];
#pragma unroll
    for (int j = 0; j < DJ; j++) vv[j] = v[r * ldv + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < DJ; j++) acc[i][j] = fmaf(pv[i], vv[j], acc[i][j]);
  }
}

// Stores acc[i][j] * mul at rows row0 + ty + 16 i, columns tx + 16 j of head `head` (rows < seq, columns < hd).
template <int RI, int DJ>
__device__ __forceinline__ void store_tile(void* dst, int32_t dtype, const float (&acc)[RI][DJ], float mul, uint64_t b,
                                           uint64_t head, uint64_t nh, int row0, int seq, int hd, int ty, int tx) {
  const uint64_t base = (b * (uint64_t)seq * nh + head) * (uint64_t)hd, row_stride = nh * (uint64_t)hd;
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int t = row0 + ty + 16 * i;
    if (t >= seq) continue;
#pragma unroll
    for (int j = 0; j < DJ; j++) {
      const int d = tx + 16 * j;
      if (d < hd) store_float(dst, dtype, base + (uint64_t)t * row_stride + d, acc[i][j] * mul);
    }
  }
}

// Shared-memory row strides and sizes of each kernel, in floats (host and device).
template <int D>
__host__ __device__ constexpr int attn_ld_row() { return D + 1; }
template <int BK>
__host__ __device__ constexpr int attn_ld_p() { return BK + 16; }
template <int D, int BQ, int BK>
__host__ __device__ constexpr int attn_forward_smem() { return BQ * (D + 1) + BK * (D + 1) + BK * D + BQ * (BK + 16); }
template <int D, int BQ, int BK>
__host__ __device__ constexpr int attn_backward_dkdv_smem() { return 2 * BK * (D + 1) + 2 * BQ * (D + 1) + 2 * BQ * (BK + 16) + 2 * BQ; }
template <int D, int BQ, int BK>
__host__ __device__ constexpr int attn_backward_dq_smem() { return 2 * BQ * (D + 1) + 2 * BK * (D + 1) + BQ * (BK + 16) + 2 * BQ; }

// Forward: one block per (query tile, batch, head), the heaviest (last) query tiles first. Per key tile:
// S = Q K^T * scale (causal mask), row max m and the thread's share of the row sum l updated online,
// O rescaled, P = exp(S - m) through shared memory, O += P V. At the end out = O / l, lse = m + log l.
// Over a cache (qlora_attention_cached), query qi sits at key position past + qi and attends the keys
// lo .. past + qi of its sequence (lo = its first_key); a row with no key gets zeros. Training: past = 0,
// lo = 0, kv_rows = seq.
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(kAttnThreads) attention_forward_kernel(AttnArgs a) {
  QLORA_EXTERN_SHARED(float, smem);
  constexpr int RI = BQ / 16, CJ = BK / 16, DJ = D / 16, LD = attn_ld_row<D>(), LDP = attn_ld_p<BK>();
  float* qs = smem;
  float* ks = qs + BQ * LD;
  float* vs = ks + BK * LD;
  float* ps = vs + BK * D;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const uint64_t group = a.heads / a.kv_heads, bh_count = a.batch * a.heads;
  const uint64_t qtiles = ((uint64_t)a.seq + BQ - 1) / BQ;
  for (uint64_t w = blockIdx.x; w < qtiles * bh_count; w += gridDim.x) {  // uniform across the block
    const int q0 = (int)(qtiles - 1 - w / bh_count) * BQ;
    const uint64_t bh = w % bh_count, b = bh / a.heads, h = bh % a.heads, kh = h / group;
    const int lo = (int)cached_first_key(a.first_key, b), keys = a.past + a.seq;
    __syncthreads();  // the previous item is done with shared memory
    load_tile<D, BQ>(qs, LD, a.q, a.dtype, b, h, a.heads, q0, a.seq, a.hd);
    float o[RI][DJ], m[RI], l[RI];
#pragma unroll
    for (int i = 0; i < RI; i++) {
      m[i] = -INFINITY;
      l[i] = 0.0f;
#pragma unroll
      for (int j = 0; j < DJ; j++) o[i][j] = 0.0f;
    }
    const int kend = a.past + min(a.seq, q0 + BQ);  // causal: no key beyond the tile's last query
    for (int k0 = lo / BK * BK; k0 < kend; k0 += BK) {
      __syncthreads();  // ks, vs and ps are free
      load_tile<D, BK>(ks, LD, a.k, a.dtype, b, kh, a.kv_heads, k0, a.kv_rows, keys, a.hd);
      load_tile<D, BK>(vs, D, a.v, a.dtype, b, kh, a.kv_heads, k0, a.kv_rows, keys, a.hd);
      __syncthreads();
      float s[RI][CJ];
      tile_dot<D>(s, qs, LD, ks, LD, ty, tx);
#pragma unroll
      for (int i = 0; i < RI; i++) {
        const int qi = q0 + ty + 16 * i;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          const int kj = k0 + tx + 16 * j;
          s[i][j] = (kj >= lo && kj <= a.past + qi && kj < keys) ? s[i][j] * a.scale : -INFINITY;
          mx = fmaxf(mx, s[i][j]);
        }
        const float m_new = fmaxf(m[i], half_warp_max(mx));
        // In training every row sees key 0 in the first tile, so m_new is finite from then on; the guard
        // keeps a row with no key yet (over a cache: a padding row) at zeros instead of NaN.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = expf(m[i] - m_use);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          const float p = expf(s[i][j] - m_use);
          sum += p;
          ps[(ty + 16 * i) * LDP + tx + 16 * j] = p;
        }
        l[i] = l[i] * alpha + sum;
        m[i] = m_new;
#pragma unroll
        for (int j = 0; j < DJ; j++) o[i][j] *= alpha;
      }
      __syncthreads();
      tile_mul_add<BK>(o, ps, LDP, vs, D, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < RI; i++) {
      const float lt = half_warp_sum(l[i]);
      const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;  // 0: a row with no key (over a cache) gets zeros
#pragma unroll
      for (int j = 0; j < DJ; j++) o[i][j] *= inv;
      const int qi = q0 + ty + 16 * i;
      if (a.lse && tx == 0 && qi < a.seq) a.lse[bh * (uint64_t)a.seq + qi] = m[i] + logf(lt);
    }
    store_tile(a.o, a.dtype, o, 1.0f, b, h, a.heads, q0, a.seq, a.hd, ty, tx);
  }
}

// Backward, step 1: di[b, h, t] = sum_d dout * out, one warp per (b, t, h) row.
__global__ void attention_di_kernel(const void* dout, const void* out, uint64_t batch, int seq, uint64_t heads,
                                    int hd, float* di, int32_t dtype) {
  const unsigned lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32, rows = batch * (uint64_t)seq * heads;
  for (uint64_t r = global_thread() / 32; r < rows; r += warps) {
    float acc = 0.0f;
    for (uint64_t d = lane; d < (uint64_t)hd; d += 32)
      acc += load_float(dout, dtype, r * hd + d) * load_float(out, dtype, r * hd + d);
    acc = warp_sum(acc);
    const uint64_t h = r % heads, bt = r / heads, t = bt % seq, b = bt / seq;
    if (lane == 0) di[(b * heads + h) * seq + t] = acc;
  }
}

// P and dS of one (query tile, key tile) pair: S = Q K^T, dP = dO V^T (tiles in shared memory), then
// P = exp(S * scale - lse) on the causal mask (0 elsewhere) and dS = P * (dP - di).
template <int D, int RI, int CJ>
__device__ __forceinline__ void attention_probabilities(float (&p)[RI][CJ], float (&ds)[RI][CJ], const float* qs,
                                                        const float* dos, const float* ks, const float* vs,
                                                        const float* lses, const float* dis, int q0, int k0, int seq,
                                                        float scale, int ty, int tx) {
  constexpr int LD = D + 1;
  float dp[RI][CJ];
  tile_dot<D>(p, qs, LD, ks, LD, ty, tx);
  tile_dot<D>(dp, dos, LD, vs, LD, ty, tx);
#pragma unroll
  for (int i = 0; i < RI; i++) {
    const int r = ty + 16 * i, qi = q0 + r;
#pragma unroll
    for (int j = 0; j < CJ; j++) {
      const int kj = k0 + tx + 16 * j;
      p[i][j] = (kj <= qi && qi < seq) ? expf(p[i][j] * scale - lses[r]) : 0.0f;
      ds[i][j] = p[i][j] * (dp[i][j] - dis[r]);
    }
  }
}

// Backward, dk and dv: one block per (key tile, batch, kv head), the heaviest (first) key tiles first. For
// every query head of the kv head and every query tile at or after the key tile: P and dS, then
// dv += P^T dO and dk += dS^T Q (scaled at the end), accumulated in registers.
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(kAttnThreads) attention_backward_dkdv_kernel(AttnArgs a) {
  QLORA_EXTERN_SHARED(float, smem);
  constexpr int RI = BQ / 16, CJ = BK / 16, KI = BK / 16, DJ = D / 16, LD = attn_ld_row<D>(), LDP = attn_ld_p<BK>();
  float* ks = smem;
  float* vs = ks + BK * LD;
  float* qs = vs + BK * LD;
  float* dos = qs + BQ * LD;
  float* ps = dos + BQ * LD;
  float* dss = ps + BQ * LDP;
  float* lses = dss + BQ * LDP;
  float* dis = lses + BQ;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const uint64_t group = a.heads / a.kv_heads, bkh_count = a.batch * a.kv_heads;
  const uint64_t ktiles = ((uint64_t)a.seq + BK - 1) / BK;
  for (uint64_t w = blockIdx.x; w < ktiles * bkh_count; w += gridDim.x) {  // uniform across the block
    const int k0 = (int)(w / bkh_count) * BK;
    const uint64_t bkh = w % bkh_count, b = bkh / a.kv_heads, kh = bkh % a.kv_heads;
    __syncthreads();
    load_tile<D, BK>(ks, LD, a.k, a.dtype, b, kh, a.kv_heads, k0, a.seq, a.hd);
    load_tile<D, BK>(vs, LD, a.v, a.dtype, b, kh, a.kv_heads, k0, a.seq, a.hd);
    float dk[KI][DJ], dv[KI][DJ];
#pragma unroll
    for (int i = 0; i < KI; i++)
#pragma unroll
      for (int j = 0; j < DJ; j++) dk[i][j] = dv[i][j] = 0.0f;
    for (uint64_t h = kh * group; h < (kh + 1) * group; h++) {
      const uint64_t bh = b * a.heads + h;
      for (int q0 = k0 / BQ * BQ; q0 < a.seq; q0 += BQ) {
        __syncthreads();  // qs, dos, ps, dss, lses and dis are free
        load_tile<D, BQ>(qs, LD, a.q, a.dtype, b, h, a.heads, q0, a.seq, a.hd);
        load_tile<D, BQ>(dos, LD, a.dout, a.dtype, b, h, a.heads, q0, a.seq, a.hd);
        load_row_values<BQ>(lses, a.lse, bh, q0, a.seq, 0.0f);
        load_row_values<BQ>(dis, a.di, bh, q0, a.seq, 0.0f);
        __syncthreads();
        float p[RI][CJ], ds[RI][CJ];
        attention_probabilities<D>(p, ds, qs, dos, ks, vs, lses, dis, q0, k0, a.seq, a.scale, ty, tx);
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
          for (int j = 0; j < CJ; j++) {
            ps[(ty + 16 * i) * LDP + tx + 16 * j] = p[i][j];
            dss[(ty + 16 * i) * LDP + tx + 16 * j] = ds[i][j];
          }
        __syncthreads();
        tile_tmul_add<BQ>(dv, ps, LDP, dos, LD, ty, tx);
        tile_tmul_add<BQ>(dk, dss, LDP, qs, LD, ty, tx);
      }
    }
    store_tile(a.dk, a.dtype, dk, a.scale, b, kh, a.kv_heads, k0, a.seq, a.hd, ty, tx);
    store_tile(a.dv, a.dtype, dv, 1.0f, b, kh, a.kv_heads, k0, a.seq, a.hd, ty, tx);
  }
}

// Backward, dq: one block per (query tile, batch, head), the heaviest (last) query tiles first; for every
// key tile up to the diagonal: dS as above, dq += dS K (scaled at the end).
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(kAttnThreads) attention_backward_dq_kernel(AttnArgs a) {
  QLORA_EXTERN_SHARED(float, smem);
  constexpr int RI = BQ / 16, CJ = BK / 16, DJ = D / 16, LD = attn_ld_row<D>(), LDP = attn_ld_p<BK>();
  float* qs = smem;
  float* dos = qs + BQ * LD;
  float* ks = dos + BQ * LD;
  float* vs = ks + BK * LD;
  float* dss = vs + BK * LD;
  float* lses = dss + BQ * LDP;
  float* dis = lses + BQ;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const uint64_t group = a.heads / a.kv_heads, bh_count = a.batch * a.heads;
  const uint64_t qtiles = ((uint64_t)a.seq + BQ - 1) / BQ;
  for (uint64_t w = blockIdx.x; w < qtiles * bh_count; w += gridDim.x) {  // uniform across the block
    const int q0 = (int)(qtiles - 1 - w / bh_count) * BQ;
    const uint64_t bh = w % bh_count, b = bh / a.heads, h = bh % a.heads, kh = h / group;
    __syncthreads();
    load_tile<D, BQ>(qs, LD, a.q, a.dtype, b, h, a.heads, q0, a.seq, a.hd);
    load_tile<D, BQ>(dos, LD, a.dout, a.dtype, b, h, a.heads, q0, a.seq, a.hd);
    load_row_values<BQ>(lses, a.lse, bh, q0, a.seq, 0.0f);
    load_row_values<BQ>(dis, a.di, bh, q0, a.seq, 0.0f);
    float dq[RI][DJ];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < DJ; j++) dq[i][j] = 0.0f;
    const int kend = min(a.seq, q0 + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
      __syncthreads();  // ks, vs and dss are free
      load_tile<D, BK>(ks, LD, a.k, a.dtype, b, kh, a.kv_heads, k0, a.seq, a.hd);
      load_tile<D, BK>(vs, LD, a.v, a.dtype, b, kh, a.kv_heads, k0, a.seq, a.hd);
      __syncthreads();
      float p[RI][CJ], ds[RI][CJ];
      attention_probabilities<D>(p, ds, qs, dos, ks, vs, lses, dis, q0, k0, a.seq, a.scale, ty, tx);
#pragma unroll
      for (int i = 0; i < RI; i++)
#pragma unroll
        for (int j = 0; j < CJ; j++) dss[(ty + 16 * i) * LDP + tx + 16 * j] = ds[i][j];
      __syncthreads();
      tile_mul_add<BK>(dq, dss, LDP, ks, LD, ty, tx);
    }
    store_tile(a.o, a.dtype, dq, a.scale, b, h, a.heads, q0, a.seq, a.hd, ty, tx);
  }
}

// Launches kernel over `items` blocks (capped; the kernels loop) with `floats` of dynamic shared memory.
qlora_status launch_attention(void (*kernel)(AttnArgs), const char* name, const AttnArgs& args, uint64_t items,
                              int floats, const char* what) {
  const int bytes = floats * (int)sizeof(float);
  qlora_status s = cuda_status(cudaFuncSetAttribute((const void*)kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
  if (s != QLORA_OK) return s;
  launch_kernel(kernel, name, grid_for(items, 1), kAttnThreads, bytes, gpu_stream())(args);
  return launch_status(what);
}

// Tile sizes per head-dim bound: forward (BQ, BK) = (64, 64) for D = 64 and (64, 32) for D = 128;
// backward (32, 64) and (32, 32). About 60-80 KB of shared memory per block: two blocks per SM on A100
// and H100.
template <int D>
struct AttnTiles;
template <>
struct AttnTiles<64> {
  static constexpr int kFwdQ = 64, kFwdK = 64, kBwdQ = 32, kBwdK = 64;
};
template <>
struct AttnTiles<128> {
  static constexpr int kFwdQ = 64, kFwdK = 32, kBwdQ = 32, kBwdK = 32;
};

// The forward with query tiles of BQ rows (training: AttnTiles<D>::kFwdQ; a decode step over a cache, at
// most 16 queries per sequence: one 16-row tile, not a 64-row tile of mostly empty rows).
template <int D, int BQ>
qlora_status attention_forward_tiles(const AttnArgs& a, const char* what) {
  constexpr int BK = AttnTiles<D>::kFwdK;
  const uint64_t items = ((uint64_t)a.seq + BQ - 1) / BQ * a.batch * a.heads;
  return launch_attention(attention_forward_kernel<D, BQ, BK>, "attention_forward_kernel", a, items,
                          attn_forward_smem<D, BQ, BK>(), what);
}
template <int D>
qlora_status attention_forward_d(const AttnArgs& a, const char* what) {
  return attention_forward_tiles<D, AttnTiles<D>::kFwdQ>(a, what);
}

template <int D>
qlora_status attention_backward_d(const AttnArgs& a, const char* what) {
  constexpr int BQ = AttnTiles<D>::kBwdQ, BK = AttnTiles<D>::kBwdK;
  const uint64_t ktiles = ((uint64_t)a.seq + BK - 1) / BK, qtiles = ((uint64_t)a.seq + BQ - 1) / BQ;
  qlora_status s = launch_attention(attention_backward_dkdv_kernel<D, BQ, BK>, "attention_backward_dkdv_kernel", a,
                                    ktiles * a.batch * a.kv_heads,
                                    attn_backward_dkdv_smem<D, BQ, BK>(), what);
  if (s != QLORA_OK) return s;
  return launch_attention(attention_backward_dq_kernel<D, BQ, BK>, "attention_backward_dq_kernel", a,
                          qtiles * a.batch * a.heads,
                          attn_backward_dq_smem<D, BQ, BK>(), what);
}

// The largest head_dim the kernels take (the CPU takes any).
constexpr uint64_t kMaxHeadDim = 128;

qlora_status check_head_dim(uint64_t head_dim, const char* fn) {
  if (head_dim > kMaxHeadDim)
    return fail(QLORA_ERR_UNSUPPORTED, "Cannot %s: head_dim %llu is above %llu, the largest the CUDA kernels take",
                fn, (unsigned long long)head_dim, (unsigned long long)kMaxHeadDim);
  return QLORA_OK;
}

// ---- SwiGLU -----------------------------------------------------------------------------------------

__global__ void swiglu_forward_kernel(const void* gate, const void* up, uint64_t n, void* out, int32_t dtype) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads())
    store_float(out, dtype, i, swiglu_value(load_float(gate, dtype, i), load_float(up, dtype, i)));
}

// Each thread reads its element of every input before writing, so outputs may alias inputs.
__global__ void swiglu_backward_kernel(const void* dout, const void* gate, const void* up, uint64_t n, void* dgate,
                                       void* dup, int32_t dtype) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads()) {
    float dg, du;
    swiglu_grad(load_float(dout, dtype, i), load_float(gate, dtype, i), load_float(up, dtype, i), dg, du);
    store_float(dgate, dtype, i, dg);
    store_float(dup, dtype, i, du);
  }
}

// ---- cross-entropy ----------------------------------------------------------------------------------

// Merges the softmax partial (m2, s2) (max and sum of exp(x - max)) into (m, s). -inf parts add
// nothing; NaN propagates into s.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
  if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else if (!(m2 == -INFINITY)) {
    s += s2 * expf(m2 - m);
  }
}

// One block per row (grid-stride). Online max and sum of exp over the row (merged across the block),
// lse = m + log s; loss = lse - x[target]; then dlogits = (exp(x - lse) - onehot) * grad_scale. Ignored
// rows (-1) get loss 0 and zero gradients. x[target] is read before the barriers of the reduction, and
// each gradient element is written by the thread that read it: dlogits may alias logits.
__global__ void cross_entropy_kernel(const void* logits, const int32_t* targets, uint64_t rows, uint64_t vocab,
                                     float* losses, void* dlogits, float grad_scale, int32_t dtype) {
  __shared__ float red_m[kThreads / 32], red_s[kThreads / 32];
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t t = targets[r];
    const uint64_t base = r * vocab;
    if (t < 0) {  // ignored (targets were checked)
      if (threadIdx.x == 0) losses[r] = 0.0f;
      if (dlogits)
        for (uint64_t j = threadIdx.x; j < vocab; j += blockDim.x) store_float(dlogits, dtype, base + j, 0.0f);
      continue;
    }
    const float xt = load_float(logits, dtype, base + (uint64_t)t);  // every thread, before any write
    float m = -INFINITY, s = 0.0f;
    for (uint64_t j = threadIdx.x; j < vocab; j += blockDim.x) softmax_merge(m, s, load_float(logits, dtype, base + j), 1.0f);
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
      softmax_merge(m, s, m2, s2);
    }
    __syncthreads();  // the previous row is done with red_m and red_s
    if (lane == 0) {
      red_m[warp] = m;
      red_s[warp] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
    for (unsigned w = 1; w < blockDim.x / 32; w++) softmax_merge(m, s, red_m[w], red_s[w]);
    const float lse = m + logf(s);
    if (threadIdx.x == 0) losses[r] = lse - xt;
    if (dlogits) {
      for (uint64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float p = expf(load_float(logits, dtype, base + j) - lse);
        store_float(dlogits, dtype, base + j, (p - (j == (uint64_t)t ? 1.0f : 0.0f)) * grad_scale);
      }
    }
  }
}

}  // namespace
}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_embedding_forward(const int32_t* tokens, uint64_t rows, const void* table,
                                               uint64_t vocab, uint64_t dim, void* out, int32_t dtype) {
  qlora_status s = check_embedding_forward(tokens, rows, table, vocab, dim, out, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const char* fn = "look up embeddings";
  if ((s = check_indices(tokens, rows, vocab, false, fn, "tokens")) != QLORA_OK) return s;
  QLORA_LAUNCH(embedding_forward_kernel, grid_for(rows, 1), kThreads, 0, gpu_stream())(tokens, rows, table, dim, out, dtype);
  return launch_status(fn);
}

QLORA_API qlora_status qlora_embedding_backward(const int32_t* tokens, uint64_t rows, const void* dout,
                                                uint64_t vocab, uint64_t dim, void* dtable, int32_t dtype) {
  const char* fn = "compute the embedding gradient";
  qlora_status s = check_embedding_backward(tokens, rows, dout, vocab, dim, dtable, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  // Tokens are checked even for a frozen table, as on the CPU.
  if ((s = check_indices(tokens, rows, vocab, false, fn, "tokens")) != QLORA_OK || dtable == nullptr) return s;
  if (rows >= 0xffffffffull) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: rows must be below 2^32", fn);
  // Sort (token, row) pairs by token with CUB's stable radix sort, over the bits vocab - 1 needs.
  // Scratch: CUB's temporary storage and 3 * rows u32, stream-ordered.
  int end_bit = 1;
  while (end_bit < 32 && ((vocab - 1) >> end_bit) != 0) end_bit++;
  size_t temp_bytes = 0;
  s = cuda_status(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (const uint32_t*)nullptr, (uint32_t*)nullptr,
                                                  (const uint32_t*)nullptr, (uint32_t*)nullptr, rows, 0, end_bit,
                                                  gpu_stream()),
                  fn);
  if (s != QLORA_OK) return s;
  const uint64_t temp_aligned = (temp_bytes + 255) / 256 * 256;  // CUB's storage first, then the arrays
  const uint64_t bytes = temp_aligned + 3 * rows * sizeof(uint32_t);
  char* scratch = nullptr;
  s = scratch_malloc((void**)&scratch, bytes, fn);
  if (s != QLORA_OK) return s;
  uint32_t* row_ids = (uint32_t*)(scratch + temp_aligned);
  uint32_t *sorted_tokens = row_ids + rows, *sorted_rows = row_ids + 2 * rows;
  QLORA_LAUNCH(iota_kernel, grid_for(rows), kThreads, 0, gpu_stream())(row_ids, rows);
  s = launch_status(fn);
  if (s == QLORA_OK)
    s = cuda_status(cub::DeviceRadixSort::SortPairs((void*)scratch, temp_bytes, (const uint32_t*)tokens,
                                                    sorted_tokens, row_ids, sorted_rows, rows, 0, end_bit,
                                                    gpu_stream()),
                    fn);
  if (s == QLORA_OK) {
    QLORA_LAUNCH(embedding_backward_kernel, grid_for(rows, 1), kThreads, 0, gpu_stream())(sorted_tokens, sorted_rows, rows,
                                                                               dout, dim, dtable, dtype);
    s = launch_status(fn);
  }
  const qlora_status freed = scratch_free(scratch, bytes, fn);
  return s != QLORA_OK ? s : freed;
}

QLORA_API qlora_status qlora_rmsnorm_forward(const void* x, const void* weight, uint64_t rows, uint64_t dim,
                                             float eps, void* out, float* rstd, int32_t dtype) {
  qlora_status s = check_rmsnorm_forward(x, weight, rows, dim, eps, out, rstd, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  QLORA_LAUNCH(rmsnorm_forward_kernel, grid_for(rows, kWarpsPerBlock), kThreads, 0, gpu_stream())(x, weight, rows, dim, eps,
                                                                                       out, rstd, dtype);
  return launch_status("apply RMSNorm");
}

QLORA_API qlora_status qlora_rmsnorm_backward(const void* dout, const void* x, const void* weight,
                                              const float* rstd, uint64_t rows, uint64_t dim, void* dx,
                                              void* dweight, int32_t dtype) {
  qlora_status s = check_rmsnorm_backward(dout, x, weight, rstd, rows, dim, dx, dweight, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const char* what = "compute the RMSNorm gradient";
  // dweight first: it reads x and dout, which dx may alias.
  if (dweight) {
    // At most 1024 chunks of >= 32 rows: the scratch is at most 4 KB per column.
    const uint64_t rows_per_chunk = rows / 1024 + 1 > 32 ? rows / 1024 + 1 : 32;
    const uint64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    const uint64_t bytes = chunks * dim * sizeof(float);
    float* partial = nullptr;
    s = scratch_malloc((void**)&partial, bytes, what);
    if (s != QLORA_OK) return s;
    const dim3 grid((unsigned)((dim + kThreads - 1) / kThreads), (unsigned)chunks);
    QLORA_LAUNCH(rmsnorm_dweight_partial_kernel, grid, kThreads, 0, gpu_stream())(dout, x, rstd, rows, dim, rows_per_chunk,
                                                                        partial, dtype);
    s = launch_status(what);
    if (s == QLORA_OK) {
      QLORA_LAUNCH(rmsnorm_dweight_sum_kernel, grid_for(dim), kThreads, 0, gpu_stream())(partial, chunks, dim, dweight, dtype);
      s = launch_status(what);
    }
    const qlora_status freed = scratch_free(partial, bytes, what);
    if (s == QLORA_OK) s = freed;
    if (s != QLORA_OK) return s;
  }
  QLORA_LAUNCH(rmsnorm_backward_dx_kernel, grid_for(rows, kWarpsPerBlock), kThreads, 0, gpu_stream())(dout, x, weight, rstd,
                                                                                           rows, dim, dx, dtype);
  return launch_status(what);
}

QLORA_API qlora_status qlora_rope(void* x, uint64_t batch, uint64_t seq, uint64_t heads, uint64_t head_dim,
                                  float theta, int32_t inverse, int32_t dtype) {
  qlora_status s = check_rope(x, batch, seq, heads, head_dim, theta, inverse, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  QLORA_LAUNCH(rope_kernel, grid_for(batch * seq, 1), kThreads, 0, gpu_stream())(x, batch * seq, seq, nullptr, heads,
                                                                                head_dim, theta, inverse, dtype);
  return launch_status("apply rotary embeddings");
}

QLORA_API qlora_status qlora_attention_forward(const void* q, const void* k, const void* v, uint64_t batch,
                                               uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                               uint64_t head_dim, void* out, float* lse, int32_t dtype) {
  qlora_status s = check_attention_forward(q, k, v, batch, seq, heads, kv_heads, head_dim, out, lse, dtype);
  const char* what = "compute attention";
  if (s == QLORA_OK) s = check_head_dim(head_dim, what);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  AttnArgs a = {};
  a.q = q;
  a.k = k;
  a.v = v;
  a.o = out;
  a.lse = lse;
  a.batch = batch;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.seq = a.kv_rows = (int)seq;
  a.hd = (int)head_dim;
  a.scale = 1.0f / sqrtf((float)head_dim);
  a.dtype = dtype;
  return head_dim <= 64 ? attention_forward_d<64>(a, what) : attention_forward_d<128>(a, what);
}

QLORA_API qlora_status qlora_attention_backward(const void* dout, const void* q, const void* k, const void* v,
                                                const void* out, const float* lse, uint64_t batch,
                                                uint64_t seq, uint64_t heads, uint64_t kv_heads,
                                                uint64_t head_dim, void* dq, void* dk, void* dv,
                                                int32_t dtype) {
  qlora_status s = check_attention_backward(dout, q, k, v, out, lse, batch, seq, heads, kv_heads, head_dim, dq, dk,
                                            dv, dtype);
  const char* what = "compute the attention gradient";
  if (s == QLORA_OK) s = check_head_dim(head_dim, what);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  // di (f32, like lse): stream-ordered scratch of batch * heads * seq * 4 bytes.
  const uint64_t rows = batch * seq * heads, bytes = rows * sizeof(float);
  float* di = nullptr;
  s = scratch_malloc((void**)&di, bytes, what);
  if (s != QLORA_OK) return s;
  QLORA_LAUNCH(attention_di_kernel, grid_for(rows, kWarpsPerBlock), kThreads, 0, gpu_stream())(
      dout, out, batch, (int)seq, heads, (int)head_dim, di, dtype);
  s = launch_status(what);
  if (s == QLORA_OK) {
    AttnArgs a = {};
    a.q = q;
    a.k = k;
    a.v = v;
    a.dout = dout;
    a.out = out;
    a.o = dq;
    a.dk = dk;
    a.dv = dv;
    a.lse = (float*)lse;
    a.di = di;
    a.batch = batch;
    a.heads = heads;
    a.kv_heads = kv_heads;
    a.seq = a.kv_rows = (int)seq;
    a.hd = (int)head_dim;
    a.scale = 1.0f / sqrtf((float)head_dim);
    a.dtype = dtype;
    s = head_dim <= 64 ? attention_backward_d<64>(a, what) : attention_backward_d<128>(a, what);
  }
  const qlora_status freed = scratch_free(di, bytes, what);
  return s != QLORA_OK ? s : freed;
}

QLORA_API qlora_status qlora_rope_at(void* x, uint64_t rows, uint64_t heads, uint64_t head_dim,
                                     const int32_t* positions, float theta, int32_t inverse, int32_t dtype) {
  qlora_status s = check_rope_at(x, rows, heads, head_dim, positions, theta, inverse, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  QLORA_LAUNCH(rope_kernel, grid_for(rows, 1), kThreads, 0, gpu_stream())(x, rows, rows, positions, heads, head_dim,
                                                                       theta, inverse, dtype);
  return launch_status("apply rotary embeddings at positions");
}

QLORA_API qlora_status qlora_kv_cache_append(const void* k, const void* v, uint64_t batch, uint64_t tokens,
                                             uint64_t kv_dim, void* k_cache, void* v_cache, uint64_t capacity,
                                             uint64_t at, int32_t dtype) {
  qlora_status s = check_kv_cache_append(k, v, batch, tokens, kv_dim, k_cache, v_cache, capacity, at, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const uint64_t n = batch * tokens * kv_dim, es = dtype_size(dtype);
  const char* what = "append to the key/value cache";
  QLORA_LAUNCH(kv_append_kernel, grid_for(n), kThreads, 0, gpu_stream())(k, k_cache, tokens, kv_dim, capacity, at, n, es);
  if ((s = launch_status(what)) != QLORA_OK) return s;
  QLORA_LAUNCH(kv_append_kernel, grid_for(n), kThreads, 0, gpu_stream())(v, v_cache, tokens, kv_dim, capacity, at, n, es);
  return launch_status(what);
}

QLORA_API qlora_status qlora_attention_cached(const void* q, const void* k_cache, const void* v_cache,
                                              uint64_t batch, uint64_t tokens, uint64_t past, uint64_t capacity,
                                              uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                                              const int32_t* first_key, void* out, int32_t dtype) {
  const char* what = "compute attention over the cache";
  qlora_status s = check_attention_cached(q, k_cache, v_cache, batch, tokens, past, capacity, heads, kv_heads,
                                          head_dim, first_key, out, dtype);
  if (s == QLORA_OK) s = check_head_dim(head_dim, what);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  AttnArgs a = {};
  a.q = q;
  a.k = k_cache;
  a.v = v_cache;
  a.o = out;
  a.first_key = first_key;
  a.batch = batch;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.seq = (int)tokens;
  a.past = (int)past;
  a.kv_rows = (int)capacity;
  a.hd = (int)head_dim;
  a.scale = 1.0f / sqrtf((float)head_dim);
  a.dtype = dtype;
  if (tokens <= 16)
    return head_dim <= 64 ? attention_forward_tiles<64, 16>(a, what) : attention_forward_tiles<128, 16>(a, what);
  return head_dim <= 64 ? attention_forward_d<64>(a, what) : attention_forward_d<128>(a, what);
}

QLORA_API qlora_status qlora_swiglu_forward(const void* gate, const void* up, uint64_t n, void* out,
                                            int32_t dtype) {
  qlora_status s = check_swiglu_forward(gate, up, n, out, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  QLORA_LAUNCH(swiglu_forward_kernel, grid_for(n), kThreads, 0, gpu_stream())(gate, up, n, out, dtype);
  return launch_status("apply SwiGLU");
}

QLORA_API qlora_status qlora_swiglu_backward(const void* dout, const void* gate, const void* up, uint64_t n,
                                             void* dgate, void* dup, int32_t dtype) {
  qlora_status s = check_swiglu_backward(dout, gate, up, n, dgate, dup, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  QLORA_LAUNCH(swiglu_backward_kernel, grid_for(n), kThreads, 0, gpu_stream())(dout, gate, up, n, dgate, dup, dtype);
  return launch_status("compute the SwiGLU gradient");
}

QLORA_API qlora_status qlora_cross_entropy(const void* logits, const int32_t* targets, uint64_t rows,
                                           uint64_t vocab, float* losses, void* dlogits, float grad_scale,
                                           int32_t dtype) {
  qlora_status s = check_cross_entropy(logits, targets, rows, vocab, losses, dlogits, grad_scale, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const char* fn = "compute the cross-entropy";
  if ((s = check_indices(targets, rows, vocab, true, fn, "targets")) != QLORA_OK) return s;
  QLORA_LAUNCH(cross_entropy_kernel, grid_for(rows, 1), kThreads, 0, gpu_stream())(logits, targets, rows, vocab, losses,
                                                                        dlogits, grad_scale, dtype);
  return launch_status(fn);
}

}  // extern "C"
