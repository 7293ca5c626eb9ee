// bench.cpp: benchmarks of one qlora backend, through the C ABI of qlora.h only, each reported against a
// reference measured in the same run (absolute times on a shared machine say little):
//   - NF4 dequantize (to bf16 and to f32) and quantize (from bf16) bandwidth, as a ratio to the
//     bandwidth of a device-to-device copy (qlora_memcpy kind 2) of the same machine
//   - bf16 GEMM TFLOP/s (labelled with QLORA_GEMM: "default" is cuBLAS where the backend finds it,
//     "builtin" the built-in kernels); device-check.sh divides it by torch.matmul's figure
//   - NF4 GEMV (m = 1 and 4; plain and double-quantized constants; with a rank-8 LoRA bypass) against a
//     bf16 GEMV of the same shape, as a speedup, and its read bandwidth as a share of a device-to-device
//     copy's (the limit: a GEMV reads W once, so it can go no faster than W's bytes at copy speed)
//   - the 4-bit GEMM at LLaMA-2-7B's up_proj (512 x 11008 x 4096, forward X W^T and input gradient dY W)
//     against qlora_gemm on the same shape with a bf16 W (cuBLAS where the backend finds it), as a ratio
//   Lines with ratio= and floor= are judged against the floor in device-check.sh's summary (informative).
//
//   g++ -std=c++17 -O2 -Wall -Wextra -Icuda/include -o build/qlora_bench cuda/tests/bench.cpp -ldl
//   build/qlora_bench LIB.so [--small] [--only quant|gemm|gemv|gemm4] [--gemm-size N] [--info]
//
// --small   tiny sizes and few iterations: seconds on the emulated backend (libqlora_cuda_emu.so)
// --only    one benchmark (repeatable); --gemm-size the GEMM's m = n = k (default 8192, small 64)
// --info    loads and initialises the library, prints what it is, and exits
// Results are lines "RESULT key=value ...". Exit status: 0 done, 1 a call failed, 2 bad usage or the
// library cannot be loaded, 77 the library loads but qlora_init fails (no GPU: skipped).
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "qlora.h"

