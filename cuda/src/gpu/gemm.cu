// gpu/gemm.cu: matrix products on the GPU (mirrors cpu/gemm.cpp).
//
//   qlora_gemm          cuBLAS where the machine has it (loaded at run time: the build needs no cuBLAS
//                       headers or libraries), else the built-in tiled kernels below: bf16 on tensor
//                       cores (WMMA, f32 accumulation), f32 with f32 FMAs.
//   qlora_gemm_4bit     m <= 4: a fused GEMV that dequantizes the 4-bit codes on the fly (no workspace);
//                       m > 4: W dequantized into the caller's workspace (in row chunks when it is
//                       smaller than W at X's dtype), then the GEMM above.
//
// QLORA_GEMM=builtin in the environment (read once) skips cuBLAS, so that the built-in kernels can be
// checked on a machine that has it.
#include <cuda_bf16.h>
#include <dlfcn.h>
#include <library_types.h>
#include <mma.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "../common/codes.h"
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "dequant4.cuh"
#include "gpu.cuh"

namespace qlora {
namespace {

// ---- cuBLAS, loaded at run time ------------------------------------------------------------

// The few declarations of cublas_api.h we need, typed here (values from cuBLAS's public header and
// documentation; they have not changed since CUDA 11). cudaDataType comes from the toolkit's
// library_types.h, which nvcc always has: the static_assert checks our copy against it.
namespace cublas {
struct Context;
typedef Context* Handle;
typedef int Status;                   // cublasStatus_t
constexpr Status kSuccess = 0;        // CUBLAS_STATUS_SUCCESS
constexpr Status kNotSupported = 15;  // CUBLAS_STATUS_NOT_SUPPORTED
constexpr int kOpN = 0, kOpT = 1;     // cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T
constexpr int kCompute32F = 68;       // cublasComputeType_t: CUBLAS_COMPUTE_32F (no TF32 by default)
constexpr int kGemmDefault = -1;      // cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT
constexpr int kDisallowReducedPrecisionReduction = 16;  // cublasMath_t flag, added to CUBLAS_DEFAULT_MATH (0)
constexpr int kR32F = 0, kR16BF = 14;                   // cudaDataType: CUDA_R_32F, CUDA_R_16BF
static_assert(kR32F == CUDA_R_32F && kR16BF == CUDA_R_16BF, "cudaDataType values differ from library_types.h");

typedef Status (*CreateFn)(Handle*);
typedef Status (*SetStreamFn)(Handle, cudaStream_t);
typedef Status (*SetMathModeFn)(Handle, int);
typedef Status (*SetWorkspaceFn)(Handle, void*, size_t);
typedef Status (*GemmStridedBatchedExFn)(Handle, int transa, int transb, int m, int n, int k, const void* alpha,
                                         const void* a, int a_type, int lda, long long stride_a, const void* b,
                                         int b_type, int ldb, long long stride_b, const void* beta, void* c,
                                         int c_type, int ldc, long long stride_c, int batch, int compute_type,
                                         int algo);
}  // namespace cublas

// Which GEMM path this process uses, decided once (after the device is ready).
struct GemmLibrary {
  cublas::Handle handle = nullptr;  // null: the built-in kernels
  cublas::GemmStridedBatchedExFn gemm = nullptr;
  char name[192] = "built-in kernels";
};
GemmLibrary g_library;
std::once_flag g_library_once;

void load_gemm_library() {
  GemmLibrary& lib = g_library;
  const char* choice = getenv("QLORA_GEMM");
  if (choice && strcmp(choice, "builtin") == 0) {
    snprintf(lib.name, sizeof lib.name, "built-in kernels (QLORA_GEMM=builtin)");
    return;
  }
  // QLORA_CUBLAS=PATH names the library; else the system's cuBLAS (either major version works with a
  // CUDA 13 driver), then the toolkit's folder. The emulated build loads its reference cuBLAS, built
  // beside it (emu/cublas.cpp), so that this path runs there too.
#if defined(QLORA_EMU)
  const char* system_default = emu::cublas_library_path();
  const bool only_first = true;  // never a real cuBLAS in the emulated build
#else
  const char* system_default = "libcublas.so.13";
  const bool only_first = false;
#endif
  const char* chosen = getenv("QLORA_CUBLAS");
  const char* candidates[] = {chosen && *chosen ? chosen : system_default, "libcublas.so.12", "libcublas.so",
                              "/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.12"};
  const size_t count = (chosen && *chosen) || only_first ? 1 : sizeof candidates / sizeof candidates[0];
  void* so = nullptr;
  const char* found = nullptr;
  for (size_t i = 0; i < count; i++)
    if (candidates[i] && (so = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL)) != nullptr) {
      found = candidates[i];
      break;
    }
  if (!so) {
    snprintf(lib.name, sizeof lib.name, "built-in kernels (no libcublas found)");
    return;
  }
  // Never closed: the handle lives until the process exits.
  auto create = (cublas::CreateFn)dlsym(so, "cublasCreate_v2");
  auto set_stream = (cublas::SetStreamFn)dlsym(so, "cublasSetStream_v2");
  auto set_math_mode = (cublas::SetMathModeFn)dlsym(so, "cublasSetMathMode");
  auto set_workspace = (cublas::SetWorkspaceFn)dlsym(so, "cublasSetWorkspace_v2");
  auto gemm = (cublas::GemmStridedBatchedExFn)dlsym(so, "cublasGemmStridedBatchedEx");
  if (!create || !set_stream || !gemm) {
    snprintf(lib.name, sizeof lib.name, "built-in kernels (%s lacks a needed symbol)", found);
    return;
  }
  cublas::Handle handle = nullptr;
  cublas::Status st = create(&handle);
  if (st == cublas::kSuccess) st = set_stream(handle, gpu_stream());
  if (st != cublas::kSuccess) {
    snprintf(lib.name, sizeof lib.name, "built-in kernels (%s: cublasCreate failed with status %d)", found, st);
    cudaGetLastError();
    return;
  }
  // Products accumulate in f32 even when C is bf16 (no reductions in the output type).
  if (set_math_mode) set_math_mode(handle, cublas::kDisallowReducedPrecisionReduction);
  // No workspace (cuBLAS's no-workspace mode): cuBLAS would otherwise keep a buffer of its own that the
  // ledger and the budget never see. The few algorithms that need one are not chosen.
  if (set_workspace) set_workspace(handle, nullptr, 0);
  lib.handle = handle;
  lib.gemm = gemm;
  snprintf(lib.name, sizeof lib.name, "cuBLAS (%s)", found);
}

const GemmLibrary& gemm_library() {
  std::call_once(g_library_once, load_gemm_library);
  return g_library;
}

// ---- shared pieces ----------------------------------------------------------------------------

// One GEMM of the backend, row-major with explicit leading dimensions (elements between rows), so that
// the 4-bit path can multiply chunks of W into column ranges of C:
//   C_b = alpha * op(A_b) @ op(B_b) + beta * C_b,  b < batch,  X_b = X + b * stride_x.
struct Gemm {
  int32_t trans_a, trans_b;
  uint64_t m, n, k;
  float alpha, beta;
  const void* a;
  uint64_t lda, stride_a;
  const void* b;
  uint64_t ldb, stride_b;
  int32_t ab_dtype;
  void* c;
  uint64_t ldc, stride_c;
  int32_t c_dtype;
  uint64_t batch;
};

// C[idx] = alpha * acc + beta * C[idx], each product and sum rounded on its own; beta = 0 never reads C.
__device__ __forceinline__ void store_output(void* c, int32_t c_dtype, uint64_t idx, float acc, float alpha,
                                             float beta) {
  float v = __fmul_rn(alpha, acc);
  if (beta != 0.0f) v = __fadd_rn(v, __fmul_rn(beta, load_float(c, c_dtype, idx)));
  store_float(c, c_dtype, idx, v);
}

// Sum over the 32 lanes of a warp (butterfly: every lane gets the same result).
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- built-in GEMM kernels ----------------------------------------------------------------
// Both walk the (batch, tile row, tile column) triples grid-stride, one 64 x 64 tile of C per thread
// block at a time; tiles are loaded to shared memory with the contiguous dimension of the stored
// matrix along the threads (coalesced for either transpose), out-of-range elements as zeros.

constexpr int kTile = 64;

// bf16 A and B on tensor cores: 4 warps, each a 32 x 32 quarter of the tile as 2 x 2 WMMA fragments of
// 16 x 16 x 16 (bf16 inputs, f32 accumulators); K in steps of 32. The accumulators go through shared
// memory to the epilogue, which handles the edges, alpha, beta and C's dtype.
constexpr int kWmmaThreads = 128, kWmmaK = 32;
constexpr int kLdA = kWmmaK + 8, kLdB = kTile + 8, kLdC = kTile + 4;  // padded; multiples of 16 bytes

__global__ void __launch_bounds__(kWmmaThreads) gemm_bf16_wmma_kernel(Gemm g) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 as[kTile * kLdA];   // (i, p) of op(A)
  __shared__ __align__(32) __nv_bfloat16 bs[kWmmaK * kLdB];  // (p, j) of op(B)
  __shared__ __align__(32) float cs[kTile * kLdC];
  const int tid = threadIdx.x, warp = tid / 32, wr = warp / 2, wc = warp % 2;
  const uint64_t tiles_m = (g.m + kTile - 1) / kTile, tiles_n = (g.n + kTile - 1) / kTile;
  const uint64_t tiles = tiles_m * tiles_n;
  for (uint64_t t = blockIdx.x; t < tiles * g.batch; t += gridDim.x) {  // uniform across the block
    const uint64_t batch = t / tiles, i0 = (t % tiles) / tiles_n * kTile, j0 = (t % tiles) % tiles_n * kTile;
    const uint16_t* a = (const uint16_t*)g.a + batch * g.stride_a;
    const uint16_t* b = (const uint16_t*)g.b + batch * g.stride_b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int fi = 0; fi < 2; fi++)
#pragma unroll
      for (int fj = 0; fj < 2; fj++) wmma::fill_fragment(acc[fi][fj], 0.0f);
    for (uint64_t p0 = 0; p0 < g.k; p0 += kWmmaK) {
      for (int e = tid; e < kTile * kWmmaK; e += kWmmaThreads) {
        const int ii = g.trans_a ? e % kTile : e / kWmmaK, pp = g.trans_a ? e / kTile : e % kWmmaK;
        const uint64_t i = i0 + ii, p = p0 + pp;
        uint16_t v = 0;
        if (i < g.m && p < g.k) v = g.trans_a ? a[p * g.lda + i] : a[i * g.lda + p];
        as[ii * kLdA + pp] = __ushort_as_bfloat16(v);
      }
      for (int e = tid; e < kWmmaK * kTile; e += kWmmaThreads) {
        const int jj = g.trans_b ? e / kWmmaK : e % kTile, pp = g.trans_b ? e % kWmmaK : e / kTile;
        const uint64_t j = j0 + jj, p = p0 + pp;
        uint16_t v = 0;
        if (j < g.n && p < g.k) v = g.trans_b ? b[j * g.ldb + p] : b[p * g.ldb + j];
        bs[pp * kLdB + jj] = __ushort_as_bfloat16(v);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kWmmaK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
#pragma unroll
        for (int f = 0; f < 2; f++) {
          wmma::load_matrix_sync(fa[f], as + (wr * 32 + f * 16) * kLdA + kk, kLdA);
          wmma::load_matrix_sync(fb[f], bs + kk * kLdB + wc * 32 + f * 16, kLdB);
        }
#pragma unroll
        for (int fi = 0; fi < 2; fi++)
#pragma unroll
          for (int fj = 0; fj < 2; fj++) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int fi = 0; fi < 2; fi++)
#pragma unroll
      for (int fj = 0; fj < 2; fj++)
        wmma::store_matrix_sync(cs + (wr * 32 + fi * 16) * kLdC + wc * 32 + fj * 16, acc[fi][fj], kLdC,
                                wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < kTile * kTile; e += kWmmaThreads) {
      const uint64_t i = i0 + e / kTile, j = j0 + e % kTile;
      if (i < g.m && j < g.n)
        store_output(g.c, g.c_dtype, batch * g.stride_c + i * g.ldc + j, cs[(e / kTile) * kLdC + e % kTile], g.alpha,
                     g.beta);
    }
    __syncthreads();  // cs is rewritten by the next tile
  }
}

