// gpu/ops.cu: elementwise ops (dtype casts, seeded normal and uniform fills, axpby, dropout) on the GPU.
// Mirrors cpu/ops.cpp: the same formulas, each product and sum rounded on its own (__fmul_rn, __fadd_rn:
// nvcc would otherwise contract a * b + c into an FMA), so that uniform fills, axpby and dropout agree
// with the CPU bit for bit.
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "gpu.cuh"

namespace qlora {
namespace {

// One thread per value: dst[i] = src[i], converted with half.h's round-to-nearest-even (as the CPU).
__global__ void cast_kernel(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype, uint64_t n) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads())
    store_float(dst, dst_dtype, i, load_float(src, src_dtype, i));
}

// One thread per pair of values, cpu/ops.cpp's formula step for step: a Box-Muller pair from
// splitmix64(key ^ splitmix64(p)), cosine for value 2p and sine for value 2p + 1. Products and sums
// are rounded one by one as on the CPU (no FMA); logf, cosf and sinf are CUDA's (within 1-2 ulp of
// the C library), so the backends agree to float rounding, not bit for bit.
__global__ void fill_normal_kernel(void* out, int32_t dtype, uint64_t n, float mean, float std, uint64_t key) {
  const uint64_t pairs = (n + 1) / 2;
  for (uint64_t p = global_thread(); p < pairs; p += grid_threads()) {
    uint64_t r = splitmix64(key ^ splitmix64(p));
    // Two 24-bit uniforms: u1 in (0, 1], u2 in [0, 1).
    float u1 = __fmul_rn((float)((r >> 40) + 1), 5.9604644775390625e-8f);
    float u2 = __fmul_rn((float)((r >> 16) & 0xffffffu), 5.9604644775390625e-8f);
    float radius = __fsqrt_rn(__fmul_rn(-2.0f, logf(u1)));
    float angle = __fmul_rn(6.283185307179586f, u2);
    float scale = __fmul_rn(std, radius);
    uint64_t i = 2 * p;
    store_float(out, dtype, i, __fadd_rn(mean, __fmul_rn(scale, cosf(angle))));
    if (i + 1 < n) store_float(out, dtype, i + 1, __fadd_rn(mean, __fmul_rn(scale, sinf(angle))));
  }
}

// One thread per value: low + width * u, u in [0, 1) from the shared counter-based generator. width =
// high - low is computed once on the host, as the CPU does.
__global__ void fill_uniform_kernel(void* out, int32_t dtype, uint64_t n, float low, float width, uint64_t seed) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads())
    store_float(out, dtype, i, __fadd_rn(low, __fmul_rn(width, unit_float(random_word(seed, i)))));
}

// One thread per value: y = alpha * x + beta * y in f32; beta = 0 never reads y (NaN there is ignored).
__global__ void axpby_kernel(float alpha, const void* x, float beta, void* y, int32_t dtype, uint64_t n) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads()) {
    float ax = __fmul_rn(alpha, load_float(x, dtype, i));
    float v = beta == 0.0f ? ax : __fadd_rn(ax, __fmul_rn(beta, load_float(y, dtype, i)));
    store_float(y, dtype, i, v);
  }
}

// One thread per value: y = keep(seed, i) ? x * scale : 0, scale = 1 / (1 - p) from the host. Each
// thread reads x[i] before writing y[i], so x == y is safe.
__global__ void dropout_kernel(const void* x, void* y, int32_t dtype, uint64_t n, float p, float scale,
                               uint64_t seed) {
  for (uint64_t i = global_thread(); i < n; i += grid_threads()) {
    bool keep = dropout_keep(seed, i, p);
    store_float(y, dtype, i, keep ? __fmul_rn(load_float(x, dtype, i), scale) : 0.0f);
  }
}

}  // namespace
}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_cast(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
                                  uint64_t n) {
  qlora_status s = check_cast(src, src_dtype, dst, dst_dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  if (src_dtype == dst_dtype)
    return cuda_status(cudaMemcpyAsync(dst, src, n * dtype_size(src_dtype), cudaMemcpyDeviceToDevice, gpu_stream()),
                       "cast");
  QLORA_LAUNCH(cast_kernel, grid_for(n), kThreads, 0, gpu_stream())(src, src_dtype, dst, dst_dtype, n);
  return launch_status("cast");
}

QLORA_API qlora_status qlora_fill_normal(void* dptr, int32_t dtype, uint64_t n, float mean, float std,
                                         uint64_t seed) {
  qlora_status s = check_fill_normal(dptr, dtype, std);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  QLORA_LAUNCH(fill_normal_kernel, grid_for((n + 1) / 2), kThreads, 0, gpu_stream())(dptr, dtype, n, mean, std,
                                                                           splitmix64(seed));
  return launch_status("fill with normal values");
}

QLORA_API qlora_status qlora_fill_uniform(void* dptr, int32_t dtype, uint64_t n, float low, float high,
                                          uint64_t seed) {
  qlora_status s = check_fill_uniform(dptr, dtype, low, high);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  const float width = high - low;  // rounded once, on the host, as on the CPU
  QLORA_LAUNCH(fill_uniform_kernel, grid_for(n), kThreads, 0, gpu_stream())(dptr, dtype, n, low, width, seed);
  return launch_status("fill with uniform values");
}

QLORA_API qlora_status qlora_axpby(float alpha, const void* x, float beta, void* y, int32_t dtype, uint64_t n) {
  qlora_status s = check_axpby(x, y, dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  QLORA_LAUNCH(axpby_kernel, grid_for(n), kThreads, 0, gpu_stream())(alpha, x, beta, y, dtype, n);
  return launch_status("compute alpha * x + beta * y");
}

QLORA_API qlora_status qlora_dropout(const void* x, void* y, int32_t dtype, uint64_t n, float p, uint64_t seed) {
  qlora_status s = check_dropout(x, y, dtype, p);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  const float scale = 1.0f / (1.0f - p);  // on the host, as on the CPU
  QLORA_LAUNCH(dropout_kernel, grid_for(n), kThreads, 0, gpu_stream())(x, y, dtype, n, p, scale, seed);
  return launch_status("apply dropout");
}

}  // extern "C"
