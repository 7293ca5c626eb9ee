// gpu/gemm.cu: matrix products on the GPU (mirrors cpu/gemm.cpp).
//
//   qlora_gemm          cuBLAS where the machine has it (loaded at run time: the build needs no cuBLAS
//                       headers or libraries), else the built-in tiled kernels below: bf16 on tensor
//                       cores (WMMA, f32 accumulation), f32 with f32 FMAs.
//   qlora_gemm_4bit     m <= 4: the fused GEMV of gemv4.cu (W read once, decoded in registers, the LoRA
//                       bypass's update in its epilogue); m > 4: tiled GEMMs below whose W tiles are
//                       decoded from the codes straight into shared memory (bf16 X on tensor cores). No
//                       workspace: W never exists in 16 or 32 bits outside a thread block.
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
#include <type_traits>

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
// The FMA kernels' inner product over one staged slice: K values of k, op(A)'s and op(B)'s slices in shared
// memory as (p, i) and (p, j) with leading dimension Ld; thread (tx, ty) owns rows ty + 16 r and columns
// tx + 16 c of the tile, in registers.
template <int K, int Ld>
__device__ __forceinline__ void fma_tile(const float* as, const float* bs, int tx, int ty, float (&acc)[4][4]) {
#pragma unroll
  for (int pp = 0; pp < K; pp++) {
    float av[4], bv[4];
#pragma unroll
    for (int r = 0; r < 4; r++) av[r] = as[pp * Ld + ty + 16 * r];
#pragma unroll
    for (int c = 0; c < 4; c++) bv[c] = bs[pp * Ld + tx + 16 * c];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
      for (int c = 0; c < 4; c++) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
  }
}

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
      fma_tile<kFmaK, kLdF>(as, bs, tx, ty, acc);
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

// ---- 4-bit: tiles of W decoded into shared memory --------------------------------------------
// More rows of X than the fused GEMV takes (m > kGemvMaxRows): a tiled GEMM whose W tiles are decoded
// from the 4-bit codes straight into shared memory (dequant4.cuh's decoder, scales decoded on the fly),
// so W never exists in 16 or 32 bits outside a thread block and the product needs no workspace. W's
// values are those qlora_dequantize_4bit gives in X's dtype, products accumulate in f32: the result is
// dequantize-then-multiply up to the order of summation.

// The operands but W, by value. X is m x k; C is m x n; W is stored n x k (kTransW) or k x n.
struct Gemm4Args {
  const void* x;
  uint64_t m, n, k;
  float alpha, beta;
  void* c;
  int32_t c_dtype;
  bool x_vectors;  // bf16 X's rows read as 16-byte vectors: k % 8 == 0, X 16-byte aligned
  bool w_words;    // W's tile rows read as 32-bit words of codes: the stored row length % 8 == 0, packed
                   // 4-byte aligned (each word then holds 8 values of one quantization block)
};

// bf16 X on tensor cores: 256 threads (8 warps as 4 x 2, each a 32 x 32 piece of C as 2 x 2 WMMA fragments
// of 16 x 16 x 16, bf16 inputs, f32 accumulators) per 128 x 64 tile of C, K in steps of 64. Per step the
// X tile (128 x 64) is read as 16-byte vectors, and the W tile (64 x 64 values: 512 words of codes, two per
// thread) is decoded to bf16 into shared memory, each word to one 16-byte piece of a tile row. W is read as
// 4-bit codes once per 128 rows of X; tiles go down the rows of X first (tile t: rows t % tiles_m), so that
// the blocks running together share W's tiles in L2. trans_w = 1 keeps the W tile as stored, (j, p): the
// col_major matrix_b of WMMA; trans_w = 0 keeps (p, j): row_major. The epilogue goes fragment by fragment
// through a per-warp 16 x 16 staging tile (alpha, beta, C's dtype, the edges).
constexpr int kW4Threads = 256, kW4M = 128, kW4N = 64, kW4K = 64;
constexpr int kW4Ld = kW4K + 8;  // padded rows of both tiles (bf16): multiples of 16 bytes
constexpr int kW4LdS = 16 + 4;   // the staging tile's rows (f32)

