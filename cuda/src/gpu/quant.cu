// gpu/quant.cu: blockwise 4-bit quantization (NF4, FP4, Int4) and double quantization of the
// constants, on the GPU. Mirrors cpu/quant.cpp and follows the same arithmetic, so that the results
// agree bit for bit: IEEE division for 1/amax, and every product and sum rounded on its own
// (__fmul_rn, __fadd_rn, __fsub_rn: nvcc would otherwise contract a * b + c into an FMA).
#include <cmath>
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

// ---- shared pieces ------------------------------------------------------------------------

// The part of a Quant4Table the quantize kernel needs, passed by value. FP4's magnitude -> code map
// is packed 4 bits per entry, so a lane looks it up in a register rather than in memory.
struct Quant4Params {
  float threshold[15];
  int32_t num_thresholds;    // 15 (monotone) or 7 (sign-magnitude)
  int32_t sign_magnitude;    // 1 for FP4
  uint32_t magnitude_codes;  // magnitude_code[m] = (magnitude_codes >> 4m) & 15
};

Quant4Params quant4_params(const Quant4Table& t) {
  Quant4Params q;
  memcpy(q.threshold, t.threshold, sizeof q.threshold);
  q.num_thresholds = t.num_thresholds;
  q.sign_magnitude = t.sign_magnitude;
  q.magnitude_codes = 0;
  for (int m = 0; m < 8; m++) q.magnitude_codes |= (uint32_t)(t.magnitude_code[m] & 15) << (4 * m);
  return q;
}

// Code tables passed by value (kernel parameters), copied to shared memory by each thread block.
struct Codes256 {
  float v[256];
};
struct Midpoints255 {
  float v[255];
};

// Results the host reads back after a kernel. One call at a time uses them (g_scratch_mutex).
struct Scratch {
  unsigned long long first_bad;  // lowest index of a NaN or Inf seen; ~0 when none
  float offset;                  // double quantization: the mean of absmax
};
__device__ Scratch g_scratch;
std::mutex g_scratch_mutex;
constexpr unsigned long long kNone = ~0ull;

// Device address of g_scratch, with first_bad set to kNone (queued on the stream).
qlora_status scratch_reset(Scratch** dev, const char* what) {
  void* p = nullptr;
  qlora_status s = cuda_status(cudaGetSymbolAddress(&p, g_scratch), what);
  if (s == QLORA_OK) s = cuda_status(cudaMemsetAsync(p, 0xff, sizeof(Scratch), gpu_stream()), what);
  *dev = (Scratch*)p;
  return s;
}

// Waits for the queued work and copies g_scratch to the host.
qlora_status scratch_read(Scratch* host, const Scratch* dev, const char* what) {
  qlora_status s = cuda_status(cudaMemcpyAsync(host, dev, sizeof(Scratch), cudaMemcpyDeviceToHost, gpu_stream()), what);
  if (s == QLORA_OK) s = cuda_status(cudaStreamSynchronize(gpu_stream()), what);
  return s;
}

// ---- 4-bit quantization -------------------------------------------------------------------

// The code of one value, as cpu/quant.cpp: v = x * inv, then the number of thresholds strictly below
// v (monotone types), or below |v| mapped through magnitude_code, plus 8 if the original x < 0 (FP4).
__device__ __forceinline__ uint32_t quant4_code(float x, float inv, const Quant4Params& q) {
  const float v = __fmul_rn(x, inv);
  uint32_t count = 0;
  if (q.sign_magnitude) {
    const float a = fabsf(v);
#pragma unroll
    for (int k = 0; k < 15; k++) count += (uint32_t)(k < q.num_thresholds && a > q.threshold[k]);
    return ((q.magnitude_codes >> (4 * count)) & 15u) | (x < 0.0f ? 8u : 0u);
  }
#pragma unroll
  for (int k = 0; k < 15; k++) count += (uint32_t)(v > q.threshold[k]);
  return count;
}

