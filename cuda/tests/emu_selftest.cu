// emu_selftest: the CUDA emulator finds the bugs it promises to find. Small kernels, each with a known
// answer or a deliberate bug, run through the emulator (cuda/src/emu) exactly as the backend's kernels
// are. Built by `make` (build/emu_selftest, and build/sanitize/emu_selftest under ASan + UBSan).
//
//   emu_selftest            semantics: barriers, warp shuffles, ballot, atomics, WMMA, dynamic shared
//                           memory, launch and copy errors; then the bugs it must expose: a missing
//                           __syncthreads (the result changes with the thread order or shows the poison),
//                           a barrier that cannot complete (the sticky launch failure). Exit 0 when every
//                           check holds, with "N passed, M failed" at the end.
//   emu_selftest oob        a kernel that reads one element past its buffer: under the sanitizer build the
//                           process must die with AddressSanitizer's report naming the kernel.
//   emu_selftest BUG        the other planted bugs, each in a process of its own (the errors are sticky):
//                           host-pointer, freed-pointer (a kernel given memory it may not dereference),
//                           wmma-misaligned, wmma-ldm (WMMA's pointer and ldm rules): exit 0 when caught;
//                           host-read (QLORA_EMU_STREAMS=deferred: the host dereferences device memory): the
//                           process must die, naming the access.
#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../src/gpu/gpu.cuh"

using qlora::kThreads;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const char* what) {
  printf("%-72s %s\n", what, ok ? "PASS" : "FAIL");
  (ok ? g_passed : g_failed)++;
}

template <typename T>
T* device_array(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) {
    fprintf(stderr, "cudaMalloc failed\n");
    exit(2);
  }
  cudaMemset(p, 0, n * sizeof(T));
  return (T*)p;
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

// ---- kernels with a known answer ----------------------------------------------------------------

// Block-wide sum through shared memory, with the barriers it needs: the same in every thread order.
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float s[256];
  s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// The same exchange without the barrier: each thread reads its neighbour's slot, which the neighbour
// may not have written yet. Only the thread order decides what it reads.
__global__ void racy_neighbour_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = (float)threadIdx.x;
  // a __syncthreads() belongs here
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

// Warp shuffles and votes against their definitions.
__global__ void warp_kernel(const float* x, float* sum, unsigned* ballot, float* down, int* any_all) {
  const unsigned lane = threadIdx.x % 32;
  float v = x[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  sum[threadIdx.x] = v;
  ballot[threadIdx.x] = __ballot_sync(0xffffffffu, x[threadIdx.x] > 0.0f);
  down[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 3);
  any_all[threadIdx.x] = __any_sync(0xffffffffu, lane == 7) * 2 + __all_sync(0xffffffffu, lane < 32);
}

__global__ void atomic_kernel(unsigned long long* lowest, int* count) {
  atomicMin(lowest, (unsigned long long)(1000 - blockIdx.x * blockDim.x - threadIdx.x));
  atomicAdd(count, 1);
}

// One 16 x 16 x 16 bf16 product on tensor cores (one warp), plus 1. Stored by store_matrix_sync, or, with
// assume_layout, by indexing the accumulator's elements as if lane l held row-major elements [8 l, 8 l + 8):
// right only for one fragment layout, which a GPU does not promise.
__global__ void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, bool assume_layout) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  if (!assume_layout) {
    wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
    return;
  }
  for (int e = 0; e < acc.num_elements; e++) c[threadIdx.x * acc.num_elements + e] = acc.x[e];
}

// A WMMA load from a pointer off its 32-byte alignment (offset elements in), or with a leading dimension
// that is not a multiple of 16 bytes.
__global__ void wmma_bad_kernel(const __nv_bfloat16* a, float* c, int offset, int ldm) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + offset, ldm);
  c[threadIdx.x] = __bfloat162float(fa.x[0]);
}