template <bool kTransW>
__global__ void __launch_bounds__(kW4Threads) gemm4_bf16_wmma_kernel(Quant4 w, Gemm4Args g) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 xs[kW4M * kW4Ld];  // (i, p) of X
  __shared__ __align__(32) __nv_bfloat16 ws[kW4N * kW4Ld];  // (j, p) of W (kTransW), else (p, j)
  __shared__ __align__(32) float stage[kW4Threads / 32][16 * kW4LdS];
  __shared__ float map[256];
  load_map(w, map);
  const float code = lane_code(w);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wr = warp / 2, wc = warp % 2;
  const uint16_t* x = (const uint16_t*)g.x;
  const uint64_t tiles_m = (g.m + kW4M - 1) / kW4M, tiles = tiles_m * ((g.n + kW4N - 1) / kW4N);
  for (uint64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
    const uint64_t i0 = t % tiles_m * kW4M, j0 = t / tiles_m * kW4N;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int fi = 0; fi < 2; fi++)
#pragma unroll
      for (int fj = 0; fj < 2; fj++) wmma::fill_fragment(acc[fi][fj], 0.0f);
    for (uint64_t p0 = 0; p0 < g.k; p0 += kW4K) {
      // X: 128 rows x 64 values, zeros outside X
      if (g.x_vectors) {
        for (int e = tid; e < kW4M * kW4K / 8; e += kW4Threads) {
          const int ii = e / (kW4K / 8), pv = e % (kW4K / 8);
          const uint64_t i = i0 + ii, p = p0 + 8 * pv;
          *(uint4*)(xs + ii * kW4Ld + 8 * pv) =
              i < g.m && p < g.k ? *(const uint4*)(x + i * g.k + p) : make_uint4(0, 0, 0, 0);
        }
      } else {
        for (int e = tid; e < kW4M * kW4K; e += kW4Threads) {
          const int ii = e / kW4K, pp = e % kW4K;
          const uint64_t i = i0 + ii, p = p0 + pp;
          xs[ii * kW4Ld + pp] = __ushort_as_bfloat16(i < g.m && p < g.k ? x[i * g.k + p] : 0);
        }
      }
      // W: 64 x 64 values decoded to bf16, zeros outside W
      if (g.w_words) {
        for (int e = tid; e < kW4N * kW4K / 8; e += kW4Threads) {  // two words per thread
          const int row = e / 8, col = 8 * (e % 8);  // of the tile as kept: (j, p) or (p, j)
          const uint64_t j = j0 + (kTransW ? row : col), p = p0 + (kTransW ? col : row);
          const bool valid = j < g.n && p < g.k;
          const uint64_t f = kTransW ? j * g.k + p : p * g.n + j;
          float v[8];
          decode8(valid ? *(const uint32_t*)(w.packed + f / 2) : 0u,
                  valid ? block_scale(w, map, f >> w.block_shift) : 0.0f, code, v);
          uint32_t pair[4];
#pragma unroll
          for (int q = 0; q < 4; q++) pair[q] = float_to_bf16(v[2 * q]) | (uint32_t)float_to_bf16(v[2 * q + 1]) << 16;
          *(uint4*)(ws + row * kW4Ld + col) = make_uint4(pair[0], pair[1], pair[2], pair[3]);
        }
      } else {
        for (int e = tid; e < kW4N * kW4K; e += kW4Threads) {  // sixteen values per thread
          const int row = e / kW4K, col = e % kW4K;
          const uint64_t j = j0 + (kTransW ? row : col), p = p0 + (kTransW ? col : row);
          const float v = decode1(w, map, code, kTransW ? j * g.k + p : p * g.n + j, j < g.n && p < g.k);
          ws[row * kW4Ld + col] = __ushort_as_bfloat16(float_to_bf16(v));
        }
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kW4K; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
        using LayoutB = typename std::conditional<kTransW, wmma::col_major, wmma::row_major>::type;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb[2];
#pragma unroll
        for (int f = 0; f < 2; f++) {
          wmma::load_matrix_sync(fa[f], xs + (wr * 32 + f * 16) * kW4Ld + kk, kW4Ld);
          const int j = wc * 32 + f * 16;
          wmma::load_matrix_sync(fb[f], kTransW ? ws + j * kW4Ld + kk : ws + kk * kW4Ld + j, kW4Ld);
        }
#pragma unroll
        for (int fi = 0; fi < 2; fi++)
#pragma unroll
          for (int fj = 0; fj < 2; fj++) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
      }
      __syncthreads();  // xs and ws are rewritten by the next step
    }
    float* st = stage[warp];