// One warp per quantization block, each lane taking pairs of values.
// Pass 1: absmax = max |x| over the warp, as float bits (like the CPU's load_block); a result
//         >= 0x7f800000 means NaN/Inf: the block is skipped and its bad indices go to first_bad.
// Pass 2: codes of each pair (reloaded, from cache), the first value in the high nibble; the pad
//         nibble of an odd final value is 0.
__global__ void quantize_4bit_kernel(const void* x, int32_t dtype, uint64_t n, uint32_t block_shift,
                                     Quant4Params q, uint8_t* packed, float* absmax,
                                     unsigned long long* first_bad) {
  const uint64_t blocksize = 1ull << block_shift;
  const uint64_t blocks = (n + blocksize - 1) >> block_shift;
  const uint64_t lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t b = global_thread() / 32; b < blocks; b += warps) {  // uniform across the warp
    const uint64_t start = b << block_shift;
    const uint64_t len = min(blocksize, n - start);
    uint32_t amax_bits = 0;
    for (uint64_t j = 2 * lane; j < len; j += 64) {
      for (uint64_t k = j; k < j + 2 && k < len; k++) {
        uint32_t a = float_bits(load_float(x, dtype, start + k)) & 0x7fffffffu;
        if (a >= 0x7f800000u) atomicMin(first_bad, (unsigned long long)(start + k));
        amax_bits = a > amax_bits ? a : amax_bits;
      }
    }
    amax_bits = warp_max_u32(amax_bits);
    if (amax_bits >= 0x7f800000u) continue;
    const float amax = bits_float(amax_bits);
    const float inv = amax > 0.0f ? __fdiv_rn(1.0f, amax) : 0.0f;  // an all-zero block gets the zero code
    for (uint64_t j = 2 * lane; j < len; j += 64) {
      uint32_t hi = quant4_code(load_float(x, dtype, start + j), inv, q);
      uint32_t lo = j + 1 < len ? quant4_code(load_float(x, dtype, start + j + 1), inv, q) : 0u;
      packed[(start + j) / 2] = (uint8_t)((hi << 4) | lo);
    }
    if (lane == 0) absmax[b] = amax;
  }
}

// ---- 4-bit dequantization -----------------------------------------------------------------