// f32 A and B: 256 threads, each a 4 x 4 grid of C (rows ty + 16r, columns tx + 16c) with f32 FMAs;
// K in steps of 16. Rows of the shared tiles are padded to 65 floats (no bank conflicts either way).
constexpr int kFmaThreads = 256, kFmaK = 16, kLdF = kTile + 1;

__global__ void __launch_bounds__(kFmaThreads) gemm_f32_kernel(Gemm g) {
  __shared__ float as[kFmaK * kLdF];  // (p, i) of op(A)
  __shared__ float bs[kFmaK * kLdF];  // (p, j) of op(B)
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const uint64_t tiles_m = (g.m + kTile - 1) / kTile, tiles_n = (g.n + kTile - 1) / kTile;
  const uint64_t tiles = tiles_m * tiles_n;
  for (uint64_t t = blockIdx.x; t < tiles * g.batch; t += gridDim.x) {  // uniform across the block
    const uint64_t batch = t / tiles, i0 = (t % tiles) / tiles_n * kTile, j0 = (t % tiles) % tiles_n * kTile;
    const float* a = (const float*)g.a + batch * g.stride_a;
    const float* b = (const float*)g.b + batch * g.stride_b;
    float acc[4][4] = {};
    for (uint64_t p0 = 0; p0 < g.k; p0 += kFmaK) {
      for (int e = tid; e < kTile * kFmaK; e += kFmaThreads) {
        const int ii = g.trans_a ? e % kTile : e / kFmaK, pp = g.trans_a ? e / kTile : e % kFmaK;
        const uint64_t i = i0 + ii, p = p0 + pp;
        as[pp * kLdF + ii] = i < g.m && p < g.k ? (g.trans_a ? a[p * g.lda + i] : a[i * g.lda + p]) : 0.0f;
        const int jj = g.trans_b ? e / kFmaK : e % kTile, qq = g.trans_b ? e % kFmaK : e / kTile;
        const uint64_t j = j0 + jj, q = p0 + qq;
        bs[qq * kLdF + jj] = j < g.n && q < g.k ? (g.trans_b ? b[j * g.ldb + q] : b[q * g.ldb + j]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int pp = 0; pp < kFmaK; pp++) {
        float av[4], bv[4];
#pragma unroll
        for (int r = 0; r < 4; r++) av[r] = as[pp * kLdF + ty + 16 * r];
#pragma unroll
        for (int c = 0; c < 4; c++) bv[c] = bs[pp * kLdF + tx + 16 * c];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
          for (int c = 0; c < 4; c++) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const uint64_t i = i0 + ty + 16 * r, j = j0 + tx + 16 * c;
        if (i < g.m && j < g.n) store_output(g.c, g.c_dtype, batch * g.stride_c + i * g.ldc + j, acc[r][c], g.alpha, g.beta);
      }
  }
}

qlora_status builtin_gemm(const Gemm& g, const char* what) {
  const uint64_t tiles = ((g.m + kTile - 1) / kTile) * ((g.n + kTile - 1) / kTile) * g.batch;
  const unsigned grid = (unsigned)(tiles < kMaxGrid ? tiles : kMaxGrid);
  if (g.ab_dtype == QLORA_BF16)
    QLORA_LAUNCH(gemm_bf16_wmma_kernel, grid, kWmmaThreads, 0, gpu_stream())(g);
  else
    QLORA_LAUNCH(gemm_f32_kernel, grid, kFmaThreads, 0, gpu_stream())(g);
  return launch_status(what);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets B as its first operand.
// The stored row-major matrices read as column-major are their transposes, so the flags carry over.
cublas::Status cublas_gemm(const GemmLibrary& lib, const Gemm& g) {
  const int type_ab = g.ab_dtype == QLORA_BF16 ? cublas::kR16BF : cublas::kR32F;
  const int type_c = g.c_dtype == QLORA_BF16 ? cublas::kR16BF : cublas::kR32F;
  const uint64_t max_batch = 0x7fffffff;  // cuBLAS counts batches in an int
  for (uint64_t b0 = 0; b0 < g.batch; b0 += max_batch) {
    const uint64_t count = g.batch - b0 < max_batch ? g.batch - b0 : max_batch;
    const uint64_t esize_ab = dtype_size(g.ab_dtype), esize_c = dtype_size(g.c_dtype);
    cublas::Status st = lib.gemm(
        lib.handle, g.trans_b ? cublas::kOpT : cublas::kOpN, g.trans_a ? cublas::kOpT : cublas::kOpN, (int)g.n,
        (int)g.m, (int)g.k, &g.alpha, (const char*)g.b + b0 * g.stride_b * esize_ab, type_ab, (int)g.ldb,
        (long long)g.stride_b, (const char*)g.a + b0 * g.stride_a * esize_ab, type_ab, (int)g.lda,
        (long long)g.stride_a, &g.beta, (char*)g.c + b0 * g.stride_c * esize_c, type_c, (int)g.ldc,
        (long long)g.stride_c, (int)count, cublas::kCompute32F, cublas::kGemmDefault);
    if (st != cublas::kSuccess) return st;
  }
  return cublas::kSuccess;
}

// Runs one GEMM (gpu_ready() has succeeded): cuBLAS when loaded and it supports the dtypes (not f32 A/B
// with a bf16 C), else the built-in kernels. Batches whose C matrices overlap (stride_c = 0, say) run
// one after another, so that each sees the previous one's C, as a loop over b would.
qlora_status run_gemm(const Gemm& g, const char* what) {
  if (g.batch > 1 && g.stride_c < (g.m - 1) * g.ldc + g.n) {
    Gemm one = g;
    one.batch = 1;
    for (uint64_t b = 0; b < g.batch; b++) {
      one.a = (const char*)g.a + b * g.stride_a * dtype_size(g.ab_dtype);
      one.b = (const char*)g.b + b * g.stride_b * dtype_size(g.ab_dtype);
      one.c = (char*)g.c + b * g.stride_c * dtype_size(g.c_dtype);
      qlora_status s = run_gemm(one, what);
      if (s != QLORA_OK) return s;
    }
    return QLORA_OK;
  }
  const GemmLibrary& lib = gemm_library();
  if (lib.handle && !(g.ab_dtype == QLORA_F32 && g.c_dtype == QLORA_BF16)) {
    cublas::Status st = cublas_gemm(lib, g);
    if (st == cublas::kSuccess) return QLORA_OK;
    if (st != cublas::kNotSupported)
      return fail(QLORA_ERR_INTERNAL, "Cannot %s: cublasGemmStridedBatchedEx failed with status %d", what, st);
    // not supported for this shape or GPU: the built-in kernels can
  }
  return builtin_gemm(g, what);
}

// ---- 4-bit: fused GEMV and dequantization into the workspace ------------------------------

// Everything a 4-bit kernel needs, by value. W's value at flat index f (along the stored W) is
// code[nibble f] * absmax[f >> block_shift], the first value of a byte in its high nibble.
struct Quant4Args {
  const void* x;
  uint64_t m, n, k;
  const uint8_t* packed;
  const float* absmax;
  uint32_t block_shift;
  Codes16 codes;
  float alpha, beta;
  void* c;
  int32_t x_dtype, c_dtype;
  bool vectors;  // the aligned fast path applies (see each kernel)
};

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

template <bool kBf16>
__device__ __forceinline__ float load_x(const void* x, uint64_t i) {
  return kBf16 ? bf16_to_float(((const uint16_t*)x)[i]) : ((const float*)x)[i];
}

// C = X W^T with W stored n x k (trans_w = 1), M = m <= 4 rows of X: one warp per row j of W, lanes
// along k. Fast path (vectors: k % 8 == 0, packed 4-byte and X 16-byte aligned): each lane takes 8
// values (one 32-bit word of codes, one absmax: blocks hold multiples of 8) per step, four steps
// loaded before use, so a warp reads 4 x 128 contiguous bytes of W at once. Otherwise value by value.
template <int M, bool kBf16>
__global__ void gemv_4bit_rows_kernel(Quant4Args g) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = g.codes.v[threadIdx.x];
  __syncthreads();
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t j = global_thread() / 32; j < g.n; j += warps) {  // uniform across the warp
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = 0.0f;
    const uint64_t row = j * g.k;
    if (g.vectors) {
      const uint32_t* words = (const uint32_t*)(g.packed + row / 2);
      for (uint64_t base = 8 * lane; base < g.k; base += 4 * 256) {
        uint32_t word[4];
        float scale[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const uint64_t p = base + 256 * u;
          word[u] = p < g.k ? words[p / 8] : 0u;
          scale[u] = p < g.k ? g.absmax[(row + p) >> g.block_shift] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const uint64_t p = base + 256 * u;
          if (p >= g.k) break;
          float w[8];
          decode8(word[u], scale[u], code, w);
#pragma unroll
          for (int r = 0; r < M; r++) {
            float xv[8];
            load_x8<kBf16>(g.x, r * g.k + p, xv);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[r] = fmaf(xv[e], w[e], acc[r]);
          }
        }
      }
    } else {
      for (uint64_t p = lane; p < g.k; p += 32) {
        const float w = quant4_at(g.packed, g.absmax, g.block_shift, code, row + p);
#pragma unroll
        for (int r = 0; r < M; r++) acc[r] = fmaf(load_x<kBf16>(g.x, r * g.k + p), w, acc[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = warp_sum(acc[r]);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < M; r++) store_output(g.c, g.c_dtype, r * g.n + j, acc[r], g.alpha, g.beta);
  }
}

// C = X W with W stored k x n (trans_w = 0), M = m <= 4: a thread block takes 64 columns of W as
// 8 lanes x 8 columns, times 32 slices of k (p = slice, slice + 32, ...), so that a warp reads 4 rows x
// 32 contiguous bytes of W per step. Fast path (vectors: n % 8 == 0, packed 4-byte aligned): one
// 32-bit word of codes per row step. The 32 partial sums of a column are added in a fixed order.
constexpr int kColThreads = 256, kColSlices = 32, kColsPerBlock = 64;

template <int M, bool kBf16>
__global__ void __launch_bounds__(kColThreads) gemv_4bit_cols_kernel(Quant4Args g) {
  __shared__ float code[16];
  __shared__ float partial[kColSlices][M][kColsPerBlock];
  if (threadIdx.x < 16) code[threadIdx.x] = g.codes.v[threadIdx.x];
  __syncthreads();
  const int lane8 = threadIdx.x % 8, slice = threadIdx.x / 8;
  const uint64_t groups = (g.n + kColsPerBlock - 1) / kColsPerBlock;
  for (uint64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {  // uniform across the block
    const uint64_t j0 = grp * kColsPerBlock + 8 * lane8;
    float acc[M][8];
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int e = 0; e < 8; e++) acc[r][e] = 0.0f;
#pragma unroll 4
    for (uint64_t p = slice; p < g.k; p += kColSlices) {
      float w[8];
      if (g.vectors && j0 + 8 <= g.n) {
        const uint64_t f = p * g.n + j0;  // a multiple of 8
        decode8(*(const uint32_t*)(g.packed + f / 2), g.absmax[f >> g.block_shift], code, w);
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) {
          w[e] = j0 + e < g.n ? quant4_at(g.packed, g.absmax, g.block_shift, code, p * g.n + j0 + e) : 0.0f;
        }
      }
#pragma unroll
      for (int r = 0; r < M; r++) {
        const float xv = load_x<kBf16>(g.x, r * g.k + p);
#pragma unroll
        for (int e = 0; e < 8; e++) acc[r][e] = fmaf(xv, w[e], acc[r][e]);
      }
    }
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int e = 0; e < 8; e++) partial[slice][r][8 * lane8 + e] = acc[r][e];
    __syncthreads();
    for (int t = threadIdx.x; t < M * kColsPerBlock; t += kColThreads) {
      const int r = t / kColsPerBlock, jj = t % kColsPerBlock;
      const uint64_t j = grp * kColsPerBlock + jj;
      if (j >= g.n) continue;
      float sum = 0.0f;
      for (int s = 0; s < kColSlices; s++) sum += partial[s][r][jj];
      store_output(g.c, g.c_dtype, r * g.n + j, sum, g.alpha, g.beta);
    }
    __syncthreads();  // partial is rewritten by the next group
  }
}

template <int M, bool kBf16>
void launch_gemv(int32_t trans_w, const Quant4Args& g) {
  if (trans_w) {
    QLORA_LAUNCH((gemv_4bit_rows_kernel<M, kBf16>), grid_for(32 * g.n), kThreads, 0, gpu_stream())(g);
  } else {
    const uint64_t groups = (g.n + kColsPerBlock - 1) / kColsPerBlock;
    QLORA_LAUNCH((gemv_4bit_cols_kernel<M, kBf16>), (unsigned)(groups < kMaxGrid ? groups : kMaxGrid), kColThreads, 0,
                                      gpu_stream())(g);
  }
}

template <bool kBf16>
void launch_gemv_rows(int32_t trans_w, const Quant4Args& g) {
  switch (g.m) {
    case 1: return launch_gemv<1, kBf16>(trans_w, g);
    case 2: return launch_gemv<2, kBf16>(trans_w, g);
    case 3: return launch_gemv<3, kBf16>(trans_w, g);
    default: return launch_gemv<4, kBf16>(trans_w, g);
  }
}

constexpr uint64_t kGemvMaxRows = 4;  // m <= 4: the fused GEMV; above, dequantize + GEMM

// Workspace of the dequantize + GEMM path: W at 2 bytes a value (a bf16 W in one piece; an f32 W in
// row chunks of half of it), but at least one row of W at 4 bytes.
uint64_t workspace_bytes_for(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k) {
  if (m <= kGemvMaxRows) return 0;
  const uint64_t row = trans_w ? k : n;  // values in a row of the stored W
  return 2 * n * k > 4 * row ? 2 * n * k : 4 * row;
}

bool aligned(const void* p, uint64_t a) { return (uintptr_t)p % a == 0; }

// C = alpha X op(W) + beta C with W's scales as f32 (the entry point's work but the bypass).
qlora_status gemm_4bit_base(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
                            int32_t x_dtype, const qlora_weight4& w, const float* absmax, float beta, void* c,
                            int32_t c_dtype, void* workspace, uint64_t workspace_bytes, const char* what) {
  qlora_status s = QLORA_OK;
  const uint8_t* packed = w.packed;
  const Codes16 codes = codes16(w.quant_type);
  const uint32_t block_shift = log2_pow2(w.blocksize);
  const uint64_t blocksize = w.blocksize;
  const bool x_bf16 = x_dtype == QLORA_BF16;

  if (m <= kGemvMaxRows) {
    Quant4Args g = {x, m, n, k, packed, absmax, block_shift, codes, alpha, beta, c, x_dtype, c_dtype, false};
    g.vectors = trans_w ? (k % 8 == 0 && aligned(packed, 4) && aligned(x, 16)) : (n % 8 == 0 && aligned(packed, 4));
    if (x_bf16)
      launch_gemv_rows<true>(trans_w, g);
    else
      launch_gemv_rows<false>(trans_w, g);
    return launch_status(what);
  }

  // Dequantize W (at X's dtype) into the workspace, as many whole rows of the stored W at a time as fit,
  // and multiply each chunk: trans_w = 1, rows j0.. of W give the columns j0.. of C; trans_w = 0, rows
  // p0.. of W are a slice of k, added onto C (beta for the first slice, then 1).
  const uint64_t esize = dtype_size(x_dtype);
  const uint64_t rows = trans_w ? n : k, row_len = trans_w ? k : n;
  uint64_t chunk = workspace_bytes / (row_len * esize);
  if (chunk > rows) chunk = rows;
  for (uint64_t r0 = 0; r0 < rows; r0 += chunk) {
    const uint64_t count = (rows - r0 < chunk ? rows - r0 : chunk) * row_len, first = r0 * row_len;
    s = dequantize_4bit_range(packed, absmax, first, count, blocksize, codes, workspace, x_dtype, what);
    if (s != QLORA_OK) return s;
    const uint64_t chunk_rows = count / row_len;
    Gemm g;
    if (trans_w) {  // C[:, r0:r0+chunk_rows] = alpha X W_chunk^T + beta C[:, ...]
      g = {0, 1, m, chunk_rows, k, alpha, beta, x, k, 0, workspace, k, 0, x_dtype,
           (char*)c + r0 * dtype_size(c_dtype), n, 0, c_dtype, 1};
    } else {  // C = alpha X[:, r0:r0+chunk_rows] W_chunk + (r0 == 0 ? beta : 1) C
      g = {0, 0, m, n, chunk_rows, alpha, r0 == 0 ? beta : 1.0f, (const char*)x + r0 * esize, k, 0, workspace, n, 0,
           x_dtype, c, n, 0, c_dtype, 1};
    }
    if ((s = run_gemm(g, what)) != QLORA_OK) return s;
  }
  return QLORA_OK;
}

}  // namespace

const char* gpu_gemm_library() { return gemm_library().name; }

}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_gemm(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k,
                                  float alpha, const void* a, const void* b, int32_t ab_dtype, float beta,
                                  void* c, int32_t c_dtype, uint64_t batch, uint64_t stride_a,
                                  uint64_t stride_b, uint64_t stride_c) {
  qlora_status s = check_gemm(trans_a, trans_b, m, n, k, a, b, ab_dtype, c, c_dtype, batch);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  // Leading dimensions of the contiguous matrices: A is m x k or k x m, B is k x n or n x k, C is m x n.
  const Gemm g = {trans_a, trans_b, m, n, k, alpha, beta, a, trans_a ? m : k, stride_a, b, trans_b ? k : n, stride_b,
                  ab_dtype, c, n, stride_c, c_dtype, batch};
  return run_gemm(g, "multiply matrices");
}

