// gpu/optim.cu: the fused AdamW step over many segments and the fixed-order sum of squares (global
// norm for clipping), on the GPU. Mirrors cpu/optim.cpp: the same operations in the same order, each
// rounded on its own (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn: nvcc would otherwise
// contract a * b + c into an FMA and approximate sqrt and division), so that both backends agree bit
// for bit.
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#include "../common/adamw.h"
#include "../common/codes.h"
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "gpu.cuh"

namespace qlora {
namespace {

// ---- AdamW ---------------------------------------------------------------------------------

// A segment as the kernel sees it: where its values start in the concatenation of all segments. The
// array on the device has count + 1 entries; the last one only gives begin = total.
struct SegmentDesc {
  void* param;
  const void* grad;
  float* m;
  float* v;
  float* master;
  uint64_t begin;
  int32_t param_dtype;
  int32_t grad_dtype;
};

// One thread per value of all segments together (grid-stride): the thread finds its segment by binary
// search over the segments' starts (once, then only when it crosses into a later segment), then
// applies the header's formula step for step, as cpu/optim.cpp's adamw_range.
__global__ void adamw_kernel(const SegmentDesc* segs, uint64_t count, uint64_t total, AdamWConstants c) {
  uint64_t k = 0, next = 0;
  SegmentDesc d = segs[0];
  for (uint64_t i = global_thread(); i < total; i += grid_threads()) {
    if (i >= next) {
      uint64_t lo = k, hi = count;  // segs[lo].begin <= i < segs[hi].begin
      while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (segs[mid].begin <= i) lo = mid;
        else hi = mid;
      }
      k = lo;
      d = segs[k];
      next = segs[k + 1].begin;
    }
    const uint64_t j = i - d.begin;
    float grad = d.grad_dtype == 1 ? bf16_to_float(((const uint16_t*)d.grad)[j]) : ((const float*)d.grad)[j];
    float g = __fmul_rn(grad, c.grad_scale);
    float w = d.master ? d.master[j]
                       : d.param_dtype == 1 ? bf16_to_float(((const uint16_t*)d.param)[j]) : ((const float*)d.param)[j];
    w = __fmul_rn(w, c.decay);
    float mi = __fadd_rn(__fmul_rn(c.beta1, d.m[j]), __fmul_rn(c.one_minus_beta1, g));
    float vi = __fadd_rn(__fmul_rn(c.beta2, d.v[j]), __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.sqrt_bc2), c.eps);
    w = __fsub_rn(w, __fdiv_rn(__fmul_rn(c.step_size, mi), denom));
    d.m[j] = mi;
    d.v[j] = vi;
    if (d.master) d.master[j] = w;
    if (d.param_dtype == 1) ((uint16_t*)d.param)[j] = float_to_bf16(w);
    else ((float*)d.param)[j] = w;
  }
}

// ---- 8-bit AdamW ---------------------------------------------------------------------------

// The two dynamic maps with their midpoints, copied to the device once per step and to shared memory
// by every thread block.
struct Adamw8Maps {
  float s_code[256], s_mid[255];
  float u_code[256], u_mid[255];
};

// codes.h's dynamic_code: the number of midpoints below x.
__device__ uint8_t nearest_code(const float* mid, float x) {
  int lo = 0, hi = 255;
  while (lo < hi) {
    const int m = (lo + hi) / 2;
    if (mid[m] < x) lo = m + 1;
    else hi = m;
  }
  return (uint8_t)lo;
}