// 40 KB of static shared memory, plus what the launch gives dynamically.
__global__ void static_shared_kernel(float* out) {
  __shared__ float big[10240];
  QLORA_EXTERN_SHARED(float, extra);
  big[threadIdx.x] = (float)threadIdx.x;
  extra[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = big[blockDim.x - 1] + extra[0];
}

__global__ void dynamic_shared_kernel(float* out, int n) {
  QLORA_EXTERN_SHARED(float, smem);
  for (int i = threadIdx.x; i < n; i += blockDim.x) smem[i] = (float)i;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += smem[i];
    out[blockIdx.x] = s;
  }
}

// ---- deliberate bugs ------------------------------------------------------------------------------

// Half of each warp waits at __syncthreads while the other half waits at a shuffle that names the whole
// warp: neither can complete, on a GPU as here. (A warp that has exited does not block __syncthreads.)
__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x % 32 < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  }
}

__global__ void oob_kernel(const float* x, float* out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = x[i + 1];  // reads x[n]
}

// Writes out[i] = i + 1 slowly (one block after another does not matter: the host must wait for it).
__global__ void fill_kernel(float* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) out[i] = (float)(i + 1);
}

__nv_bfloat16 bf16(float v) { return __float2bfloat16(v); }

// A kernel given a pointer it may not dereference: host memory ("host-pointer") or a device buffer freed
// before the launch ("freed-pointer"). The launch must fail with cudaErrorIllegalAddress (sticky), the
// kernel and the argument named on stderr; in the sanitizer build the process stops there.
int run_bad_pointer(bool freed) {
  const int n = 64;
  std::vector<float> host(n, 0.0f);
  float* out = device_array<float>(n);
  float* target = host.data();
  if (freed) {
    target = device_array<float>(n);
    cudaFree(target);
  }
  QLORA_LAUNCH(fill_kernel, 1, 64, 0, nullptr)(target, n);
  const cudaError_t launched = cudaGetLastError(), synced = cudaDeviceSynchronize();
  if (launched == cudaErrorIllegalAddress && synced == cudaErrorIllegalAddress) {
    printf("%s: the launch failed with cudaErrorIllegalAddress, sticky\n", freed ? "freed-pointer" : "host-pointer");
    return 0;
  }
  printf("%s: the kernel ran (%s, %s)\n", freed ? "freed-pointer" : "host-pointer", cudaGetErrorName(launched),
         cudaGetErrorName(synced));
  (void)out;
  return 1;
}

// The host reads device memory directly, without a copy ("host-read", with QLORA_EMU_STREAMS=deferred):
// the process must stop, naming the access.
int run_host_read() {
  float* d = device_array<float>(64);
  cudaDeviceSynchronize();
  const volatile float v = d[3];  // the planted bug: a device pointer dereferenced on the host
  printf("host-read: the host read device memory (%g) and went on\n", (double)v);
  return 1;
}

// A WMMA load that breaks the alignment rule ("wmma-misaligned": 8 bf16 = 16 bytes in) or the ldm rule
// ("wmma-ldm": 20 bf16 = 40 bytes): the kernel must fail (cudaErrorLaunchFailure, the rule on stderr).
int run_bad_wmma(bool misaligned) {
  __nv_bfloat16* a = device_array<__nv_bfloat16>(1024);
  float* c = device_array<float>(32);
  QLORA_LAUNCH(wmma_bad_kernel, 1, 32, 0, nullptr)(a, c, misaligned ? 8 : 0, misaligned ? 16 : 20);
  const cudaError_t e = cudaDeviceSynchronize();
  const char* what = misaligned ? "wmma-misaligned" : "wmma-ldm";
  if (e == cudaErrorLaunchFailure) {
    printf("%s: the kernel failed with cudaErrorLaunchFailure\n", what);
    return 0;
  }
  printf("%s: the load was accepted (%s)\n", what, cudaGetErrorName(e));
  return 1;
}