// Stores 32 consecutive values at out[first..] with 16-byte stores (out + first is 16-byte aligned).
__device__ __forceinline__ void store32(void* out, int32_t dtype, uint64_t first, const float* v) {
  if (dtype == QLORA_F32) {
    float4* o = (float4*)((float*)out + first);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
    return;
  }
  uint4* o = (uint4*)((uint16_t*)out + first);
  const bool bf16 = dtype == QLORA_BF16;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    uint32_t w[4];
#pragma unroll
    for (int m = 0; m < 4; m++) {
      float a = v[8 * k + 2 * m], b = v[8 * k + 2 * m + 1];
      uint32_t ha = bf16 ? float_to_bf16(a) : float_to_f16(a);
      uint32_t hb = bf16 ? float_to_bf16(b) : float_to_f16(b);
      w[m] = ha | (hb << 16);  // little endian: the first value in the low half
    }
    o[k] = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// One thread per 32 values out[i0..i0 + 32), walked warp by warp (the decoder is warp-collective): a
// quantization block holds a multiple of 32 values, so a group has one scale, decoded once; then, for
// 16-byte aligned buffers (vectors), a full group is one 16-byte load of codes and 16-byte stores. The
// final partial group, and every group otherwise, go value by value.
__global__ void dequantize_4bit_kernel(Quant4 w, uint64_t count, void* out, int32_t dtype, bool vectors) {
  __shared__ float map[256];
  load_map(w, map);
  const float code = lane_code(w);
  const uint64_t groups = (count + 31) / 32, lane = threadIdx.x & 31;
  for (uint64_t g0 = global_thread() - lane; g0 < groups; g0 += grid_threads()) {  // uniform across the warp
    const uint64_t g = g0 + lane, i0 = 32 * g;
    const bool whole = vectors && i0 + 32 <= count;
    if (vectors) {
      const uint4 bytes = whole ? *(const uint4*)(w.packed + i0 / 2) : make_uint4(0, 0, 0, 0);
      const float scale = whole ? block_scale(w, map, i0 >> w.block_shift) : 0.0f;
      const uint32_t words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
      float v[32];
#pragma unroll
      for (int q = 0; q < 4; q++) decode8(words[q], scale, code, v + 8 * q);
      if (whole) store32(out, dtype, i0, v);
    }
    const bool slow = g < groups && !whole;
    if (__any_sync(0xffffffffu, slow))
      for (uint64_t i = i0; i < i0 + 32; i++) {
        const float v = decode1(w, map, code, i, slow && i < count);
        if (slow && i < count) store_float(out, dtype, i, v);
      }
  }
}

// ---- double quantization ------------------------------------------------------------------

// The fixed-order mean of codes.h, step 1: the sum of each chunk of kMeanChunk values in double,
// value by value, one thread per chunk. Also records the first non-finite index.
__global__ void chunk_sums_kernel(const float* x, uint64_t n, double* partial, unsigned long long* first_bad) {
  const uint64_t chunk = kMeanChunk;
  const uint64_t chunks = (n + chunk - 1) / chunk;
  for (uint64_t c = global_thread(); c < chunks; c += grid_threads()) {
    const uint64_t begin = c * chunk, end = min(n, begin + chunk);
    double sum = 0.0;
    unsigned long long bad = kNone;
    for (uint64_t i = begin; i < end; i++) {
      float v = x[i];
      if (!isfinite(v) && bad == kNone) bad = i;
      sum = __dadd_rn(sum, (double)v);
    }
    partial[c] = sum;
    if (bad != kNone) atomicMin(first_bad, bad);
  }
}

// Step 2, one thread: the chunk sums added in order, divided by n, rounded to float.
__global__ void mean_kernel(const double* partial, uint64_t chunks, uint64_t n, float* mean) {
  double total = 0.0;
  for (uint64_t c = 0; c < chunks; c++) total = __dadd_rn(total, partial[c]);
  *mean = __double2float_rn(__ddiv_rn(total, (double)n));
}

// std::lower_bound over 255 sorted midpoints, step for step: the number of midpoints < v.
__device__ __forceinline__ uint32_t lower_bound_255(const float* midpoint, float v) {
  uint32_t first = 0, count = 255;
  while (count > 0) {
    uint32_t step = count / 2;
    if (midpoint[first + step] < v) {
      first += step + 1;
      count -= step + 1;
    } else {
      count = step;
    }
  }
  return first;
}

// One warp per nested block: amax = max |absmax[i] - offset| (non-negative floats, so the max of
// their bits is the max of the values), then code[i] = lower_bound(midpoints, (absmax[i] - offset) * inv).
__global__ void double_quantize_kernel(const float* absmax, uint64_t n, uint32_t block_shift, float offset,
                                       Midpoints255 midpoints, uint8_t* codes, float* nested_absmax) {
  __shared__ float midpoint[255];
  for (uint32_t k = threadIdx.x; k < 255; k += blockDim.x) midpoint[k] = midpoints.v[k];
  __syncthreads();
  const uint64_t blocksize = 1ull << block_shift;
  const uint64_t blocks = (n + blocksize - 1) >> block_shift;
  const uint64_t lane = threadIdx.x & 31;
  const uint64_t warps = grid_threads() / 32;
  for (uint64_t b = global_thread() / 32; b < blocks; b += warps) {  // uniform across the warp
    const uint64_t start = b << block_shift, end = min(n, start + blocksize);
    uint32_t amax_bits = 0;
    for (uint64_t i = start + lane; i < end; i += 32) {
      uint32_t a = float_bits(fabsf(__fsub_rn(absmax[i], offset)));
      amax_bits = a > amax_bits ? a : amax_bits;
    }
    const float amax = bits_float(warp_max_u32(amax_bits));
    const float inv = amax > 0.0f ? __fdiv_rn(1.0f, amax) : 0.0f;
    for (uint64_t i = start + lane; i < end; i += 32) {
      float v = __fmul_rn(__fsub_rn(absmax[i], offset), inv);
      codes[i] = (uint8_t)lower_bound_255(midpoint, v);
    }
    if (lane == 0) nested_absmax[b] = amax;
  }
}

// One thread per value: absmax[i] = map[codes[i]] * nested_absmax[i / blocksize] + offset.
__global__ void double_dequantize_kernel(const uint8_t* codes, const float* nested_absmax, float offset,
                                         uint64_t n, uint32_t block_shift, Codes256 map, float* absmax) {
  __shared__ float code[256];
  for (uint32_t k = threadIdx.x; k < 256; k += blockDim.x) code[k] = map.v[k];
  __syncthreads();
  for (uint64_t i = global_thread(); i < n; i += grid_threads())
    absmax[i] = __fadd_rn(__fmul_rn(code[codes[i]], nested_absmax[i >> block_shift]), offset);
}

}  // namespace

}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_quantize_4bit(const void* x, int32_t x_dtype, uint64_t n, int32_t quant_type,
                                           uint64_t blocksize, uint8_t* packed, float* absmax) {
  qlora_status s = check_quantize_4bit(x, x_dtype, n, quant_type, blocksize, packed, absmax);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const char* what = "quantize to 4 bits";
  std::lock_guard<std::mutex> lock(g_scratch_mutex);
  Scratch* dev = nullptr;
  if ((s = scratch_reset(&dev, what)) != QLORA_OK) return s;
  const uint64_t blocks = (n + blocksize - 1) / blocksize;
  QLORA_LAUNCH(quantize_4bit_kernel, grid_for(32 * blocks), kThreads, 0, gpu_stream())(
      x, x_dtype, n, log2_pow2(blocksize), quant4_params(*quant4_table(quant_type)), packed, absmax,
      &dev->first_bad);
  if ((s = launch_status(what)) != QLORA_OK) return s;
  // The NaN/Inf check needs the result: quantization waits for its kernel (it is not a hot path).
  Scratch host;
  if ((s = scratch_read(&host, dev, what)) != QLORA_OK) return s;
  if (host.first_bad == kNone) return QLORA_OK;
  const uint64_t i = host.first_bad, esize = dtype_size(x_dtype);
  uint32_t raw = 0;  // x[i], to tell NaN from Inf
  s = cuda_status(cudaMemcpy(&raw, (const char*)x + i * esize, esize, cudaMemcpyDeviceToHost), what);
  if (s != QLORA_OK) return s;
  return fail(QLORA_ERR_NON_FINITE, "Cannot quantize to 4 bits: x[%llu] is %s (NaN or Inf)", (unsigned long long)i,
              std::isnan(load_float(&raw, x_dtype, 0)) ? "NaN" : "Inf");
}

