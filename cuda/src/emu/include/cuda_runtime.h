// cuda_runtime.h of the CUDA emulator: the device language and the runtime API that cuda/src/gpu/*.cu
// use, implemented on the CPU so that g++ compiles the same sources into build/libqlora_cuda_emu.so.
//
//   - A kernel launch runs every block of the grid (blocks in parallel on the host's cores); the threads
//     of a block run as fibers (runtime.cpp), switching only at barriers, so __syncthreads and the warp
//     collectives (shuffles, ballot, WMMA) behave as on a GPU: a thread waits until every thread that
//     must arrive has arrived, and a barrier that can never complete is reported as the deadlock it is.
//   - __shared__ variables are thread_local: one copy per host thread, which runs one block at a time.
//     Dynamic shared memory (QLORA_EXTERN_SHARED in gpu.cuh) is allocated per block at the launch's size.
//   - Device memory is host memory registered with the runtime (heap, or with deferred streams one reserved
//     arena), so copies check the kind and the bounds of each pointer as a driver does, and
//     AddressSanitizer sees out-of-bounds kernel accesses.
//   - Streams are asynchronous, as on a GPU: each stream has a worker thread that runs its kernels, copies
//     and host functions in order, concurrently with the host and with other streams, and the calls that
//     wait (cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize, cudaMemcpy, cudaFree)
//     wait for real. QLORA_EMU_STREAMS=deferred holds each stream's work until the host waits for it, so
//     a missing synchronization always shows (the host reads what the copy has not written yet), and keeps
//     device memory shut (PROT_NONE) whenever no wait is in progress, so a host that dereferences a device
//     pointer stops there; QLORA_EMU_STREAMS=sync runs everything before the call returns.
//   - Kernel arguments that are pointers must point into device memory (or pinned host memory, which a
//     GPU maps): a host pointer or a freed device buffer passed to a kernel stops the launch with the
//     kernel and the argument named, where a GPU would fault with cudaErrorIllegalAddress.
// What it cannot check: timing, bandwidth, occupancy, register limits, and driver-specific behaviour.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- the device language -------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {

// The thread being run on this host thread: its index, its block, and the launch.
struct ThreadView {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
ThreadView& view();  // the current emulated thread (only inside a kernel)

void syncthreads();
// The warp collectives: every lane named in mask arrives with a 64-bit value; each gets all 32 values,
// valid until the lane enters its next collective (read them before that).
const uint64_t* warp_exchange(unsigned mask, uint64_t value);
// Pointers instead of values (WMMA fragments), same rules.
void* const* warp_exchange_ptr(unsigned mask, void* value);
unsigned lane_id();
void* dynamic_shared();
[[noreturn]] void kernel_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 64 bits");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace emu

#define threadIdx (::emu::view().thread_idx)
#define blockIdx (::emu::view().block_idx)
#define blockDim (::emu::view().block_dim)
#define gridDim (::emu::view().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_exchange(mask, 0); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const unsigned lane = emu::lane_id();
  const uint64_t* all = emu::warp_exchange(mask, emu::to_bits(v));
  return emu::from_bits<T>(all[(lane & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1))]);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const unsigned lane = emu::lane_id(), src = lane ^ (unsigned)lane_mask;
  const uint64_t* all = emu::warp_exchange(mask, emu::to_bits(v));
  // A source outside the lane's segment of width lanes gives the lane's own value, as on a GPU.
  return emu::from_bits<T>(all[(src / width == lane / width) ? src : lane]);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned lane = emu::lane_id(), src = lane + delta;
  const uint64_t* all = emu::warp_exchange(mask, emu::to_bits(v));
  return emu::from_bits<T>(all[(src / width == lane / width) ? src : lane]);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned lane = emu::lane_id();
  const uint64_t* all = emu::warp_exchange(mask, emu::to_bits(v));
  return emu::from_bits<T>(all[(lane % width >= delta) ? lane - delta : lane]);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* all = emu::warp_exchange(mask, predicate != 0);
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; l++)
    if ((mask >> l) & 1u) bits |= (all[l] ? 1u : 0u) << l;
  return bits;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

