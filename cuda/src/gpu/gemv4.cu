// gpu/gemv4.cu: the fused 4-bit products of a few rows of X (m <= 4: decoding a batch of tokens), the
// mirror of cpu/gemv4.cpp. Reading W is the whole cost, so W is streamed once as wide words of codes, each
// value decoded in registers (dequant4.cuh: the 16 codes held by the lanes of a warp and fetched with
// shuffles, the block's scale decoded from double-quantized constants where it is read) and multiplied
// into every row of X; nothing is written but C, and h for a LoRA bypass.
//
//   trans_w = 1 (C = X W^T, W stored n x k): gemv4_rows_kernel, a warp per m rows of W. With a LoRA bypass,
//     lora_down_kernel first writes h = X A^T (rank x k: small), then the rows kernel adds
//     scaling * h B^T in its epilogue, one dot product of length rank per output.
//   trans_w = 0 (C = X W, W stored k x n: the input gradient): gemv4_cols_kernel, a thread block per 64
//     columns of W.
//
// W's values are what qlora_dequantize_4bit gives in X's dtype (rounded to bf16 for bf16 X), products are
// summed in f32 in a fixed order: C is the dequantize-then-multiply product up to the order of summation,
// with the same bits on every run.
#include "../common/half.h"
#include "../common/status.h"
#include "dequant4.cuh"
#include "gpu.cuh"