QLORA_API qlora_status qlora_dequantize_4bit(const qlora_weight4* w, uint64_t n, void* out, int32_t out_dtype) {
  qlora_status s = check_dequantize_4bit(w, n, out, out_dtype);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const bool vectors = (uintptr_t)w->packed % 16 == 0 && (uintptr_t)out % 16 == 0;
  QLORA_LAUNCH(dequantize_4bit_kernel, grid_for((n + 31) / 32), kThreads, 0, gpu_stream())(quant4(*w), n, out,
                                                                                           out_dtype, vectors);
  return launch_status("dequantize 4-bit values");
}

QLORA_API qlora_status qlora_double_quantize(const float* absmax, uint64_t n, uint64_t nested_blocksize,
                                             uint8_t* codes, float* nested_absmax, float* offset_out) {
  qlora_status s = check_double_quantize(absmax, n, nested_blocksize, codes, nested_absmax, offset_out);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  const char* what = "double-quantize constants";
  std::lock_guard<std::mutex> lock(g_scratch_mutex);
  Scratch* dev = nullptr;
  if ((s = scratch_reset(&dev, what)) != QLORA_OK) return s;
  // The offset (mean) and the finiteness check, read back before any output is written.
  const uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  double* partial = nullptr;  // chunk sums: n / 512 bytes of stream-ordered scratch
  s = scratch_malloc((void**)&partial, chunks * sizeof(double), what);
  if (s != QLORA_OK) return s;
  QLORA_LAUNCH(chunk_sums_kernel, grid_for(chunks), kThreads, 0, gpu_stream())(absmax, n, partial, &dev->first_bad);
  s = launch_status(what);
  if (s == QLORA_OK) {
    QLORA_LAUNCH(mean_kernel, 1, 1, 0, gpu_stream())(partial, chunks, n, &dev->offset);
    s = launch_status(what);
  }
  qlora_status freed = scratch_free(partial, chunks * sizeof(double), what);
  if (s == QLORA_OK) s = freed;
  Scratch host;
  if (s == QLORA_OK) s = scratch_read(&host, dev, what);
  if (s != QLORA_OK) return s;
  if (host.first_bad != kNone)
    return fail(QLORA_ERR_NON_FINITE, "Cannot double-quantize constants: absmax[%llu] is not finite",
                (unsigned long long)host.first_bad);
  Midpoints255 midpoints;
  memcpy(midpoints.v, dynamic_map().midpoint, sizeof midpoints.v);
  const uint64_t blocks = (n + nested_blocksize - 1) / nested_blocksize;
  QLORA_LAUNCH(double_quantize_kernel, grid_for(32 * blocks), kThreads, 0, gpu_stream())(
      absmax, n, log2_pow2(nested_blocksize), host.offset, midpoints, codes, nested_absmax);
  if ((s = launch_status(what)) != QLORA_OK) return s;
  *offset_out = host.offset;
  return QLORA_OK;
}

QLORA_API qlora_status qlora_double_dequantize(const uint8_t* codes, const float* nested_absmax, float offset,
                                               uint64_t n, uint64_t nested_blocksize, float* absmax) {
  qlora_status s = check_double_dequantize(codes, nested_absmax, offset, n, nested_blocksize, absmax);
  if (s != QLORA_OK) return s;
  if ((s = gpu_ready()) != QLORA_OK) return s;
  Codes256 map;
  memcpy(map.v, dynamic_map().code, sizeof map.v);
  QLORA_LAUNCH(double_dequantize_kernel, grid_for(n), kThreads, 0, gpu_stream())(codes, nested_absmax, offset, n,
                                                                       log2_pow2(nested_blocksize), map, absmax);
  return launch_status("double-dequantize constants");
}

}  // extern "C"