#pragma unroll
    for (int fi = 0; fi < 2; fi++)
#pragma unroll
      for (int fj = 0; fj < 2; fj++) {
        wmma::store_matrix_sync(st, acc[fi][fj], kW4LdS, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 16 * 16; e += 32) {
          const uint64_t i = i0 + wr * 32 + fi * 16 + e / 16, j = j0 + wc * 32 + fj * 16 + e % 16;
          if (i < g.m && j < g.n)
            store_output(g.c, g.c_dtype, i * g.n + j, st[e / 16 * kW4LdS + e % 16], g.alpha, g.beta);
        }
        __syncwarp();  // st is rewritten by the next fragment
      }
  }
}

// f32 X with f32 FMAs: 256 threads, each a 4 x 4 grid of a 64 x 64 tile of C (rows ty + 16r, columns
// tx + 16c), K in steps of 32. Per step the X tile is read value by value along k (coalesced), and the W
// tile (32 x 64 values: 256 words of codes, one per thread) is decoded to f32 into shared memory, kept as
// (p, j) for either layout of W. Rows of the shared tiles are padded to 65 floats.
constexpr int kF4K = 32, kF4Ld = kTile + 1;

template <bool kTransW>
__global__ void __launch_bounds__(kFmaThreads) gemm4_f32_kernel(Quant4 w, Gemm4Args g) {
  __shared__ float xs[kF4K * kF4Ld];  // (p, i) of X
  __shared__ float ws[kF4K * kF4Ld];  // (p, j) of op(W)
  __shared__ float map[256];
  load_map(w, map);
  const float code = lane_code(w);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const float* x = (const float*)g.x;
  const uint64_t tiles_m = (g.m + kTile - 1) / kTile, tiles = tiles_m * ((g.n + kTile - 1) / kTile);
  for (uint64_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform across the block
    const uint64_t i0 = t % tiles_m * kTile, j0 = t / tiles_m * kTile;
    float acc[4][4] = {};
    for (uint64_t p0 = 0; p0 < g.k; p0 += kF4K) {
      for (int e = tid; e < kTile * kF4K; e += kFmaThreads) {
        const int ii = e / kF4K, pp = e % kF4K;
        const uint64_t i = i0 + ii, p = p0 + pp;
        xs[pp * kF4Ld + ii] = i < g.m && p < g.k ? x[i * g.k + p] : 0.0f;
      }
      if (g.w_words) {  // one word per thread: 8 values along W's stored rows
        const int row = kTransW ? tid / 4 : tid / 8, col = kTransW ? 8 * (tid % 4) : 8 * (tid % 8);
        const uint64_t j = j0 + (kTransW ? row : col), p = p0 + (kTransW ? col : row);
        const bool valid = j < g.n && p < g.k;
        const uint64_t f = kTransW ? j * g.k + p : p * g.n + j;
        float v[8];
        decode8(valid ? *(const uint32_t*)(w.packed + f / 2) : 0u,
                valid ? block_scale(w, map, f >> w.block_shift) : 0.0f, code, v);
#pragma unroll
        for (int e = 0; e < 8; e++) ws[kTransW ? (col + e) * kF4Ld + row : row * kF4Ld + col + e] = v[e];
      } else {
        for (int e = tid; e < kTile * kF4K; e += kFmaThreads) {  // eight values per thread
          const int jj = kTransW ? e / kF4K : e % kTile, pp = kTransW ? e % kF4K : e / kTile;
          const uint64_t j = j0 + jj, p = p0 + pp;
          ws[pp * kF4Ld + jj] = decode1(w, map, code, kTransW ? j * g.k + p : p * g.n + j, j < g.n && p < g.k);
        }
      }
      __syncthreads();
      fma_tile<kF4K, kF4Ld>(xs, ws, tx, ty, acc);
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const uint64_t i = i0 + ty + 16 * r, j = j0 + tx + 16 * c;
        if (i < g.m && j < g.n) store_output(g.c, g.c_dtype, i * g.n + j, acc[r][c], g.alpha, g.beta);
      }
  }
}