namespace qlora {
namespace {

// The product's operands but W, by value.
struct Gemv4Args {
  const void* x;  // m x k, f32 or bf16 (the kernels' kBf16)
  uint64_t n, k;
  float alpha, beta;
  void* c;  // m x n
  int32_t c_dtype;
  bool vectors;  // the shape and alignment allow whole words (see each kernel)
  // The LoRA bypass's update (b null: none): C += scaling * h B^T, h m x rank and B n x rank in X's dtype.
  const void* lora_b;
  const void* h;
  uint64_t rank;
  float scaling;
};

template <bool kBf16>
__device__ __forceinline__ float load_x(const void* x, uint64_t i) {
  return kBf16 ? bf16_to_float(((const uint16_t*)x)[i]) : ((const float*)x)[i];
}

// Eight consecutive values of X from element offset (a multiple of 8 of a 16-byte aligned X).
template <bool kBf16>
__device__ __forceinline__ void load_x8(const void* x, uint64_t offset, float* v) {
  if (kBf16) {
    const uint4 u = *(const uint4*)((const uint16_t*)x + offset);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int q = 0; q < 4; q++) {
      v[2 * q] = bf16_to_float((uint16_t)(w[q] & 0xffffu));
      v[2 * q + 1] = bf16_to_float((uint16_t)(w[q] >> 16));
    }
  } else {
    const float4 lo = *(const float4*)((const float*)x + offset), hi = *(const float4*)((const float*)x + offset + 4);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  }
}

// Sum over the 32 lanes of a warp (butterfly: every lane gets the same result).
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// C[idx] = alpha * dot + beta * C[idx] + scaling * bypass, each product and sum rounded on its own (as the
// CPU's store_output); beta = 0 never reads C.
__device__ __forceinline__ void store_output(const Gemv4Args& g, uint64_t idx, float dot, float bypass) {
  float v = __fmul_rn(g.alpha, dot);
  if (g.beta != 0.0f) v = __fadd_rn(v, __fmul_rn(g.beta, load_float(g.c, g.c_dtype, idx)));
  if (g.lora_b) v = __fadd_rn(v, __fmul_rn(g.scaling, bypass));
  store_float(g.c, g.c_dtype, idx, v);
}

// h = X A^T for M rows of X (A rank x k, h M x rank, in X's dtype): a thread block per row q of A
// (grid-stride), its 256 threads along k, so that A (the only large operand, read once) streams
// coalesced; each thread's M partial sums are added over the warp, then over the 8 warps in order.
template <int M, bool kBf16>
__global__ void __launch_bounds__(kThreads) lora_down_kernel(const void* x, const void* a, void* h, uint64_t k,
                                                             uint64_t rank) {
  __shared__ float partial[kThreads / 32][M];
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (uint64_t q = blockIdx.x; q < rank; q += gridDim.x) {  // uniform across the block
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = 0.0f;
    for (uint64_t p = threadIdx.x; p < k; p += kThreads) {
      const float av = load_x<kBf16>(a, q * k + p);
#pragma unroll
      for (int r = 0; r < M; r++) acc[r] = fmaf(load_x<kBf16>(x, r * k + p), av, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = warp_sum(acc[r]);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < M; r++) partial[warp][r] = acc[r];
    __syncthreads();
    if (threadIdx.x < M) {
      float sum = 0.0f;
      for (uint32_t w = 0; w < kThreads / 32; w++) sum += partial[w][threadIdx.x];
      store_float(h, kBf16 ? QLORA_BF16 : QLORA_F32, threadIdx.x * rank + q, sum);
    }
    __syncthreads();  // partial is rewritten for the next q
  }
}

// C = X W^T, W stored n x k, M <= 4 rows of X: one warp per M rows j0.. of W (grid-stride), lanes along
// k. Fast path (vectors: k % 32 == 0, packed and X 16-byte aligned): a lane reads 16 bytes of codes of each
// row per step, 32 values of one quantization block, so one scale, decoded once; a warp step reads 512
// contiguous bytes of each row, and two steps are loaded before either is decoded, to keep loads in
// flight. Each byte of W is read from global memory once. X is read as 16-byte vectors from L1 (every
// warp reads all of it), each vector used for the warp's M rows of W, so that X's traffic stays 4 bytes
// (bf16; f32: 8) per byte of W whatever M: under L1's bandwidth while W streams from DRAM. Otherwise value
// by value (decode1). The epilogue adds the LoRA bypass's dot product h[r] . B[j] (lanes along the rank).
template <int M, bool kBf16>
__global__ void __launch_bounds__(kThreads) gemv4_rows_kernel(Quant4 w, Gemv4Args g) {
  constexpr int R = M;                             // rows of W per warp
  constexpr uint64_t kStep = 32 * 32, kSteps = 2;  // values of a row per warp step; steps in flight
  __shared__ float map[256];
  load_map(w, map);
  const float code = lane_code(w);
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t j0 = global_thread() / 32 * R; j0 < g.n; j0 += warps * R) {  // uniform across the warp
    float acc[M][R];
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int q = 0; q < R; q++) acc[r][q] = 0.0f;
    if (g.vectors) {
      for (uint64_t p0 = 0; p0 < g.k; p0 += kSteps * kStep) {
        uint4 bytes[kSteps][R];
        float scale[kSteps][R];
#pragma unroll
        for (uint64_t u = 0; u < kSteps; u++)
#pragma unroll
          for (int q = 0; q < R; q++) {
            const uint64_t p = p0 + u * kStep + 32 * lane, f = (j0 + q) * g.k + p;
            const bool valid = p < g.k && j0 + q < g.n;
            bytes[u][q] = valid ? *(const uint4*)(w.packed + f / 2) : make_uint4(0, 0, 0, 0);
            scale[u][q] = valid ? block_scale(w, map, f >> w.block_shift) : 0.0f;
          }
#pragma unroll
        for (uint64_t u = 0; u < kSteps; u++) {
          if (p0 + u * kStep >= g.k) break;  // uniform: the whole warp step lies past the rows' end
          const uint64_t p = p0 + u * kStep + 32 * lane;
#pragma unroll
          for (int word = 0; word < 4; word++) {
            float v[R][8];
#pragma unroll
            for (int q = 0; q < R; q++) {
              const uint4 b = bytes[u][q];
              decode8(word == 0 ? b.x : word == 1 ? b.y : word == 2 ? b.z : b.w, scale[u][q], code, v[q]);
#pragma unroll
              for (int e = 0; e < 8; e++)
                if (kBf16) v[q][e] = round_bf16(v[q][e]);
            }
            if (p >= g.k) continue;  // a lane past the rows' end (after the collective decode)
#pragma unroll
            for (int r = 0; r < M; r++) {
              float xv[8];
              load_x8<kBf16>(g.x, r * g.k + p + 8 * word, xv);
#pragma unroll
              for (int q = 0; q < R; q++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r][q] = fmaf(xv[e], v[q][e], acc[r][q]);
            }
          }
        }
      }
    } else {
      for (uint64_t p0 = 0; p0 < g.k; p0 += 32) {  // uniform across the warp
        const uint64_t p = p0 + lane;
        float v[R];
#pragma unroll
        for (int q = 0; q < R; q++) {
          v[q] = decode1(w, map, code, (j0 + q) * g.k + p, p < g.k && j0 + q < g.n);
          if (kBf16) v[q] = round_bf16(v[q]);
        }
        if (p >= g.k) continue;
#pragma unroll
        for (int r = 0; r < M; r++) {
          const float xv = load_x<kBf16>(g.x, r * g.k + p);
#pragma unroll
          for (int q = 0; q < R; q++) acc[r][q] = fmaf(xv, v[q], acc[r][q]);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < R; q++) {
      const uint64_t j = j0 + q;
      if (j >= g.n) break;  // uniform: the last warp's rows past W's end
      float dot[M], bypass[M];
#pragma unroll
      for (int r = 0; r < M; r++) {
        dot[r] = warp_sum(acc[r][q]);
        bypass[r] = 0.0f;
      }
      if (g.lora_b) {
        for (uint64_t i = lane; i < g.rank; i += 32) {
          const float b = load_x<kBf16>(g.lora_b, j * g.rank + i);
#pragma unroll
          for (int r = 0; r < M; r++) bypass[r] = fmaf(load_x<kBf16>(g.h, r * g.rank + i), b, bypass[r]);
        }
#pragma unroll
        for (int r = 0; r < M; r++) bypass[r] = warp_sum(bypass[r]);
      }
      if (lane == 0)
#pragma unroll
        for (int r = 0; r < M; r++) store_output(g, r * g.n + j, dot[r], bypass[r]);
    }
  }
}

// C = X W, W stored k x n, M <= 4: a thread block per 64 columns of W (grid-stride), its 256 threads as
// 8 lanes x 8 columns (one 32-bit word of codes: 8 values of one block) times 32 slices of k (p = slice,
// slice + 32, ...), so that a warp reads 4 rows x 32 contiguous bytes of W per step, four steps loaded
// before they are decoded; each value of W is read once and multiplied into the M rows of X (x[r][p],
// read from the cache). Fast path (vectors: n % 8 == 0, packed 4-byte aligned); otherwise value by value.
// The 32 partial sums of a column are added in a fixed order: the 4 slices of a warp by shuffles, then
// the 8 warps through shared memory.
constexpr uint64_t kColsPerBlock = 64, kColSlices = 32, kColSteps = 4;

template <int M, bool kBf16>
__global__ void __launch_bounds__(kThreads) gemv4_cols_kernel(Quant4 w, Gemv4Args g) {
  __shared__ float map[256];
  __shared__ float partial[kThreads / 32][M][kColsPerBlock];
  load_map(w, map);
  const float code = lane_code(w);
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x / 32, lane8 = threadIdx.x % 8,
                 slice = threadIdx.x / 8;
  const uint64_t groups = (g.n + kColsPerBlock - 1) / kColsPerBlock;
  for (uint64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {  // uniform across the block
    const uint64_t j0 = grp * kColsPerBlock + 8 * lane8;
    float acc[M][8];
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int e = 0; e < 8; e++) acc[r][e] = 0.0f;
    for (uint64_t p0 = 0; p0 < g.k; p0 += kColSteps * kColSlices) {  // uniform across the block
      uint32_t word[kColSteps] = {};
      float scale[kColSteps] = {};
      if (g.vectors)  // n % 8 == 0: a word lies wholly inside the row or wholly past its end
#pragma unroll
        for (uint64_t u = 0; u < kColSteps; u++) {
          const uint64_t p = p0 + u * kColSlices + slice, f = p * g.n + j0;
          if (p < g.k && j0 < g.n) {
            word[u] = *(const uint32_t*)(w.packed + f / 2);
            scale[u] = block_scale(w, map, f >> w.block_shift);
          }
        }
#pragma unroll
      for (uint64_t u = 0; u < kColSteps; u++) {
        const uint64_t p = p0 + u * kColSlices + slice;
        float v[8];
        if (g.vectors) {
          decode8(word[u], scale[u], code, v);
        } else {
#pragma unroll
          for (int e = 0; e < 8; e++) v[e] = decode1(w, map, code, p * g.n + j0 + e, p < g.k && j0 + e < g.n);
        }
        if (p >= g.k) continue;
#pragma unroll
        for (int e = 0; e < 8; e++)
          if (kBf16) v[e] = round_bf16(v[e]);
#pragma unroll
        for (int r = 0; r < M; r++) {
          const float xv = load_x<kBf16>(g.x, r * g.k + p);
#pragma unroll
          for (int e = 0; e < 8; e++) acc[r][e] = fmaf(xv, v[e], acc[r][e]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int e = 0; e < 8; e++) {  // lanes l, l ^ 8, l ^ 16, l ^ 24 hold the same columns
        acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], 8);
        acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], 16);
      }
    if (lane < 8)
#pragma unroll
      for (int r = 0; r < M; r++)
#pragma unroll
        for (int e = 0; e < 8; e++) partial[warp][r][8 * lane8 + e] = acc[r][e];
    __syncthreads();
    for (uint32_t t = threadIdx.x; t < M * kColsPerBlock; t += kThreads) {
      const uint32_t r = t / kColsPerBlock, jj = t % kColsPerBlock;
      const uint64_t j = grp * kColsPerBlock + jj;
      if (j >= g.n) continue;
      float sum = 0.0f;
      for (uint32_t s = 0; s < kThreads / 32; s++) sum += partial[s][r][jj];
      store_output(g, r * g.n + j, sum, 0.0f);
    }
    __syncthreads();  // partial is rewritten by the next group
  }
}

bool aligned(const void* p, uint64_t a) { return (uintptr_t)p % a == 0; }

template <int M, bool kBf16>
void launch(const Quant4& w, int32_t trans_w, const Gemv4Args& g, const qlora_lora4* lora) {
  if (!trans_w) {
    const uint64_t groups = (g.n + kColsPerBlock - 1) / kColsPerBlock;
    QLORA_LAUNCH((gemv4_cols_kernel<M, kBf16>), (unsigned)(groups < kMaxGrid ? groups : kMaxGrid), kThreads, 0,
                 gpu_stream())(w, g);
    return;
  }
  if (lora)
    QLORA_LAUNCH((lora_down_kernel<M, kBf16>), (unsigned)(lora->rank < kMaxGrid ? lora->rank : kMaxGrid), kThreads,
                 0, gpu_stream())(g.x, lora->a, lora->h, g.k, lora->rank);
  QLORA_LAUNCH((gemv4_rows_kernel<M, kBf16>), grid_for(32 * ((g.n + M - 1) / M)), kThreads, 0, gpu_stream())(w, g);
}

template <bool kBf16>
void launch_rows(uint64_t m, const Quant4& w, int32_t trans_w, const Gemv4Args& g, const qlora_lora4* lora) {
  switch (m) {
    case 1: return launch<1, kBf16>(w, trans_w, g, lora);
    case 2: return launch<2, kBf16>(w, trans_w, g, lora);
    case 3: return launch<3, kBf16>(w, trans_w, g, lora);
    default: return launch<4, kBf16>(w, trans_w, g, lora);
  }
}

}  // namespace

qlora_status gemv4(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
                   int32_t x_dtype, const qlora_lora4* lora, float beta, void* c, int32_t c_dtype, const char* what) {
  Gemv4Args g = {x, n, k, alpha, beta, c, c_dtype, false, nullptr, nullptr, 0, 0.0f};
  g.vectors = trans_w ? k % 32 == 0 && aligned(w.packed, 16) && aligned(x, 16) : n % 8 == 0 && aligned(w.packed, 4);
  if (lora) {
    g.lora_b = lora->b;
    g.h = lora->h;
    g.rank = lora->rank;
    g.scaling = lora->scaling;
  }
  if (x_dtype == QLORA_BF16)
    launch_rows<true>(m, w, trans_w, g, lora);
  else
    launch_rows<false>(m, w, trans_w, g, lora);
  return launch_status(what);
}

}  // namespace qlora