int run_oob() {
  const int n = 100;
  float* x = device_array<float>(n);
  float* out = device_array<float>(n);
  QLORA_LAUNCH(oob_kernel, 1, 64, 0, nullptr)(x, out, n);
  cudaDeviceSynchronize();
  printf("oob: the kernel ran to the end: no sanitizer caught the read of x[%d]\n", n);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "oob") == 0) return run_oob();
  if (argc > 1 && strcmp(argv[1], "host-pointer") == 0) return run_bad_pointer(false);
  if (argc > 1 && strcmp(argv[1], "freed-pointer") == 0) return run_bad_pointer(true);
  if (argc > 1 && strcmp(argv[1], "host-read") == 0) return run_host_read();
  if (argc > 1 && strcmp(argv[1], "wmma-misaligned") == 0) return run_bad_wmma(true);
  if (argc > 1 && strcmp(argv[1], "wmma-ldm") == 0) return run_bad_wmma(false);
  const char* streams = getenv("QLORA_EMU_STREAMS");
  const bool deferred = streams && strcmp(streams, "deferred") == 0;

  {  // barriers: a block sum over 4 blocks of 256
    const int blocks = 4, n = blocks * 256;
    std::vector<float> h(n);
    for (int i = 0; i < n; i++) h[i] = (float)(i % 17) - 8.0f;
    float* x = device_array<float>(n);
    float* out = device_array<float>(blocks);
    cudaMemcpy(x, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    QLORA_LAUNCH(block_sum_kernel, blocks, kThreads, 0, nullptr)(x, out);
    auto r = to_host(out, blocks);
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int b = 0; b < blocks; b++) {
      float s = 0.0f;
      for (int i = 0; i < 256; i++) s += h[b * 256 + i];
      ok = ok && r[b] == s;
    }
    check(ok, "__syncthreads: a tree sum in shared memory is exact");
    cudaFree(x);
    cudaFree(out);
  }
  {  // a missing barrier: the neighbour's value is read before it is written for some thread
    float* out = device_array<float>(64);
    QLORA_LAUNCH(racy_neighbour_kernel, 1, 64, 0, nullptr)(out);
    auto r = to_host(out, 64);
    int wrong = 0;
    for (int t = 0; t < 64; t++) wrong += r[t] != (float)((t + 1) % 64);
    // forward order: every thread but the last reads an unwritten slot (the poison, NaN, when
    // QLORA_EMU_POISON=1); reverse order: only thread 63 does (slot 0 is written last).
    check(wrong > 0, "a missing __syncthreads shows: some thread reads an unwritten slot");
    bool poisoned = false;
    for (int t = 0; t < 63; t++) poisoned = poisoned || std::isnan(r[t]);
    const char* poison = getenv("QLORA_EMU_POISON");
    const char* order = getenv("QLORA_EMU_ORDER");
    if (poison && strcmp(poison, "1") == 0 && (!order || strcmp(order, "forward") == 0))
      check(poisoned, "with poisoned shared memory, the unwritten slots read as NaN");
    cudaFree(out);
  }
  {  // warp collectives
    std::vector<float> h(64);
    for (int i = 0; i < 64; i++) h[i] = (float)((i * 7) % 11) - 5.0f;
    float* x = device_array<float>(64);
    float* sum = device_array<float>(64);
    float* down = device_array<float>(64);
    unsigned* ballot = device_array<unsigned>(64);
    int* any_all = device_array<int>(64);
    cudaMemcpy(x, h.data(), sizeof(float) * 64, cudaMemcpyHostToDevice);
    QLORA_LAUNCH(warp_kernel, 1, 64, 0, nullptr)(x, sum, ballot, down, any_all);
    auto s = to_host(sum, 64);
    auto bl = to_host(ballot, 64);
    auto dn = to_host(down, 64);
    auto aa = to_host(any_all, 64);
    bool sums = true, votes = true, downs = true;
    for (int w = 0; w < 2; w++) {
      float expect = 0.0f;
      unsigned bits = 0;
      for (int l = 0; l < 32; l++) {
        expect += h[w * 32 + l];
        bits |= (h[w * 32 + l] > 0.0f ? 1u : 0u) << l;
      }
      for (int l = 0; l < 32; l++) {
        sums = sums && s[w * 32 + l] == expect;
        votes = votes && bl[w * 32 + l] == bits && aa[w * 32 + l] == 3;
        downs = downs && dn[w * 32 + l] == h[w * 32 + (l + 3 < 32 ? l + 3 : l)];
      }
    }
    check(sums, "__shfl_xor_sync: every lane gets the warp's sum");
    check(votes, "__ballot_sync, __any_sync, __all_sync: the lanes' predicates");
    check(downs, "__shfl_down_sync: lanes past the warp keep their own value");
  }
  {  // atomics across blocks
    unsigned long long* lowest = device_array<unsigned long long>(1);
    int* count = device_array<int>(1);
    const unsigned long long start = ~0ull;
    cudaMemcpy(lowest, &start, sizeof start, cudaMemcpyHostToDevice);
    QLORA_LAUNCH(atomic_kernel, 3, 128, 0, nullptr)(lowest, count);
    check(to_host(lowest, 1)[0] == 1000 - 383 && to_host(count, 1)[0] == 384, "atomicMin and atomicAdd across blocks");
  }
  {  // WMMA against a loop
    std::vector<__nv_bfloat16> a(256), b(256);
    for (int i = 0; i < 256; i++) {
      a[i] = bf16((float)((i * 5) % 9) - 4.0f);
      b[i] = bf16((float)((i * 3) % 7) - 3.0f);
    }
    __nv_bfloat16* da = device_array<__nv_bfloat16>(256);
    __nv_bfloat16* db = device_array<__nv_bfloat16>(256);
    float* dc = device_array<float>(256);
    cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
    cudaMemcpy(db, b.data(), 512, cudaMemcpyHostToDevice);
    QLORA_LAUNCH(wmma_kernel, 1, 32, 0, nullptr)(da, db, dc, false);
    auto c = to_host(dc, 256);
    bool ok = true;
    for (int i = 0; i < 16; i++)
      for (int j = 0; j < 16; j++) {
        float s = 1.0f;
        for (int p = 0; p < 16; p++) s += __bfloat162float(a[i * 16 + p]) * __bfloat162float(b[p * 16 + j]);
        ok = ok && c[i * 16 + j] == s;
      }
    check(ok, "wmma::mma_sync: a 16x16x16 bf16 product across the warp's fragments");
    // Code that assumes which elements a lane holds: right in the forward order only.
    QLORA_LAUNCH(wmma_kernel, 1, 32, 0, nullptr)(da, db, dc, true);
    auto assumed = to_host(dc, 256);
    const char* order = getenv("QLORA_EMU_ORDER");
    const bool forward = !order || strcmp(order, "forward") == 0;
    check((assumed == c) == forward, forward ? "frag.x[] in the forward order: lane l holds elements [8 l, 8 l + 8)"
                                             : "frag.x[] indexed as if the layout were known: wrong in this order");
  }
  {  // dynamic shared memory: the launch's size, and the opt-in above 48 KB
    float* out = device_array<float>(2);
    QLORA_LAUNCH(dynamic_shared_kernel, 2, 128, 1000 * sizeof(float), nullptr)(out, 1000);
    auto r = to_host(out, 2);
    check(cudaGetLastError() == cudaSuccess && r[0] == 499500.0f && r[1] == 499500.0f,
          "extern __shared__: the size given at the launch");
    QLORA_LAUNCH(dynamic_shared_kernel, 1, 128, 60 << 10, nullptr)(out, 10);
    check(cudaGetLastError() == cudaErrorInvalidValue, "60 KB of dynamic shared memory without the opt-in is refused");
    cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 60 << 10);
    QLORA_LAUNCH(dynamic_shared_kernel, 1, 128, 60 << 10, nullptr)(out, 10);
    check(cudaGetLastError() == cudaSuccess, "... and accepted after cudaFuncSetAttribute");
    check(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 << 10) ==
              cudaErrorInvalidValue,
          "an opt-in above the RTX 3060's 99 KB per block is refused");
    cudaGetLastError();
    // Static + dynamic shared memory per block: 40 KB static leaves 8 KB of the 48 KB without the opt-in.
    QLORA_LAUNCH(static_shared_kernel, 1, 128, 8 << 10, nullptr)(out);
    check(cudaGetLastError() == cudaSuccess && to_host(out, 1)[0] == 128.0f, "40 KB static + 8 KB dynamic shared memory");
    QLORA_LAUNCH(static_shared_kernel, 1, 128, 9 << 10, nullptr)(out);
    check(cudaGetLastError() == cudaErrorInvalidValue, "40 KB static + 9 KB dynamic: over 48 KB, refused");
    check(cudaFuncSetAttribute(static_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 60 << 10) ==
              cudaErrorInvalidValue,
          "an opt-in of 60 KB dynamic beside 40 KB static (over 99 KB) is refused");
    cudaGetLastError();
    cudaFuncSetAttribute(static_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 16 << 10);
    QLORA_LAUNCH(static_shared_kernel, 1, 128, 16 << 10, nullptr)(out);
    check(cudaGetLastError() == cudaSuccess, "... 16 KB dynamic after the opt-in");
    QLORA_LAUNCH(dynamic_shared_kernel, 1, 2048, 0, nullptr)(out, 0);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block: invalid configuration");
  }
  {  // copies are checked against the memory each pointer names
    float host_a[4] = {1, 2, 3, 4}, host_b[4] = {};
    float* dev = device_array<float>(4);
    check(cudaMemcpy(host_b, host_a, 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "cudaMemcpyHostToDevice into host memory: invalid argument");
    check(cudaMemcpy(dev, host_a, 32, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a copy past the end of a device allocation: invalid argument");
    check(cudaMemcpy(host_b, dev, 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a device source with cudaMemcpyHostToDevice: invalid argument");
    check(cudaMemcpy(host_b, host_a, 16, cudaMemcpyDefault) == cudaSuccess && host_b[3] == 4.0f,
          "cudaMemcpyDefault between host buffers works");
    void* big = nullptr;
    check(cudaMalloc(&big, (size_t)1 << 50) == cudaErrorMemoryAllocation && big == nullptr,
          "an allocation past the emulated device size: cudaErrorMemoryAllocation");
    check(cudaFree(host_a) == cudaErrorInvalidValue, "cudaFree of a host pointer: invalid argument");
    cudaGetLastError();
  }
  {  // streams: asynchronous, in order, waited for by the calls that wait
    const int n = 4096;
    cudaStream_t s1 = nullptr, s2 = nullptr;
    cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
    float* d = device_array<float>(n);
    float* d2 = device_array<float>(n);
    cudaDeviceSynchronize();
    std::vector<float> h(n, -1.0f);
    QLORA_LAUNCH(fill_kernel, 8, 128, 0, s1)(d, n);
    cudaMemcpyAsync(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost, s1);
    // The planted bug: the host reads h before it waits for s1. In deferred mode the copy has not run.
    int early = 0;
    for (int i = 0; i < n; i++) early += h[i] == (float)(i + 1);
    if (deferred)
      check(early == 0 && cudaStreamQuery(s1) == cudaErrorNotReady,
            "a missing cudaStreamSynchronize shows: the host reads what the copy has not written");
    check(cudaStreamSynchronize(s1) == cudaSuccess, "cudaStreamSynchronize waits for the stream's work");
    int right = 0;
    for (int i = 0; i < n; i++) right += h[i] == (float)(i + 1);
    check(right == n && cudaStreamQuery(s1) == cudaSuccess, "... after which the copy has written every value");

    // One stream waits for another through an event: s2 copies what s1's kernel writes.
    cudaEvent_t written = nullptr, start = nullptr, end = nullptr;
    cudaEventCreate(&written);
    cudaEventCreate(&start);
    cudaEventCreate(&end);
    cudaMemsetAsync(d, 0, n * sizeof(float), s1);
    cudaEventRecord(start, s1);
    QLORA_LAUNCH(fill_kernel, 8, 128, 0, s1)(d, n);
    cudaEventRecord(written, s1);
    cudaEventRecord(end, s1);
    cudaStreamWaitEvent(s2, written, 0);
    cudaMemcpyAsync(d2, d, n * sizeof(float), cudaMemcpyDeviceToDevice, s2);
    std::vector<float> h2(n, -1.0f);
    cudaMemcpyAsync(h2.data(), d2, n * sizeof(float), cudaMemcpyDeviceToHost, s2);
    if (deferred) {
      float ms = 0.0f;
      check(cudaEventQuery(end) == cudaErrorNotReady && cudaEventElapsedTime(&ms, start, end) == cudaErrorNotReady,
            "an event not yet reached: cudaEventQuery and cudaEventElapsedTime say not ready");
      cudaGetLastError();
    }
    cudaStreamSynchronize(s2);
    right = 0;
    for (int i = 0; i < n; i++) right += h2[i] == (float)(i + 1);
    float ms = -1.0f;
    check(right == n && cudaEventQuery(written) == cudaSuccess, "cudaStreamWaitEvent orders one stream after another");
    // s2 waited for s1 only up to `written`; `end` completes when the host waits for it.
    check(cudaEventSynchronize(end) == cudaSuccess && cudaEventElapsedTime(&ms, start, end) == cudaSuccess && ms >= 0.0f,
          "cudaEventSynchronize, then cudaEventElapsedTime between reached events");
    // A pinned source is read when the copy runs: the host must not change it before the stream is done.
    float* pinned = nullptr;
    cudaMallocHost((void**)&pinned, n * sizeof(float));
    for (int i = 0; i < n; i++) pinned[i] = 7.0f;
    cudaMemcpyAsync(d, pinned, n * sizeof(float), cudaMemcpyHostToDevice, s1);
    for (int i = 0; i < n; i++) pinned[i] = 8.0f;  // the planted bug: the copy may not have read it yet
    cudaStreamSynchronize(s1);
    if (deferred) check(to_host(d, 1)[0] == 8.0f, "a pinned source changed before the stream ran: the copy sees the change");
    // A pageable source is staged at the call: the host may reuse it at once.
    std::vector<float> pageable(n, 5.0f);
    cudaMemcpyAsync(d, pageable.data(), n * sizeof(float), cudaMemcpyHostToDevice, s1);
    std::fill(pageable.begin(), pageable.end(), 6.0f);
    cudaStreamSynchronize(s1);
    check(to_host(d, 1)[0] == 5.0f, "a pageable source is read at the call, as the driver stages it");
    cudaFreeHost(pinned);
    cudaEventDestroy(written);
    cudaEventDestroy(start);
    cudaEventDestroy(end);
    cudaFreeAsync(d2, s2);
    check(cudaStreamDestroy(s1) == cudaSuccess && cudaStreamDestroy(s2) == cudaSuccess, "streams destroyed after their work");
    cudaFree(d);
    cudaGetLastError();
  }
  {  // last: a deadlock leaves the sticky error of a faulting kernel, as on a GPU
    float* out = device_array<float>(64);
    QLORA_LAUNCH(deadlock_kernel, 1, 64, 0, nullptr)(out);
    check(cudaDeviceSynchronize() == cudaErrorLaunchFailure && cudaGetLastError() == cudaErrorLaunchFailure,
          "a barrier that cannot complete is reported (cudaErrorLaunchFailure, sticky)");
  }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
