// emu/cublas.cpp: the few cuBLAS functions the CUDA backend loads at run time (gpu/gemm.cu), as plain
// reference loops, built as build/libqlora_cublas_emu.so for the emulated CUDA build. Same names,
// signatures, status codes and column-major conventions as cuBLAS: strided batched GEMM with f32 or bf16
// A and B, f32 or bf16 C, f32 compute (products and sums in f32, the sum in k order). As on a GPU, a
// GEMM is checked at the call and runs in the order of the stream set by cublasSetStream: queued through
// the stream's launch_host_func (the emulator's streams begin with it, emu/include/cuda_runtime.h), so
// the host must wait for the stream before it reads C. On the legacy default stream (null) it runs at the
// call.
#include <omp.h>

#include <cstdint>
#include <cstring>

#include "../common/half.h"
#include "include/library_types.h"

namespace {

// cudaStream_t of the emulator: a stream starts with the function that queues host work on it.
struct StreamHead {
  int (*launch_host_func)(StreamHead* stream, void (*fn)(void*), void* user_data);
};
typedef StreamHead* Stream;

struct Context {
  Stream stream = nullptr;
  int math_mode = 0;
};

constexpr int kSuccess = 0, kNotInitialized = 1, kInvalidValue = 7, kExecutionFailed = 13, kNotSupported = 15;
constexpr int kOpN = 0, kOpT = 1, kCompute32F = 68;

float load(const void* p, int type, uint64_t i) {
  return type == CUDA_R_32F ? ((const float*)p)[i] : qlora::bf16_to_float(((const uint16_t*)p)[i]);
}

void store(void* p, int type, uint64_t i, float v) {
  if (type == CUDA_R_32F) ((float*)p)[i] = v;
  else ((uint16_t*)p)[i] = qlora::float_to_bf16(v);
}

// One GEMM's arguments, alpha and beta read at the call as cuBLAS reads host scalars.
struct Gemm {
  int transa, transb, m, n, k;
  float alpha, beta;
  const void* a;
  int a_type, lda;
  long long stride_a;
  const void* b;
  int ldb;
  long long stride_b;
  void* c;
  int c_type, ldc;
  long long stride_c;
  int batch;
};

// Runs a queued GEMM and frees its arguments.
void run_gemm(void* p) {
  const Gemm& g = *(const Gemm*)p;
  const uint64_t cols = (uint64_t)g.batch * g.n;
#pragma omp parallel for schedule(static)
  for (uint64_t bj = 0; bj < cols; bj++) {
    const uint64_t bi = bj / g.n, j = bj % g.n;
    const uint64_t oa = bi * g.stride_a, ob = bi * g.stride_b, oc = bi * g.stride_c;
    for (int i = 0; i < g.m; i++) {
      float acc = 0.0f;
      for (int p = 0; p < g.k; p++) {
        const float x = load(g.a, g.a_type, oa + (g.transa == kOpN ? (uint64_t)p * g.lda + i : (uint64_t)i * g.lda + p));
        const float y = load(g.b, g.a_type, ob + (g.transb == kOpN ? j * g.ldb + p : (uint64_t)p * g.ldb + j));
        acc += x * y;
      }
      const uint64_t at = oc + j * g.ldc + i;
      float v = g.alpha * acc;
      if (g.beta != 0.0f) v += g.beta * load(g.c, g.c_type, at);
      store(g.c, g.c_type, at, v);
    }
  }
  delete (const Gemm*)p;
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
  Gemm* g = new Gemm{transa, transb, m, n, k, *(const float*)alpha, *(const float*)beta, a, a_type, lda, stride_a,
                     b, ldb, stride_b, c, c_type, ldc, stride_c, batch};
  if (!handle->stream) {
    run_gemm(g);
    return kSuccess;
  }
  return handle->stream->launch_host_func(handle->stream, run_gemm, g) == 0 ? kSuccess : kExecutionFailed;
}

}  // extern "C"