// Atomics: real host atomics (blocks run in parallel on the host's cores). Each returns the old value.
template <typename T>
inline T atomicAdd(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, (T)(old + v), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v > old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <typename T>
inline T atomicCAS(T* p, T expected, T desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

// Intrinsics with explicit rounding: the host's IEEE operations, each rounded on its own as the _rn
// variants promise, even where the emulator is built with contraction on (-ffp-contract=fast, the
// contraction build of emu-check): an empty asm makes each operand and result opaque, so the compiler
// can never fuse a product into a neighbouring sum.
template <typename T>
inline T opaque(T v) {
#if defined(__x86_64__)
  asm("" : "+x"(v));
#else
  asm("" : "+r"(v));
#endif
  return v;
}
inline float __fmul_rn(float a, float b) { return opaque(opaque(a) * opaque(b)); }
inline float __fadd_rn(float a, float b) { return opaque(opaque(a) + opaque(b)); }
inline float __fsub_rn(float a, float b) { return opaque(opaque(a) - opaque(b)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }  // one rounding, as on a GPU
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return opaque(opaque(a) + opaque(b)); }
inline double __dmul_rn(double a, double b) { return opaque(opaque(a) * opaque(b)); }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double a) { return (float)a; }
inline float __int_as_float(int v) { return emu::from_bits<float>((uint32_t)v); }
inline int __float_as_int(float v) { return (int)(uint32_t)emu::to_bits(v); }
using std::fmaf;
using std::isfinite;
using std::isinf;
using std::isnan;

// CUDA's min and max overloads for integers of one type (device code calls them unqualified).
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

// ---- the runtime API -----------------------------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidSymbol = 13,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
typedef void (*cudaHostFn_t)(void* user_data);
// The first member of every emulated stream (runtime.cpp): the reference cuBLAS (emu/cublas.cpp), a
// library of its own that does not link the runtime, queues its work on the stream it is given through it.
struct CUstream_st {
  cudaError_t (*launch_host_func)(cudaStream_t stream, cudaHostFn_t fn, void* user_data);
};
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaHostAllocDefault = 0;
constexpr unsigned cudaEventDefault = 0;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int warpSize;
  int maxThreadsPerBlock;
  int multiProcessorCount;
  int major, minor;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceSynchronize();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();

cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);

namespace emu {
cudaError_t get_symbol_address(void** p, const void* symbol, size_t bytes);
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
// True when [p, p + bytes) lies inside one live device allocation (kernels and libraries check pointers).
bool is_device_range(const void* p, size_t bytes);
// True when a kernel may dereference p: inside (or one past the end of) a live device allocation, a
// __device__ variable or pinned host memory.
bool is_kernel_pointer(const void* p);
// A stream handle the runtime made (or null, the default stream).
cudaError_t check_stream(cudaStream_t stream);

// One kernel launch, type-erased: run(invoke, call) runs invoke(call) once per thread of the grid. The
// launch owns `call` (the kernel's arguments, copied as a GPU copies them at the launch) and frees it with
// destroy once the kernel has run on its stream; bad_pointer gives the index of the first pointer argument
// a kernel may not dereference (is_kernel_pointer), or -1.
struct Launch {
  const char* name;
  const void* func;
  dim3 grid, block;
  size_t dynamic_shared;
  cudaStream_t stream;
  void (*invoke)(const void* call);
  const void* call;
  void (*destroy)(const void* call);
  int (*bad_pointer)(const void* call, const void** value);
};
cudaError_t launch(const Launch& l);

template <typename... Params>
struct KernelCall {
  void (*kernel)(Params...);
  std::tuple<Params...> args;
  static void invoke(const void* p) {
    const KernelCall* c = (const KernelCall*)p;
    std::apply(c->kernel, c->args);  // each thread gets its own copy of the parameters, as on a GPU
  }
  static void destroy(const void* p) { delete (const KernelCall*)p; }
  template <typename T>
  static const void* as_pointer(const T& v) {
    if constexpr (std::is_pointer<T>::value) return (const void*)v;
    return nullptr;
  }
  template <size_t... I>
  static int first_bad(const KernelCall* c, const void** value, std::index_sequence<I...>) {
    int bad = -1;
    auto check = [&](int i, const void* p) {
      if (bad < 0 && p != nullptr && !is_kernel_pointer(p)) {
        bad = i;
        *value = p;
      }
    };
    (check((int)I, as_pointer(std::get<I>(c->args))), ...);
    return bad;
  }
  static int bad_pointer(const void* p, const void** value) {
    return first_bad((const KernelCall*)p, value, std::index_sequence_for<Params...>{});
  }
};

// The order of the elements in WMMA fragments for this run (QLORA_EMU_ORDER): 0 forward, 1 reverse,
// 2 random with *seed.
int fragment_order(uint64_t* seed);

// The path of the reference cuBLAS built beside this library (libqlora_cublas_emu.so).
const char* cublas_library_path();
}  // namespace emu

template <typename T>
inline cudaError_t cudaGetSymbolAddress(void** p, const T& symbol) {
  return emu::get_symbol_address(p, &symbol, sizeof(T));
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return emu::func_set_attribute((const void*)func, attr, value);
}
inline cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  return emu::func_set_attribute(func, attr, value);
}
