// emu/cublas.cpp: the few cuBLAS functions the CUDA backend loads at run time (gpu/gemm.cu), as plain
// reference loops, built as build/libqlora_cublas_emu.so for the emulated CUDA build. Same names,
// signatures, status codes and column-major conventions as cuBLAS: strided batched GEMM with f32 or bf16
// A and B, f32 or bf16 C, f32 compute (products and sums in f32, the sum in k order).
#include <omp.h>

#include <cstdint>
#include <cstring>

#include "../common/half.h"
#include "include/library_types.h"

namespace {

typedef void* Stream;  // cudaStream_t: the emulator's streams are synchronous, so it is only recorded

struct Context {
  Stream stream = nullptr;
  int math_mode = 0;
};

constexpr int kSuccess = 0, kNotInitialized = 1, kInvalidValue = 7, kNotSupported = 15;
constexpr int kOpN = 0, kOpT = 1, kCompute32F = 68;

float load(const void* p, int type, uint64_t i) {
  return type == CUDA_R_32F ? ((const float*)p)[i] : qlora::bf16_to_float(((const uint16_t*)p)[i]);
}

void store(void* p, int type, uint64_t i, float v) {
  if (type == CUDA_R_32F) ((float*)p)[i] = v;
  else ((uint16_t*)p)[i] = qlora::float_to_bf16(v);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int cublasCreate_v2(Context** handle) {
  if (!handle) return kInvalidValue;
  *handle = new Context();
  return kSuccess;
}

__attribute__((visibility("default"))) int cublasDestroy_v2(Context* handle) {
  if (!handle) return kNotInitialized;
  delete handle;
  return kSuccess;
}

__attribute__((visibility("default"))) int cublasSetStream_v2(Context* handle, Stream stream) {
  if (!handle) return kNotInitialized;
  handle->stream = stream;
  return kSuccess;
}

__attribute__((visibility("default"))) int cublasSetMathMode(Context* handle, int mode) {
  if (!handle) return kNotInitialized;
  handle->math_mode = mode;
  return kSuccess;
}

// C_b = alpha op(A_b) op(B_b) + beta C_b, column-major, b < batch. beta = 0 does not read C.
__attribute__((visibility("default"))) int cublasGemmStridedBatchedEx(
    Context* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* a, int a_type,
    int lda, long long stride_a, const void* b, int b_type, int ldb, long long stride_b, const void* beta, void* c,
    int c_type, int ldc, long long stride_c, int batch, int compute_type, int algo) {
  (void)algo;
  if (!handle) return kNotInitialized;
  if ((transa != kOpN && transa != kOpT) || (transb != kOpN && transb != kOpT) || m < 0 || n < 0 || k < 0 ||
      batch < 0 || !alpha || !beta)
    return kInvalidValue;
  const int a_rows = transa == kOpN ? m : k, b_rows = transb == kOpN ? k : n;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1)) return kInvalidValue;
  if (compute_type != kCompute32F) return kNotSupported;
  auto supported = [](int t) { return t == CUDA_R_32F || t == CUDA_R_16BF; };
  if (!supported(a_type) || a_type != b_type || !supported(c_type)) return kNotSupported;
  if (a_type == CUDA_R_32F && c_type == CUDA_R_16BF) return kNotSupported;
  if (m == 0 || n == 0 || batch == 0) return kSuccess;
  const float al = *(const float*)alpha, be = *(const float*)beta;
  const uint64_t cols = (uint64_t)batch * n;
#pragma omp parallel for schedule(static)
  for (uint64_t bj = 0; bj < cols; bj++) {
    const uint64_t bi = bj / n, j = bj % n;
    const uint64_t oa = bi * stride_a, ob = bi * stride_b, oc = bi * stride_c;
    for (int i = 0; i < m; i++) {
      float acc = 0.0f;
      for (int p = 0; p < k; p++) {
        const float x = load(a, a_type, oa + (transa == kOpN ? (uint64_t)p * lda + i : (uint64_t)i * lda + p));
        const float y = load(b, b_type, ob + (transb == kOpN ? j * ldb + p : (uint64_t)p * ldb + j));
        acc += x * y;
      }
      const uint64_t at = oc + j * ldc + i;
      float v = al * acc;
      if (be != 0.0f) v += be * load(c, c_type, at);
      store(c, c_type, at, v);
    }
  }
  return kSuccess;
}

}  // extern "C"
