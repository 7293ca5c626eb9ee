// gpu/memory.cu: the CUDA backend's device state (lazy init, one stream), device memory counted by
// the ledger, the pinned host pool, copies and memset. Mirrors cpu/memory.cpp function for function.
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "../common/ledger.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "gpu.cuh"

namespace qlora {
namespace {

// Set once by init_device(); read-only afterwards.
struct GpuState {
  qlora_status status = QLORA_ERR_NO_DEVICE;
  char message[512] = "";  // why the device cannot be used (status != QLORA_OK)
  cudaStream_t stream = nullptr;
};

GpuState g_gpu;
std::once_flag g_gpu_once;

void set_no_device(const char* call, cudaError_t e) {
  snprintf(g_gpu.message, sizeof g_gpu.message,
           "No usable CUDA device: %s failed: %s (%s); is an NVIDIA driver installed and a GPU visible?",
           call, cudaGetErrorName(e), cudaGetErrorString(e));
  cudaGetLastError();  // clears the runtime's last error
}

// Device 0, one stream; compute capability 8.0+ (the build has sm_80, sm_90 and compute_90 PTX).
void init_device() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return set_no_device("cudaGetDeviceCount", e);
  if (count == 0) {
    snprintf(g_gpu.message, sizeof g_gpu.message, "No usable CUDA device: the driver reports 0 GPUs");
    return;
  }
  if ((e = cudaSetDevice(0)) != cudaSuccess) return set_no_device("cudaSetDevice(0)", e);
  int major = 0, minor = 0;
  if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0)) != cudaSuccess ||
      (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0)) != cudaSuccess)
    return set_no_device("cudaDeviceGetAttribute", e);
  if (major < 8) {
    snprintf(g_gpu.message, sizeof g_gpu.message,
             "No usable CUDA device: GPU 0 has compute capability %d.%d, this build needs 8.0 or newer", major,
             minor);
    return;
  }
  cudaStream_t stream = nullptr;
  if ((e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess)
    return set_no_device("cudaStreamCreate", e);
  g_gpu.stream = stream;  // never destroyed: work may be queued until the process exits
  g_gpu.status = QLORA_OK;
}

// Initialises once; true when the device is usable. Sets no error message.
bool gpu_usable() {
  std::call_once(g_gpu_once, init_device);
  return g_gpu.status == QLORA_OK;
}

}  // namespace

qlora_status gpu_ready() {
  if (gpu_usable()) return QLORA_OK;
  return fail(QLORA_ERR_NO_DEVICE, "%s", g_gpu.message);
}

cudaStream_t gpu_stream() { return g_gpu.stream; }

qlora_status cuda_status(cudaError_t e, const char* what, uint64_t bytes, int32_t category) {
  if (e == cudaSuccess) return QLORA_OK;
  cudaGetLastError();  // a handled error must not resurface at the next launch check
  char why[256];
  snprintf(why, sizeof why, "the CUDA driver refused (%s: %s)", cudaGetErrorName(e), cudaGetErrorString(e));
  if (e == cudaErrorMemoryAllocation) return ledger_oom(bytes, category, why);
  return fail(QLORA_ERR_INTERNAL, "Cannot %s: CUDA error %s (%s)", what, cudaGetErrorName(e),
              cudaGetErrorString(e));
}

qlora_status scratch_malloc(void** p, uint64_t bytes, const char* what) {
  *p = nullptr;
  qlora_status s = ledger_reserve(bytes, QLORA_CAT_WORKSPACE);
  if (s != QLORA_OK) {
    const std::string why = qlora_last_error();  // as the CPU's Workspace says it
    return fail(s, "Cannot %s: no room for its scratch: %s", what, why.c_str());
  }
  s = cuda_status(cudaMallocAsync(p, bytes, gpu_stream()), what, bytes, QLORA_CAT_WORKSPACE);
  if (s != QLORA_OK) {
    *p = nullptr;
    ledger_unreserve(bytes, QLORA_CAT_WORKSPACE);
  }
  return s;
}

qlora_status scratch_free(void* p, uint64_t bytes, const char* what) {
  if (p == nullptr) return QLORA_OK;
  const qlora_status s = cuda_status(cudaFreeAsync(p, gpu_stream()), what);
  ledger_unreserve(bytes, QLORA_CAT_WORKSPACE);
  return s;
}

void backend_device_memory(uint64_t* free_bytes, uint64_t* total_bytes) {
  *free_bytes = 0;
  *total_bytes = 0;
  if (!gpu_usable()) return;
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  *free_bytes = f;
  *total_bytes = t;
}

uint64_t backend_process_used() {
  uint64_t free_bytes = 0, total_bytes = 0;
  backend_device_memory(&free_bytes, &total_bytes);
  return total_bytes - free_bytes;
}

}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API const char* qlora_backend_name(void) { return "cuda"; }

QLORA_API qlora_status qlora_init(void) { return gpu_ready(); }

