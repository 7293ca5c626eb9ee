// cpu/ops.cpp: elementwise ops (dtype casts, seeded normal fill). gpu/ops.cu mirrors this file.
#include <omp.h>

#include <cmath>

#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "cpu.h"

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_cast(const void* src, int32_t src_dtype, void* dst, int32_t dst_dtype,
                                  uint64_t n) {
  qlora_status s = check_cast(src, src_dtype, dst, dst_dtype);
  if (s != QLORA_OK) return s;
  if (src_dtype == dst_dtype) {
    parallel_copy(dst, src, n * dtype_size(src_dtype));
    return QLORA_OK;
  }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) store_float(dst, dst_dtype, (uint64_t)i, load_float(src, src_dtype, (uint64_t)i));
  return QLORA_OK;
}

QLORA_API qlora_status qlora_fill_normal(void* dptr, int32_t dtype, uint64_t n, float mean, float std,
                                         uint64_t seed) {
  qlora_status s = check_fill_normal(dptr, dtype, std);
  if (s != QLORA_OK) return s;
  const int64_t pairs = (int64_t)((n + 1) / 2);
  const uint64_t key = splitmix64(seed);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t p = 0; p < pairs; p++) {
    uint64_t r = splitmix64(key ^ splitmix64((uint64_t)p));
    // Two 24-bit uniforms: u1 in (0, 1], u2 in [0, 1).
    float u1 = (float)((r >> 40) + 1) * 5.9604644775390625e-8f;
    float u2 = (float)((r >> 16) & 0xffffffu) * 5.9604644775390625e-8f;
    float radius = std::sqrt(-2.0f * std::log(u1));
    float angle = 6.283185307179586f * u2;
    uint64_t i = 2 * (uint64_t)p;
    store_float(dptr, dtype, i, mean + std * radius * std::cos(angle));
    if (i + 1 < n) store_float(dptr, dtype, i + 1, mean + std * radius * std::sin(angle));
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_fill_uniform(void* dptr, int32_t dtype, uint64_t n, float low, float high,
                                          uint64_t seed) {
  qlora_status s = check_fill_uniform(dptr, dtype, low, high);
  if (s != QLORA_OK) return s;
  const float width = high - low;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) {
    float scaled = width * unit_float(random_word(seed, (uint64_t)i));
    store_float(dptr, dtype, (uint64_t)i, low + scaled);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_axpby(float alpha, const void* x, float beta, void* y, int32_t dtype, uint64_t n) {
  qlora_status s = check_axpby(x, y, dtype);
  if (s != QLORA_OK) return s;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) {
    float ax = alpha * load_float(x, dtype, (uint64_t)i);
    float v = beta == 0.0f ? ax : ax + beta * load_float(y, dtype, (uint64_t)i);
    store_float(y, dtype, (uint64_t)i, v);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_dropout(const void* x, void* y, int32_t dtype, uint64_t n, float p, uint64_t seed) {
  qlora_status s = check_dropout(x, y, dtype, p);
  if (s != QLORA_OK) return s;
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < (int64_t)n; i++) {
    bool keep = dropout_keep(seed, (uint64_t)i, p);
    store_float(y, dtype, (uint64_t)i, keep ? load_float(x, dtype, (uint64_t)i) * scale : 0.0f);
  }
  return QLORA_OK;
}

}  // extern "C"