// One thread block per block of QLORA_ADAMW8_BLOCK values, one thread per value: cpu/optim.cpp's
// adamw8_block, the largest |m| and v of the block by a tree reduction in shared memory.
__global__ void adamw8_kernel(qlora_adamw8_segment seg, const Adamw8Maps* maps, AdamWConstants c) {
  __shared__ Adamw8Maps sm;
  __shared__ float red_m[QLORA_ADAMW8_BLOCK], red_v[QLORA_ADAMW8_BLOCK];
  const unsigned t = threadIdx.x;
  sm.s_code[t] = maps->s_code[t];
  sm.u_code[t] = maps->u_code[t];
  if (t < 255) {
    sm.s_mid[t] = maps->s_mid[t];
    sm.u_mid[t] = maps->u_mid[t];
  }
  __syncthreads();
  const uint64_t block = blockIdx.x, i = block * QLORA_ADAMW8_BLOCK + t;
  const bool live = i < seg.n;
  float mi = 0.0f, vi = 0.0f;
  if (live) {
    const float m_scale = seg.m_absmax[block], v_scale = seg.v_absmax[block];
    const float grad = seg.grad_dtype == 1 ? bf16_to_float(((const uint16_t*)seg.grad)[i]) : ((const float*)seg.grad)[i];
    const float g = __fmul_rn(grad, c.grad_scale);
    float w = seg.master ? seg.master[i]
                         : seg.param_dtype == 1 ? bf16_to_float(((const uint16_t*)seg.param)[i])
                                                : ((const float*)seg.param)[i];
    w = __fmul_rn(w, c.decay);
    mi = __fadd_rn(__fmul_rn(c.beta1, __fmul_rn(sm.s_code[seg.m_codes[i]], m_scale)), __fmul_rn(c.one_minus_beta1, g));
    vi = __fadd_rn(__fmul_rn(c.beta2, __fmul_rn(sm.u_code[seg.v_codes[i]], v_scale)),
                   __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.sqrt_bc2), c.eps);
    w = __fsub_rn(w, __fdiv_rn(__fmul_rn(c.step_size, mi), denom));
    if (seg.master) seg.master[i] = w;
    if (seg.param_dtype == 1) ((uint16_t*)seg.param)[i] = float_to_bf16(w);
    else ((float*)seg.param)[i] = w;
  }
  red_m[t] = fabsf(mi);
  red_v[t] = vi;
  __syncthreads();
  for (unsigned half = QLORA_ADAMW8_BLOCK / 2; half > 0; half >>= 1) {
    if (t < half) {
      red_m[t] = fmaxf(red_m[t], red_m[t + half]);
      red_v[t] = fmaxf(red_v[t], red_v[t + half]);
    }
    __syncthreads();
  }
  const float m_max = red_m[0], v_max = red_v[0];
  if (live) {
    const float m_inv = m_max > 0.0f ? __fdiv_rn(1.0f, m_max) : 0.0f;
    const float v_inv = v_max > 0.0f ? __fdiv_rn(1.0f, v_max) : 0.0f;
    seg.m_codes[i] = nearest_code(sm.s_mid, __fmul_rn(mi, m_inv));
    seg.v_codes[i] = nearest_code(sm.u_mid, __fmul_rn(vi, v_inv));
  }
  if (t == 0) {
    seg.m_absmax[block] = m_max;
    seg.v_absmax[block] = v_max;
  }
}

// ---- sum of squares ------------------------------------------------------------------------

// The fixed order of codes.h, step 1: the sum of squares of each chunk of kMeanChunk values in double,
// value by value, one thread per chunk (squares of floats are exact in double; only sums round).
__global__ void chunk_sum_squares_kernel(const void* x, int32_t dtype, uint64_t n, double* partial) {
  const uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  for (uint64_t c = global_thread(); c < chunks; c += grid_threads()) {
    const uint64_t begin = c * kMeanChunk, end = min(n, begin + kMeanChunk);
    double sum = 0.0;
    for (uint64_t i = begin; i < end; i++) {
      double v = (double)load_float(x, dtype, i);
      sum = __dadd_rn(sum, __dmul_rn(v, v));
    }
    partial[c] = sum;
  }
}

// Step 2, one thread: the chunk sums added in order.
__global__ void total_kernel(const double* partial, uint64_t chunks, double* out) {
  double total = 0.0;
  for (uint64_t c = 0; c < chunks; c++) total = __dadd_rn(total, partial[c]);
  *out = total;
}

}  // namespace
}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_adamw_step(const qlora_adamw_segment* segments, uint64_t count, float lr, float beta1,
                                        float beta2, float eps, float weight_decay, float bias_correction1,
                                        float bias_correction2, float grad_scale) {
  qlora_status s = check_adamw(segments, count, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                               bias_correction2, grad_scale);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || count == 0) return s;
  const char* what = "take an AdamW step";
  const AdamWConstants c =
      adamw_constants(lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  std::vector<SegmentDesc> descs;
  try {
    descs.resize(count + 1);
  } catch (const std::bad_alloc&) {
    return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot %s: no host memory for %llu segment descriptors", what,
                (unsigned long long)count);
  }
  uint64_t total = 0;
  for (uint64_t k = 0; k < count; k++) {
    const qlora_adamw_segment& g = segments[k];
    descs[k] = SegmentDesc{g.param, g.grad, g.m, g.v, g.master, total, g.param_dtype, g.grad_dtype};
    total += g.n;
  }
  descs[count] = SegmentDesc{nullptr, nullptr, nullptr, nullptr, nullptr, total, 0, 0};
  // The descriptors go to stream-ordered scratch (a few bytes per segment, counted as workspace).
  // The copy from pageable memory has read descs by the time cudaMemcpyAsync returns.
  const uint64_t bytes = (count + 1) * sizeof(SegmentDesc);
  SegmentDesc* dev = nullptr;
  s = scratch_malloc((void**)&dev, bytes, what);
  if (s != QLORA_OK) return s;
  s = cuda_status(cudaMemcpyAsync(dev, descs.data(), bytes, cudaMemcpyHostToDevice, gpu_stream()), what);
  if (s == QLORA_OK) {
    QLORA_LAUNCH(adamw_kernel, grid_for(total), kThreads, 0, gpu_stream())(dev, count, total, c);
    s = launch_status(what);
  }
  qlora_status freed = scratch_free(dev, bytes, what);
  return s != QLORA_OK ? s : freed;
}

