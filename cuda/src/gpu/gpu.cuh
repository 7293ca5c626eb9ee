// gpu.cuh: helpers shared by the CUDA backend's files (the mirror of cpu/cpu.h). memory.cu owns the
// device state (initialised once, on first use: device 0 and one stream); quant.cu, ops.cu and gemm.cu call
// gpu_ready() before touching the device and queue all their work on gpu_stream().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>
#include <utility>

#include "qlora.h"

namespace qlora {

// Initialises the device once. QLORA_OK, or QLORA_ERR_NO_DEVICE with the reason (driver, GPU,
// compute capability) as this thread's last error.
qlora_status gpu_ready();

// The backend's one stream: every kernel and copy runs on it, in order.
cudaStream_t gpu_stream();

// QLORA_OK for cudaSuccess. Otherwise sets "Cannot <what>: CUDA error <name> (<string>)" and returns
// QLORA_ERR_INTERNAL, or QLORA_ERR_OUT_OF_MEMORY through the ledger for cudaErrorMemoryAllocation
// (bytes and category name the request). The runtime's last error is cleared, so that a handled
// failure is not reported again by the next launch check.
qlora_status cuda_status(cudaError_t e, const char* what, uint64_t bytes = 0,
                         int32_t category = QLORA_CAT_WORKSPACE);

// Stream-ordered scratch of one call (cudaMallocAsync on gpu_stream()), counted by the ledger under
// the workspace category, against the budget, from scratch_malloc until scratch_free queues its release
// (later work on the stream reuses it in stream order). Over the budget: QLORA_ERR_OUT_OF_MEMORY with the
// ledger's message, nothing allocated. scratch_free takes the bytes given to scratch_malloc.
qlora_status scratch_malloc(void** p, uint64_t bytes, const char* what);
qlora_status scratch_free(void* p, uint64_t bytes, const char* what);

// Checks the kernel launch just made (bad configuration, no kernel image for this GPU, ...).
inline qlora_status launch_status(const char* what) { return cuda_status(cudaGetLastError(), what); }

// Which path qlora_gemm takes in this process, for descriptions and logs: "cuBLAS (libcublas.so.13)"
// when cuBLAS could be loaded at run time, else "built-in kernels (why)". Decided on the first call
// (gemm.cu); call it only after gpu_ready() succeeded. QLORA_GEMM=builtin forces the built-in kernels.
const char* gpu_gemm_library();

// Kernel launches, written once for nvcc and for the emulator (cuda/src/emu, QLORA_EMU):
//   QLORA_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...)
// is kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc, and a run of every block on the
// CPU under the emulator. Errors go to cudaGetLastError() in both (launch_status reads them). A kernel
// named with template arguments goes in parentheses: QLORA_LAUNCH((f<1, true>), ...).
template <typename... Params>
struct KernelLauncher {
  void (*kernel)(Params...);
  const char* name;
  dim3 grid, block;
  size_t shared;
  cudaStream_t stream;
  template <typename... Args>
  void operator()(Args&&... args) const {
#if defined(QLORA_EMU)
    using Call = emu::KernelCall<Params...>;
    const Call* call = new Call{kernel, std::tuple<Params...>(std::forward<Args>(args)...)};
    emu::launch({name, (const void*)kernel, grid, block, shared, stream, &Call::invoke, call, &Call::destroy,
                 &Call::bad_pointer});
#else
    kernel<<<grid, block, shared, stream>>>(std::forward<Args>(args)...);
#endif
  }
};
template <typename... Params>
KernelLauncher<Params...> launch_kernel(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block,
                                        size_t shared, cudaStream_t stream) {
  return {kernel, name, grid, block, shared, stream};
}
#define QLORA_LAUNCH(kernel, grid, block, shared, stream) \
  ::qlora::launch_kernel(kernel, #kernel, grid, block, shared, stream)

// Dynamic shared memory (the size given at the launch), declared once for nvcc and the emulator.
#if defined(QLORA_EMU)
#define QLORA_EXTERN_SHARED(type, name) type* const name = (type*)::emu::dynamic_shared()
#else
#define QLORA_EXTERN_SHARED(type, name) extern __shared__ type name[]
#endif

// Launch sizes: every kernel uses kThreads threads per block and loops grid-stride, so the grid is
// capped at kMaxGrid blocks (already more threads than any GPU runs at once).
constexpr unsigned kThreads = 256;
constexpr uint64_t kMaxGrid = 1ull << 20;

inline unsigned grid_for(uint64_t items, unsigned items_per_block = kThreads) {
  uint64_t blocks = (items + items_per_block - 1) / items_per_block;
  if (blocks == 0) blocks = 1;
  return (unsigned)(blocks < kMaxGrid ? blocks : kMaxGrid);
}

// log2 of a power of two (block sizes), so that kernels shift instead of dividing 64-bit integers.
inline uint32_t log2_pow2(uint64_t v) { return (uint32_t)__builtin_ctzll(v); }

// Index of this thread in the grid, and the grid's thread count (grid-stride loops).
__device__ __forceinline__ uint64_t global_thread() {
  return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ uint64_t grid_threads() { return (uint64_t)gridDim.x * blockDim.x; }

// Max over the 32 lanes of a warp; every lane gets the result. All lanes must call it.
__device__ __forceinline__ uint32_t warp_max_u32(uint32_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    uint32_t other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

}  // namespace qlora
