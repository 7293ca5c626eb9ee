// gpu/ops.cu: elementwise ops (dtype casts, seeded normal fill) on the GPU. Mirrors cpu/ops.cpp.
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
  cast_kernel<<<grid_for(n), kThreads, 0, gpu_stream()>>>(src, src_dtype, dst, dst_dtype, n);
  return launch_status("cast");
}

QLORA_API qlora_status qlora_fill_normal(void* dptr, int32_t dtype, uint64_t n, float mean, float std,
                                         uint64_t seed) {
  qlora_status s = check_fill_normal(dptr, dtype, std);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK || n == 0) return s;
  fill_normal_kernel<<<grid_for((n + 1) / 2), kThreads, 0, gpu_stream()>>>(dptr, dtype, n, mean, std,
                                                                           splitmix64(seed));
  return launch_status("fill with normal values");
}

}  // extern "C"