bool aligned(const void* p, uint64_t a) { return (uintptr_t)p % a == 0; }

// C = alpha X op(W) + beta C for m > kGemvMaxRows (the entry point's work but the bypass).
qlora_status gemm4_tiled(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                         const void* x, int32_t x_dtype, float beta, void* c, int32_t c_dtype, const char* what) {
  const bool bf16 = x_dtype == QLORA_BF16;
  Gemm4Args g = {x, m, n, k, alpha, beta, c, c_dtype, false, false};
  g.x_vectors = bf16 && k % 8 == 0 && aligned(x, 16);
  g.w_words = (trans_w ? k : n) % 8 == 0 && aligned(w.packed, 4);
  const uint64_t tm = bf16 ? kW4M : kTile, tn = bf16 ? kW4N : kTile;
  const uint64_t tiles = ((m + tm - 1) / tm) * ((n + tn - 1) / tn);
  const unsigned grid = (unsigned)(tiles < kMaxGrid ? tiles : kMaxGrid);
  if (bf16 && trans_w) QLORA_LAUNCH((gemm4_bf16_wmma_kernel<true>), grid, kW4Threads, 0, gpu_stream())(w, g);
  else if (bf16) QLORA_LAUNCH((gemm4_bf16_wmma_kernel<false>), grid, kW4Threads, 0, gpu_stream())(w, g);
  else if (trans_w) QLORA_LAUNCH((gemm4_f32_kernel<true>), grid, kFmaThreads, 0, gpu_stream())(w, g);
  else QLORA_LAUNCH((gemm4_f32_kernel<false>), grid, kFmaThreads, 0, gpu_stream())(w, g);
  return launch_status(what);
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
  *bytes_out = 0;  // none: W is decoded in registers (the GEMV) or in shared memory (the tiles)
  return QLORA_OK;
}

QLORA_API qlora_status qlora_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                                       const void* x, int32_t x_dtype, const qlora_weight4* weight,
                                       const qlora_lora4* lora, float beta, void* c, int32_t c_dtype,
                                       void* workspace, uint64_t workspace_bytes) {
  const char* what = "multiply by a 4-bit matrix";
  qlora_status s = check_gemm_4bit(trans_w, m, n, k, x, x_dtype, weight, lora, c, c_dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const Quant4 w = quant4(*weight);
  // A few rows: one pass over W, the bypass's h first and its update in the same kernel's epilogue.
  if (m <= kGemvMaxRows) return gemv4(w, trans_w, m, n, k, alpha, x, x_dtype, lora, beta, c, c_dtype, what);
  if (lora) {  // h = X A^T first; C += s h B^T after the base product
    const uint64_t r = lora->rank;
    Gemm down = {0, 1, m, r, k, 1.0f, 0.0f, x, k, 0, lora->a, k, 0, x_dtype, lora->h, r, 0, lora->dtype, 1};
    if ((s = run_gemm(down, what)) != QLORA_OK) return s;
  }
  if ((s = gemm4_tiled(w, trans_w, m, n, k, alpha, x, x_dtype, beta, c, c_dtype, what)) != QLORA_OK) return s;
  if (!lora) return QLORA_OK;
  const uint64_t r = lora->rank;
  Gemm up = {0, 1, m, n, r, lora->scaling, 1.0f, lora->h, r, 0, lora->b, r, 0, lora->dtype, c, n, 0, c_dtype, 1};
  return run_gemm(up, what);
}

}  // extern "C"