QLORA_API qlora_status qlora_gemm_4bit_workspace(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k,
                                                 uint64_t* bytes_out) {
  const qlora_status s = check_gemm_4bit_workspace(trans_w, m, n, k, bytes_out);
  if (s != QLORA_OK) return s;
  *bytes_out = workspace_bytes_for(trans_w, m, n, k);  // a formula: no device needed
  return QLORA_OK;
}

QLORA_API qlora_status qlora_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                                       const void* x, int32_t x_dtype, const qlora_weight4* weight,
                                       const qlora_lora4* lora, float beta, void* c, int32_t c_dtype,
                                       void* workspace, uint64_t workspace_bytes) {
  const char* what = "multiply by a 4-bit matrix";
  qlora_status s = check_gemm_4bit(trans_w, m, n, k, x, x_dtype, weight, lora, c, c_dtype);
  if (s != QLORA_OK) return s;
  s = check_gemm_4bit_workspace_arg(m, n, k, workspace, workspace_bytes, workspace_bytes_for(trans_w, m, n, k));
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  Absmax scales;
  if ((s = scales.of(*weight, n * k, what)) != QLORA_OK) return s;
  if (lora) {  // h = X A^T first; C += s h B^T after the base product
    const uint64_t r = lora->rank;
    Gemm down = {0, 1, m, r, k, 1.0f, 0.0f, x, k, 0, lora->a, k, 0, x_dtype, lora->h, r, 0, lora->dtype, 1};
    if ((s = run_gemm(down, what)) != QLORA_OK) return s;
  }
  if ((s = gemm_4bit_base(trans_w, m, n, k, alpha, x, x_dtype, *weight, scales.get(), beta, c, c_dtype, workspace,
                          workspace_bytes, what)) != QLORA_OK)
    return s;
  if (!lora) return QLORA_OK;
  const uint64_t r = lora->rank;
  Gemm up = {0, 1, m, n, r, lora->scaling, 1.0f, lora->h, r, 0, lora->b, r, 0, lora->dtype, c, n, 0, c_dtype, 1};
  return run_gemm(up, what);
}

}  // extern "C"