namespace {

#define QLORA_BENCH_FUNCS                                                                          \
  X(qlora_abi_version) X(qlora_backend_name) X(qlora_init) X(qlora_last_error) X(qlora_device_name) \
  X(qlora_synchronize) X(qlora_malloc) X(qlora_free) X(qlora_memcpy) X(qlora_fill_normal)           \
  X(qlora_gemm) X(qlora_gemm_4bit_workspace) X(qlora_gemm_4bit) X(qlora_quantize_4bit)              \
  X(qlora_dequantize_4bit) X(qlora_double_quantize)

struct Lib {
#define X(f) decltype(&::f) f = nullptr;
  QLORA_BENCH_FUNCS
#undef X
  // Empty string when every symbol is there, else what is missing.
  std::string open(const char* path) {
    void* so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so) return dlerror();
    std::string missing;
#define X(f)                                  \
  f = (decltype(&::f))dlsym(so, #f);          \
  if (!f) missing += std::string(" ") + #f;
    QLORA_BENCH_FUNCS
#undef X
    return missing.empty() ? "" : "missing symbols:" + missing;
  }
};

Lib L;

void q(qlora_status s, const char* what) {
  if (s != QLORA_OK) throw std::runtime_error(std::string(what) + ": " + L.qlora_last_error());
}

void* dalloc(uint64_t bytes) {
  void* p = nullptr;
  q(L.qlora_malloc(&p, bytes, QLORA_CAT_WORKSPACE), "malloc");
  return p;
}

// Frees its pointers when it goes out of scope (also on a failed call).
struct Pool {
  std::vector<void*> ptrs;
  void* get(uint64_t bytes) {
    ptrs.push_back(dalloc(bytes));
    return ptrs.back();
  }
  ~Pool() {
    for (void* p : ptrs) L.qlora_free(p);
  }
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of f: one warm-up call, then the median of three timed runs of iters calls each.
template <class F>
double time_it(int iters, F f) {
  f();
  q(L.qlora_synchronize(), "synchronize");
  std::vector<double> t;
  for (int r = 0; r < 3; r++) {
    const double t0 = now();
    for (int i = 0; i < iters; i++) f();
    q(L.qlora_synchronize(), "synchronize");
    t.push_back((now() - t0) / iters);
  }
  std::sort(t.begin(), t.end());
  return t[1];
}

// A figure with about three significant digits, without exponents for the usual ranges.
std::string fmt(double x) {
  char buf[64];
  if (x >= 100)
    snprintf(buf, sizeof buf, "%.0f", x);
  else if (x >= 1)
    snprintf(buf, sizeof buf, "%.2f", x);
  else
    snprintf(buf, sizeof buf, "%.3g", x);
  return buf;
}

struct Sizes {
  uint64_t quant_n;  // values quantized / dequantized
  int quant_iters;
  uint64_t gemm;     // m = n = k
  int gemm_iters;
  uint64_t gemv;     // W is gemv x gemv
  int gemv_iters;
  uint64_t gemm4_m, gemm4_n, gemm4_k;  // X is m x k, W (a linear layer's weight) n x k
  int gemm4_iters;
};

const Sizes kFull = {256ull << 20, 10, 8192, 10, 8192, 50, 512, 11008, 4096, 20};
const Sizes kSmall = {1ull << 18, 2, 64, 2, 256, 2, 64, 256, 256, 2};

void bench_quant(const Sizes& s) {
  const uint64_t n = s.quant_n, bs = 64;
  Pool pool;
  void* x = pool.get(n * 2);  // bf16
  void* out16 = pool.get(n * 2);
  void* out32 = pool.get(n * 4);
  auto* packed = (uint8_t*)pool.get(n / 2);
  auto* absmax = (float*)pool.get(n / bs * 4);
  q(L.qlora_fill_normal(x, QLORA_BF16, n, 0.0f, 0.02f, 1), "fill_normal");
  q(L.qlora_quantize_4bit(x, QLORA_BF16, n, QLORA_NF4, bs, packed, absmax), "quantize_4bit");
  const double gb = 1e9, packed_bytes = n / 2.0 + n / bs * 4.0;
  const double t_copy =
      time_it(s.quant_iters, [&] { q(L.qlora_memcpy(out16, x, n * 2, QLORA_DEVICE_TO_DEVICE), "memcpy d2d"); });
  const double copy_bw = 2.0 * n * 2 / t_copy / gb;  // read + write
  qlora_weight4 w{};
  w.packed = packed;
  w.absmax = absmax;
  w.quant_type = QLORA_NF4;
  w.blocksize = bs;
  const double t_dq16 = time_it(s.quant_iters, [&] {
    q(L.qlora_dequantize_4bit(&w, n, out16, QLORA_BF16), "dequantize_4bit bf16");
  });
  const double t_dq32 = time_it(s.quant_iters, [&] {
    q(L.qlora_dequantize_4bit(&w, n, out32, QLORA_F32), "dequantize_4bit f32");
  });
  // Quantize checks its input for NaN each call (a wait for the device): still a fair end-to-end figure.
  const double t_q = time_it(std::max(1, s.quant_iters / 2), [&] {
    q(L.qlora_quantize_4bit(x, QLORA_BF16, n, QLORA_NF4, bs, packed, absmax), "quantize_4bit");
  });
  const double dq16 = (packed_bytes + n * 2.0) / t_dq16 / gb, dq32 = (packed_bytes + n * 4.0) / t_dq32 / gb;
  const double qbw = (n * 2.0 + packed_bytes) / t_q / gb;
  printf("RESULT copy_d2d_GBps=%s (%llu bf16 values)\n", fmt(copy_bw).c_str(), (unsigned long long)n);
  printf("RESULT nf4_dequant_bf16_GBps=%s ratio_to_copy=%s\n", fmt(dq16).c_str(), fmt(dq16 / copy_bw).c_str());
  printf("RESULT nf4_dequant_f32_GBps=%s ratio_to_copy=%s\n", fmt(dq32).c_str(), fmt(dq32 / copy_bw).c_str());
  printf("RESULT nf4_quant_from_bf16_GBps=%s ratio_to_copy=%s\n", fmt(qbw).c_str(), fmt(qbw / copy_bw).c_str());
  fflush(stdout);
}

void bench_gemm(const Sizes& s, const char* label) {
  const uint64_t m = s.gemm, n = s.gemm, k = s.gemm;
  Pool pool;
  void* a = pool.get(m * k * 2);
  void* b = pool.get(k * n * 2);
  void* c = pool.get(m * n * 2);
  q(L.qlora_fill_normal(a, QLORA_BF16, m * k, 0.0f, 1.0f, 1), "fill_normal");
  q(L.qlora_fill_normal(b, QLORA_BF16, k * n, 0.0f, 1.0f, 2), "fill_normal");
  const double t = time_it(s.gemm_iters, [&] {
    q(L.qlora_gemm(0, 0, m, n, k, 1.0f, a, b, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemm bf16");
  });
  printf("RESULT qlora_bf16_gemm_%s_%llu_TFLOPs=%s\n", label, (unsigned long long)m,
         fmt(2.0 * m * n * k / t / 1e12).c_str());
  fflush(stdout);
}

// A weight quantized to NF4 (blocksize 64) from w16 (n x k, bf16), with or without double-quantized
// constants (nested blocks of 256), as a qlora_weight4 over the pool's buffers.
qlora_weight4 nf4_weight(Pool& pool, const void* w16, uint64_t n, uint64_t k, bool dq) {
  const uint64_t bs = 64, blocks = n * k / bs;
  auto* packed = (uint8_t*)pool.get(n * k / 2);
  auto* absmax = (float*)pool.get(blocks * 4);
  q(L.qlora_quantize_4bit(w16, QLORA_BF16, n * k, QLORA_NF4, bs, packed, absmax), "quantize_4bit");
  qlora_weight4 w{};
  w.packed = packed;
  w.quant_type = QLORA_NF4;
  w.blocksize = bs;
  if (!dq) {
    w.absmax = absmax;
    return w;
  }
  auto* codes = (uint8_t*)pool.get(blocks);
  auto* nested = (float*)pool.get((blocks + 255) / 256 * 4);
  q(L.qlora_double_quantize(absmax, blocks, 256, codes, nested, &w.offset), "double_quantize");
  w.absmax_codes = codes;
  w.nested_absmax = nested;
  w.nested_blocksize = 256;
  return w;
}

// qlora_gemm_4bit with the workspace the backend asks for (none on CUDA).
double time_gemm4(int iters, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, const void* x,
                  const qlora_weight4& w, const qlora_lora4* lora, void* c) {
  uint64_t ws = 0;
  q(L.qlora_gemm_4bit_workspace(trans_w, m, n, k, &ws), "gemm_4bit_workspace");
  Pool wpool;
  void* dws = ws ? wpool.get(ws) : nullptr;
  return time_it(iters, [&] {
    q(L.qlora_gemm_4bit(trans_w, m, n, k, 1.0f, x, QLORA_BF16, &w, lora, 0.0f, c, QLORA_BF16, dws, ws), "gemm_4bit");
  });
}

void bench_gemv(const Sizes& s) {
  const uint64_t n = s.gemv, k = s.gemv, rank = 8;  // W stored n x k, as a linear layer's weight
  Pool pool;
  void* w16 = pool.get(n * k * 2);
  void* x = pool.get(4 * k * 2);
  void* c = pool.get(4 * n * 2);
  q(L.qlora_fill_normal(w16, QLORA_BF16, n * k, 0.0f, 0.02f, 3), "fill_normal");
  q(L.qlora_fill_normal(x, QLORA_BF16, 4 * k, 0.0f, 1.0f, 4), "fill_normal");
  const qlora_weight4 plain = nf4_weight(pool, w16, n, k, false), dq = nf4_weight(pool, w16, n, k, true);
  void* a = pool.get(rank * k * 2);
  void* b = pool.get(n * rank * 2);
  void* h = pool.get(4 * rank * 2);
  q(L.qlora_fill_normal(a, QLORA_BF16, rank * k, 0.0f, 0.02f, 5), "fill_normal");
  q(L.qlora_fill_normal(b, QLORA_BF16, n * rank, 0.0f, 0.02f, 6), "fill_normal");
  const qlora_lora4 lora{a, b, h, rank, 2.0f, QLORA_BF16};
  // The limit: W's bytes at the bandwidth of a device-to-device copy (read + write) of W in bf16.
  void* copy = pool.get(n * k * 2);
  const double t_copy = time_it(s.gemv_iters, [&] {
    q(L.qlora_memcpy(copy, w16, n * k * 2, QLORA_DEVICE_TO_DEVICE), "memcpy d2d");
  });
  const double copy_bw = 2.0 * n * k * 2 / t_copy / 1e9;
  printf("RESULT gemv_copy_d2d_GBps=%s (the bandwidth limit of the GEMVs below)\n", fmt(copy_bw).c_str());
  const double bytes16 = n * k * 2.0, bytes4 = n * k / 2.0 + n * k / 64 * 4.0, bytes4dq = n * k / 2.0 + n * k / 64.0;
  for (uint64_t m : {1ull, 4ull}) {
    const double t16 = time_it(s.gemv_iters, [&] {
      q(L.qlora_gemm(0, 1, m, n, k, 1.0f, x, w16, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemv bf16");
    });
    const double t4 = time_gemm4(s.gemv_iters, 1, m, n, k, x, plain, nullptr, c);
    const double t4dq = time_gemm4(s.gemv_iters, 1, m, n, k, x, dq, nullptr, c);
    const double t4lora = time_gemm4(s.gemv_iters, 1, m, n, k, x, dq, &lora, c);
    const double bw4 = bytes4 / t4 / 1e9, bw4dq = bytes4dq / t4dq / 1e9;
    printf("RESULT gemv_m%llu_%llux%llu_nf4_vs_bf16 bf16_us=%s (%s GB/s) nf4_us=%s (%s GB/s) ratio=%s floor=2.50\n",
           (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, fmt(t16 * 1e6).c_str(),
           fmt(bytes16 / t16 / 1e9).c_str(), fmt(t4 * 1e6).c_str(), fmt(bw4).c_str(), fmt(t16 / t4).c_str());
    printf("RESULT gemv_m%llu_nf4_of_copy_bandwidth ratio=%s floor=0.70 (W's %s MB read at %s GB/s)\n",
           (unsigned long long)m, fmt(bw4 / copy_bw).c_str(), fmt(bytes4 / 1e6).c_str(), fmt(bw4).c_str());
    printf("RESULT gemv_m%llu_nf4_dq nf4_dq_us=%s (%s GB/s, of_copy=%s) lora_r8_us=%s lora_overhead=%s\n",
           (unsigned long long)m, fmt(t4dq * 1e6).c_str(), fmt(bw4dq).c_str(), fmt(bw4dq / copy_bw).c_str(),
           fmt(t4lora * 1e6).c_str(), fmt(t4lora / t4dq).c_str());
    fflush(stdout);
  }
}

// The 4-bit GEMM of many rows (a training step's or a prompt's tokens): compute-bound, so its reference is
// the same product with a bf16 W through qlora_gemm (cuBLAS where found). Forward C = X W^T and the input
// gradient dX = dY W, W double-quantized NF4 (the QLoRA default).
void bench_gemm4(const Sizes& s) {
  const uint64_t m = s.gemm4_m, n = s.gemm4_n, k = s.gemm4_k;
  Pool pool;
  void* w16 = pool.get(n * k * 2);
  void* x = pool.get(m * (n > k ? n : k) * 2);  // X (m x k) or dY (m x n)
  void* c = pool.get(m * (n > k ? n : k) * 2);
  q(L.qlora_fill_normal(w16, QLORA_BF16, n * k, 0.0f, 0.02f, 7), "fill_normal");
  q(L.qlora_fill_normal(x, QLORA_BF16, m * (n > k ? n : k), 0.0f, 1.0f, 8), "fill_normal");
  const qlora_weight4 w = nf4_weight(pool, w16, n, k, true);
  const double flops = 2.0 * m * n * k;
  for (int32_t trans_w : {1, 0}) {
    // forward: C (m x n) = X W^T; backward: dX (m x k) = dY (m x n) W, W stored n x k ("k x n" for trans_w 0)
    const double t16 = time_it(s.gemm4_iters, [&] {
      if (trans_w)
        q(L.qlora_gemm(0, 1, m, n, k, 1.0f, x, w16, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemm bf16");
      else
        q(L.qlora_gemm(0, 0, m, k, n, 1.0f, x, w16, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemm bf16");
    });
    const double t4 = trans_w ? time_gemm4(s.gemm4_iters, 1, m, n, k, x, w, nullptr, c)
                              : time_gemm4(s.gemm4_iters, 0, m, k, n, x, w, nullptr, c);
    printf("RESULT gemm4_%s_%llux%llux%llu_nf4_vs_bf16 bf16_TFLOPs=%s nf4_TFLOPs=%s ratio=%s floor=0.50\n",
           trans_w ? "XWt" : "dYW", (unsigned long long)m, (unsigned long long)n, (unsigned long long)k,
           fmt(flops / t16 / 1e12).c_str(), fmt(flops / t4 / 1e12).c_str(), fmt(t16 / t4).c_str());
    fflush(stdout);
  }
}

int usage_error(const char* argv0) {
  fprintf(stderr, "usage: %s LIB.so [--small] [--only quant|gemm|gemv|gemm4]... [--gemm-size N] [--info]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const char* path = nullptr;
  bool small = false, info = false;
  std::set<std::string> only;
  uint64_t gemm_size = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--small")) {
      small = true;
    } else if (!strcmp(argv[i], "--info")) {
      info = true;
    } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
      only.insert(argv[++i]);
    } else if (!strcmp(argv[i], "--gemm-size") && i + 1 < argc) {
      gemm_size = strtoull(argv[++i], nullptr, 10);
      if (gemm_size == 0) return usage_error(argv[0]);
    } else if (argv[i][0] != '-' && !path) {
      path = argv[i];
    } else {
      return usage_error(argv[0]);
    }
  }
  if (!path) return usage_error(argv[0]);
  for (const std::string& o : only)
    if (o != "quant" && o != "gemm" && o != "gemv" && o != "gemm4") return usage_error(argv[0]);

  const std::string err = L.open(path);
  if (!err.empty()) {
    printf("bench: cannot load %s: %s\n", path, err.c_str());
    return 2;
  }
  if (L.qlora_abi_version() != QLORA_ABI_VERSION) {
    printf("bench: %s has ABI %u, this program %u: rebuild to match\n", path, L.qlora_abi_version(),
           (unsigned)QLORA_ABI_VERSION);
    return 2;
  }
  if (L.qlora_init() != QLORA_OK) {
    printf("bench: skipped, %s cannot initialise: %s\n", path, L.qlora_last_error());
    return 77;
  }
  char name[256] = "";
  L.qlora_device_name(name, sizeof name);
  const char* gemm_env = getenv("QLORA_GEMM");
  const std::string label = gemm_env && *gemm_env ? gemm_env : "default";
  printf("bench: %s: %s backend, %s\n", path, L.qlora_backend_name(), name);
  if (info) return 0;
  printf("bench: QLORA_GEMM=%s, %s sizes\n", gemm_env ? gemm_env : "", small ? "small" : "full");
  fflush(stdout);

  Sizes s = small ? kSmall : kFull;
  if (gemm_size) s.gemm = gemm_size;
  auto wanted = [&](const char* what) { return only.empty() || only.count(what) > 0; };
  const double t0 = now();
  try {
    if (wanted("quant")) bench_quant(s);
    if (wanted("gemm")) bench_gemm(s, label.c_str());
    if (wanted("gemv")) bench_gemv(s);
    if (wanted("gemm4")) bench_gemm4(s);
  } catch (const std::exception& e) {
    printf("bench: FAILED %s\n", e.what());
    return 1;
  }
  printf("bench: done in %.1f s\n", now() - t0);
  return 0;
}