QLORA_API qlora_status qlora_device_name(char* buf, uint64_t buf_len) {
  QLORA_CHECK_PTR(buf, "describe the device");
  if (buf_len == 0) return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot describe the device: buf_len is 0");
  qlora_status s = gpu_ready();
  if (s != QLORA_OK) return s;
  // Only fields and attributes that CUDA 13 still has (no clockRate and friends).
  cudaDeviceProp prop;
  int sms = 0, major = 0, minor = 0;
  s = cuda_status(cudaGetDeviceProperties(&prop, 0), "describe the device");
  if (s == QLORA_OK) s = cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "describe the device");
  if (s == QLORA_OK) s = cuda_status(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), "describe the device");
  if (s == QLORA_OK) s = cuda_status(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0), "describe the device");
  if (s != QLORA_OK) return s;
  char mem[32];
  snprintf(buf, buf_len, "%s (%s, %d SMs, compute capability %d.%d, GEMM: %s)", prop.name,
           format_bytes((uint64_t)prop.totalGlobalMem, mem, sizeof mem), sms, major, minor, gpu_gemm_library());
  return QLORA_OK;
}

QLORA_API qlora_status qlora_synchronize(void) {
  qlora_status s = gpu_ready();
  if (s != QLORA_OK) return s;
  return cuda_status(cudaStreamSynchronize(gpu_stream()), "synchronize the CUDA stream");
}

QLORA_API qlora_status qlora_malloc(void** out, uint64_t bytes, int32_t category) {
  qlora_status s = check_malloc(out, bytes, category);
  if (s != QLORA_OK) return s;
  *out = nullptr;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  if ((s = ledger_reserve(bytes, category)) != QLORA_OK) return s;
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);  // 256-byte aligned, as the ledger snapshot says
  if (e != cudaSuccess) {
    ledger_unreserve(bytes, category);
    return cuda_status(e, "allocate device memory", bytes, category);  // out of memory: ledger_oom
  }
  ledger_register(p, bytes, category);
  *out = p;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_free(void* dptr) {
  if (dptr == nullptr) return QLORA_OK;
  qlora_status s = gpu_ready();
  if (s != QLORA_OK) return s;
  if (!ledger_unregister(dptr))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot free %p: not a live allocation of this library", dptr);
  // Kernels still queued may use the memory: let them finish first.
  s = cuda_status(cudaStreamSynchronize(gpu_stream()), "free device memory");
  if (s != QLORA_OK) return s;
  return cuda_status(cudaFree(dptr), "free device memory");
}

QLORA_API qlora_status qlora_host_malloc(void** out, uint64_t bytes) {
  qlora_status s = ledger_check_host_request(out, bytes);
  if (s != QLORA_OK) return s;
  *out = nullptr;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  void* p = nullptr;
  // Pinned (page-locked): copies to and from it are DMA transfers that can run asynchronously.
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();  // handled here: must not resurface at the next launch check
    char why[256];
    snprintf(why, sizeof why, "the CUDA driver refused to pin it (%s: %s)", cudaGetErrorName(e),
             cudaGetErrorString(e));
    if (e == cudaErrorMemoryAllocation) return ledger_host_oom(bytes, why);
    return fail(QLORA_ERR_INTERNAL, "Cannot allocate host memory: CUDA error %s (%s)", cudaGetErrorName(e),
                cudaGetErrorString(e));
  }
  memset(p, 0, bytes);  // host memory: the CPU fills it
  ledger_host_register(p, bytes);
  *out = p;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_host_free(void* hptr) {
  if (hptr == nullptr) return QLORA_OK;
  if (!ledger_host_unregister(hptr))
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot free host memory %p: not a live qlora_host_malloc allocation",
                hptr);
  qlora_status s = gpu_ready();  // a registered pointer means the device was ready when it was allocated
  if (s != QLORA_OK) return s;
  // Copies still queued may read or write the memory: let them finish first.
  s = cuda_status(cudaStreamSynchronize(gpu_stream()), "free host memory");
  if (s != QLORA_OK) return s;
  return cuda_status(cudaFreeHost(hptr), "free host memory");
}

QLORA_API qlora_status qlora_memcpy(void* dst, const void* src, uint64_t bytes, int32_t kind) {
  QLORA_CHECK_PTR(dst, "copy memory");
  QLORA_CHECK_PTR(src, "copy memory");
  if (kind < QLORA_HOST_TO_DEVICE || kind > QLORA_DEVICE_TO_DEVICE)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot copy memory: kind %d is not 0, 1 or 2", kind);
  qlora_status s = gpu_ready();
  if (s != QLORA_OK || bytes == 0) return s;
  const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
  s = cuda_status(cudaMemcpyAsync(dst, src, bytes, kinds[kind], gpu_stream()), "copy memory");
  // Host buffers are the caller's (pageable) or the host pool's (pinned): either way a copy from or to
  // one is complete on return.
  if (s == QLORA_OK && kind != QLORA_DEVICE_TO_DEVICE)
    s = cuda_status(cudaStreamSynchronize(gpu_stream()), "copy memory");
  return s;
}

QLORA_API qlora_status qlora_memset(void* dptr, int32_t value, uint64_t bytes) {
  QLORA_CHECK_PTR(dptr, "set memory");
  if (value < 0 || value > 255)
    return fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot set memory: value %d is not a byte", value);
  qlora_status s = gpu_ready();
  if (s != QLORA_OK || bytes == 0) return s;
  return cuda_status(cudaMemsetAsync(dptr, value, bytes, gpu_stream()), "set memory");
}

}  // extern "C"