QLORA_API qlora_status qlora_adamw8_step(const qlora_adamw8_segment* segments, uint64_t count, float lr,
                                         float beta1, float beta2, float eps, float weight_decay,
                                         float bias_correction1, float bias_correction2, float grad_scale) {
  qlora_status s = check_adamw(segments, count, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                                bias_correction2, grad_scale);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || count == 0) return s;
  const char* what = "take an 8-bit AdamW step";
  const AdamWConstants c =
      adamw_constants(lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  Adamw8Maps maps;
  memcpy(maps.s_code, dynamic_map().code, sizeof maps.s_code);
  memcpy(maps.s_mid, dynamic_map().midpoint, sizeof maps.s_mid);
  memcpy(maps.u_code, dynamic_map_unsigned().code, sizeof maps.u_code);
  memcpy(maps.u_mid, dynamic_map_unsigned().midpoint, sizeof maps.u_mid);
  // The maps go to stream-ordered scratch (4 KB, counted as workspace); the copy from pageable
  // memory has read them by the time cudaMemcpyAsync returns.
  Adamw8Maps* dev = nullptr;
  s = scratch_malloc((void**)&dev, sizeof maps, what);
  if (s != QLORA_OK) return s;
  s = cuda_status(cudaMemcpyAsync(dev, &maps, sizeof maps, cudaMemcpyHostToDevice, gpu_stream()), what);
  for (uint64_t k = 0; k < count && s == QLORA_OK; k++) {
    const uint64_t blocks = (segments[k].n + QLORA_ADAMW8_BLOCK - 1) / QLORA_ADAMW8_BLOCK;
    if (blocks > 0x7fffffffull) {  // the grid's x dimension
      s = fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: segment %llu has %llu values, more than one launch takes",
               what, (unsigned long long)k, (unsigned long long)segments[k].n);
      break;
    }
    QLORA_LAUNCH(adamw8_kernel, (unsigned)blocks, QLORA_ADAMW8_BLOCK, 0, gpu_stream())(segments[k], dev, c);
    s = launch_status(what);
  }
  qlora_status freed = scratch_free(dev, sizeof maps, what);
  return s != QLORA_OK ? s : freed;
}

QLORA_API qlora_status qlora_sum_squares(const void* x, int32_t dtype, uint64_t n, double* out) {
  qlora_status s = check_sum_squares(x, dtype, out);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  if (n == 0) {
    *out = 0.0;
    return QLORA_OK;
  }
  const char* what = "sum squares";
  const uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  // Chunk sums and the total: n / 512 bytes of stream-ordered scratch, counted as workspace.
  const uint64_t bytes = (chunks + 1) * sizeof(double);
  double* partial = nullptr;
  s = scratch_malloc((void**)&partial, bytes, what);
  if (s != QLORA_OK) return s;
  double* total = partial + chunks;
  QLORA_LAUNCH(chunk_sum_squares_kernel, grid_for(chunks), kThreads, 0, gpu_stream())(x, dtype, n, partial);
  s = launch_status(what);
  if (s == QLORA_OK) {
    QLORA_LAUNCH(total_kernel, 1, 1, 0, gpu_stream())(partial, chunks, total);
    s = launch_status(what);
  }
  double host = 0.0;
  if (s == QLORA_OK) s = cuda_status(cudaMemcpyAsync(&host, total, sizeof host, cudaMemcpyDeviceToHost, gpu_stream()), what);
  qlora_status freed = scratch_free(partial, bytes, what);
  if (s == QLORA_OK) s = freed;
  if (s == QLORA_OK) s = cuda_status(cudaStreamSynchronize(gpu_stream()), what);
  if (s != QLORA_OK) return s;
  *out = host;
  return QLORA_OK;
}

}  // extern "C"
