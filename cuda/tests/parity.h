// parity.h: the machinery of the parity harness (parity.cpp): loading two builds of the C ABI side by
// side, a seeded generator, buffers that live in both libraries at once, and the per-case report with
// its comparisons (bit-exact, or within a stated tolerance) and timings.
//
// Side 0 is REF (the library trusted), side 1 is TEST (the library checked). Every device pointer is
// allocated by its own library and only ever read back through that library's qlora_memcpy.
#pragma once

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "qlora.h"

namespace parity {

// ---- the C ABI, as a table of function pointers ------------------------------------------------

// Every function of qlora.h. Each pointer is typed by decltype of the header's own prototype, so a
// change of signature in the header changes the table with it (and the calls below stop compiling).
#define PARITY_FUNCTIONS(X)                                                                              \
  X(qlora_abi_version) X(qlora_backend_name) X(qlora_last_error) X(qlora_init) X(qlora_device_name)      \
  X(qlora_synchronize) X(qlora_malloc) X(qlora_free) X(qlora_memcpy) X(qlora_memset)                     \
  X(qlora_memory_stats) X(qlora_reset_peak) X(qlora_set_memory_budget) X(qlora_host_malloc)              \
  X(qlora_host_free) X(qlora_cast) X(qlora_fill_normal) X(qlora_quant_map) X(qlora_quantize_4bit)        \
  X(qlora_dequantize_4bit) X(qlora_dynamic_map) X(qlora_double_quantize) X(qlora_double_dequantize)      \
  X(qlora_axpby) X(qlora_dropout) X(qlora_fill_uniform) X(qlora_gemm) X(qlora_gemm_4bit_workspace)       \
  X(qlora_gemm_4bit) X(qlora_adamw_step) X(qlora_adamw8_step) X(qlora_dynamic_map_unsigned)              \
  X(qlora_sum_squares) X(qlora_embedding_forward) X(qlora_embedding_backward) X(qlora_rmsnorm_forward)   \
  X(qlora_rmsnorm_backward) X(qlora_rope) X(qlora_attention_forward) X(qlora_attention_backward)         \
  X(qlora_swiglu_forward) X(qlora_swiglu_backward) X(qlora_cross_entropy) X(qlora_rope_at)               \
  X(qlora_kv_cache_append) X(qlora_attention_cached)

struct Lib {
  std::string path;
  void* handle = nullptr;
#define PARITY_POINTER(name) decltype(&::name) name = nullptr;
  PARITY_FUNCTIONS(PARITY_POINTER)
#undef PARITY_POINTER
};

inline Lib g_libs[2];
inline const char* const kSide[2] = {"ref", "test"};
inline Lib& lib(int side) { return g_libs[side]; }

// dlopens path (RTLD_NOW | RTLD_LOCAL: two builds of the same symbols side by side) and resolves every
// function; exits with a message naming the first missing one.
inline void open_library(Lib& l, const char* path) {
  l.path = path;
  l.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!l.handle) {
    fprintf(stderr, "parity: cannot load %s: %s\n", path, dlerror());
    exit(1);
  }
#define PARITY_RESOLVE(name)                                                             \
  l.name = reinterpret_cast<decltype(l.name)>(dlsym(l.handle, #name));                   \
  if (!l.name) {                                                                         \
    fprintf(stderr, "parity: %s has no symbol %s (qlora.h declares it)\n", path, #name); \
    exit(1);                                                                             \
  }
  PARITY_FUNCTIONS(PARITY_RESOLVE)
#undef PARITY_RESOLVE
}

inline const char* status_name(qlora_status s) {
  switch (s) {
    case QLORA_OK: return "OK";
    case QLORA_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case QLORA_ERR_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case QLORA_ERR_NON_FINITE: return "NON_FINITE";
    case QLORA_ERR_NO_DEVICE: return "NO_DEVICE";
    case QLORA_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case QLORA_ERR_INTERNAL: return "INTERNAL";
  }
  return "unknown status";
}

// ---- dtypes on the host --------------------------------------------------------------------------

// A host-only dtype for comparisons: the f64 that qlora_sum_squares writes.
constexpr int32_t kF64 = 100;

inline uint64_t dtype_size(int32_t dtype) {
  switch (dtype) {
    case QLORA_F32:
    case QLORA_I32: return 4;
    case QLORA_BF16:
    case QLORA_F16: return 2;
    case QLORA_U8: return 1;
    case kF64: return 8;
  }
  throw std::logic_error("parity: unknown dtype");
}

inline const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case QLORA_F32: return "f32";
    case QLORA_BF16: return "bf16";
    case QLORA_F16: return "f16";
    case QLORA_U8: return "u8";
    case QLORA_I32: return "i32";
    case kF64: return "f64";
  }
  return "?";
}

inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// Input encodings: the harness only needs valid values of each dtype, not correctly rounded ones, so
// both truncate (toward zero). f16: NaN stays NaN, Inf and overflow give Inf, below the normal range 0.
inline uint16_t bf16_truncate(float f) { return (uint16_t)(float_to_bits(f) >> 16); }
inline uint16_t f16_truncate(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  if (std::isnan(f)) return (uint16_t)(sign | 0x7e00u);
  const int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
  if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
  if (exp <= 0) return sign;
  return (uint16_t)(sign | (uint32_t)exp << 10 | ((u >> 13) & 0x3ffu));
}

// Exact decodings, to double, for comparisons.
inline double f16_decode(uint16_t h) {
  const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 31) return man ? NAN : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp((double)man, -24);
  return sign * std::ldexp((double)(man | 0x400), exp - 25);
}

// Element i of host bytes of a dtype, as a double (exact for every dtype here).
inline double decode(const uint8_t* p, int32_t dtype, uint64_t i) {
  switch (dtype) {
    case QLORA_F32: {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      return bits_to_float(u);
    }
    case QLORA_BF16: {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      return bits_to_float((uint32_t)h << 16);
    }
    case QLORA_F16: {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      return f16_decode(h);
    }
    case QLORA_U8: return p[i];
    case QLORA_I32: {
      int32_t v;
      memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case kF64: {
      double d;
      memcpy(&d, p + 8 * i, 8);
      return d;
    }
  }
  throw std::logic_error("parity: unknown dtype");
}

// Encodes floats as bytes of a float dtype (f32 as is, bf16 and f16 truncated).
inline std::vector<uint8_t> encode(const std::vector<float>& v, int32_t dtype) {
  std::vector<uint8_t> out(v.size() * dtype_size(dtype));
  for (size_t i = 0; i < v.size(); i++) {
    if (dtype == QLORA_F32) {
      memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t h = dtype == QLORA_BF16 ? bf16_truncate(v[i]) : f16_truncate(v[i]);
      memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::fmax(m, std::fabs((double)x));
  return m;
}

// ---- seeded inputs ------------------------------------------------------------------------------

// splitmix64: a small, seedable generator; the same seed gives the same inputs on every run.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double unit() { return (double)(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  float uniform(float lo, float hi) { return (float)(lo + (hi - lo) * unit()); }
  float normal() { return (float)(std::sqrt(-2.0 * std::log(1.0 - unit())) * std::cos(6.283185307179586 * unit())); }
  uint64_t below(uint64_t n) { return next() % n; }
  std::vector<float> uniforms(uint64_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }
  std::vector<float> normals(uint64_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = scale * normal();
    return v;
  }
  std::vector<uint8_t> bytes(uint64_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = (uint8_t)(next() >> 56);
    return v;
  }
  std::vector<int32_t> ints(uint64_t n, int32_t lo, int32_t hi) {  // in [lo, hi)
    std::vector<int32_t> v(n);
    for (auto& x : v) x = lo + (int32_t)below((uint64_t)(hi - lo));
    return v;
  }
};

// ---- buffers in both libraries --------------------------------------------------------------------

// Sizes that differ between the two libraries (a workspace each sizes for itself).
struct PerSide {
  uint64_t ref, test;
};

// The same buffer allocated in each library (with its own qlora_malloc, under a category), filled and
// read back through that library's qlora_memcpy. A side asked for 0 bytes holds NULL. Freed on scope
// exit. Harness failures (an allocation or copy refused) throw: the group reports them.
class Twin {
 public:
  explicit Twin(PerSide size, int32_t category = QLORA_CAT_WORKSPACE) {
    const uint64_t bytes[2] = {size.ref, size.test};
    for (int s = 0; s < 2; s++) {
      bytes_[s] = bytes[s];
      if (bytes[s] == 0) continue;
      const qlora_status st = lib(s).qlora_malloc(&p_[s], bytes[s], category);
      if (st != QLORA_OK) {
        release();
        throw std::runtime_error(std::string(kSide[s]) +
                                 ": qlora_malloc refused a harness buffer: " + lib(s).qlora_last_error());
      }
    }
  }
  explicit Twin(uint64_t bytes, int32_t category = QLORA_CAT_WORKSPACE) : Twin(PerSide{bytes, bytes}, category) {}
  // A buffer holding host bytes (at least 1 byte, so that n = 0 cases still get a pointer).
  explicit Twin(const std::vector<uint8_t>& host, int32_t category = QLORA_CAT_WORKSPACE)
      : Twin(host.empty() ? 1 : host.size(), category) {
    upload(host.data(), host.size());
  }
  template <typename T>
  explicit Twin(const std::vector<T>& host, int32_t category = QLORA_CAT_WORKSPACE)
      : Twin(std::vector<uint8_t>((const uint8_t*)host.data(), (const uint8_t*)(host.data() + host.size())), category) {
  }
  ~Twin() { release(); }
  Twin(const Twin&) = delete;
  Twin& operator=(const Twin&) = delete;

  void* operator[](int side) const { return p_[side]; }
  float* f32(int side) const { return (float*)p_[side]; }
  uint8_t* u8(int side) const { return (uint8_t*)p_[side]; }
  int32_t* i32(int side) const { return (int32_t*)p_[side]; }
  uint64_t bytes(int side) const { return bytes_[side]; }

  // Copies host bytes to offset of both sides.
  void upload(const void* host, uint64_t bytes, uint64_t offset = 0) {
    for (int s = 0; s < 2; s++) {
      if (bytes == 0) continue;
      if (offset + bytes > bytes_[s]) throw std::logic_error("parity: upload past the end of a buffer");
      copy_status(s, lib(s).qlora_memcpy((char*)p_[s] + offset, host, bytes, QLORA_HOST_TO_DEVICE));
    }
  }
  // Bytes [offset, offset + bytes) of one side (all of it by default).
  std::vector<uint8_t> download(int side, uint64_t bytes = UINT64_MAX, uint64_t offset = 0) const {
    if (bytes == UINT64_MAX) bytes = bytes_[side] - offset;
    std::vector<uint8_t> out(bytes);
    if (bytes)
      copy_status(side,
                  lib(side).qlora_memcpy(out.data(), (const char*)p_[side] + offset, bytes, QLORA_DEVICE_TO_HOST));
    return out;
  }

 private:
  static void copy_status(int side, qlora_status st) {
    if (st != QLORA_OK)
      throw std::runtime_error(std::string(kSide[side]) + ": qlora_memcpy failed: " + lib(side).qlora_last_error());
  }
  void release() {
    for (int s = 0; s < 2; s++) {
      if (p_[s]) lib(s).qlora_free(p_[s]);
      p_[s] = nullptr;
    }
  }
  void* p_[2] = {nullptr, nullptr};
  uint64_t bytes_[2] = {0, 0};
};

// ---- tolerances and the per-case report ------------------------------------------------------------

// How two results must agree. exact: the same bits (NaN matches NaN: payloads are not promised).
// Otherwise max |ref - test| <= abs + rel * max |ref| (errors measured against the scale of the output).
struct Tol {
  bool exact = true;
  double abs = 0.0, rel = 0.0;
};
inline Tol bit_exact() { return Tol{}; }
inline Tol within(double rel, double abs = 0.0) { return Tol{false, abs, rel}; }

inline int g_passed = 0, g_failed = 0;

// One line of the report: a function, a case, the worst comparison, both libraries' times, PASS/FAIL.
// Usage: { Case c("qlora_cast", "f32->bf16 n=7"); c.run(...); c.compare(...); } prints on scope exit.
class Case {
 public:
  Case(std::string fn, std::string desc)
      : fn_(std::move(fn)), desc_(std::move(desc)), exceptions_(std::uncaught_exceptions()) {}
  Case(const Case&) = delete;
  Case& operator=(const Case&) = delete;

  // Calls f(lib, side) for REF then TEST, each timed up to the end of its qlora_synchronize; both must
  // return `want`, and an error must come with a non-empty qlora_last_error().
  template <typename F>
  void run(F&& f, qlora_status want = QLORA_OK) {
    want_ = want;
    for (int s = 0; s < 2; s++) {
      Lib& l = lib(s);
      const auto t0 = std::chrono::steady_clock::now();
      const qlora_status st = f(l, s);
      const qlora_status sync = l.qlora_synchronize();
      ms_[s] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (st != want)
        fail("%s returned %s, expected %s (%s)", kSide[s], status_name(st), status_name(want),
             st != QLORA_OK ? l.qlora_last_error() : "no error");
      else if (want != QLORA_OK && l.qlora_last_error()[0] == '\0')
        fail("%s returned %s with an empty qlora_last_error()", kSide[s], status_name(st));
      if (sync != QLORA_OK) fail("%s: qlora_synchronize returned %s", kSide[s], status_name(sync));
    }
  }

  // Compares n values of dtype at element `first` of a twin buffer, read back from both libraries.
  void compare(const char* what, const Twin& t, int32_t dtype, uint64_t n, Tol tol, uint64_t first = 0) {
    const uint64_t es = dtype_size(dtype);
    compare_host(what, t.download(0, n * es, first * es).data(), t.download(1, n * es, first * es).data(), dtype, n,
                 tol);
  }

  // Compares n values of dtype of two host arrays, REF's first: the case's result shows the comparison
  // closest to its bound (any difference at all, for a bit-exact one).
  void compare_host(const char* what, const void* ref, const void* test, int32_t dtype, uint64_t n, Tol tol) {
    const Diff d = measure(what, ref, test, dtype, n, tol);
    exact_ = exact_ && d.differ == 0;
    compared_ = true;
    if (d.differ == 0 || d.ratio < worst_ratio_) return;
    worst_ratio_ = d.ratio;
    char buf[160];
    if (tol.exact)
      snprintf(buf, sizeof buf, "%s: %llu differ", what, (unsigned long long)d.differ);
    else
      snprintf(buf, sizeof buf, "%s abs %.2e rel %.2e <= %.2e", what, d.worst, d.rel, d.bound);
    shown_ = buf;
  }

  // Checks one library's values against a known answer (`want`): a failure fails the case, but the
  // result column keeps showing the REF-versus-TEST comparisons.
  void expect_values(const char* what, const void* want, const void* got, int32_t dtype, uint64_t n, Tol tol) {
    measure(what, want, got, dtype, n, tol);
  }

  // Records a failure of this case (printed under its line).
  void fail(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    notes_.push_back(buf);
  }
  void check(bool ok, const char* what) {
    if (!ok) fail("%s", what);
  }

  ~Case() {
    if (std::uncaught_exceptions() > exceptions_) fail("interrupted by the harness error reported below");
    const bool pass = notes_.empty();
    std::string result;
    if (want_ != QLORA_OK)
      result = std::string("status ") + status_name(want_) + " on both";
    else if (!compared_)
      result = "status OK on both";
    else if (exact_)
      result = "bit-exact";
    else
      result = shown_;
    const double ratio = ms_[0] > 0.0 ? ms_[1] / ms_[0] : 0.0;
    printf("%-26s %-50s %-50s %9.3f %9.3f ms x%-7.2f %s\n", fn_.c_str(), desc_.c_str(), result.c_str(), ms_[0], ms_[1],
           ratio, pass ? "PASS" : "FAIL");
    for (const auto& n : notes_) printf("    %s\n", n.c_str());
    fflush(stdout);
    (pass ? g_passed : g_failed)++;
  }

 private:
  // The differences of b from a, and a failure recorded when they break tol.
  struct Diff {
    uint64_t differ;
    double worst, rel, bound, ratio;  // max abs error, the same over max |a|, the bound, error / bound
  };
  Diff measure(const char* what, const void* ref, const void* test, int32_t dtype, uint64_t n, Tol tol) {
    const uint8_t *a = (const uint8_t*)ref, *b = (const uint8_t*)test;
    const uint64_t es = dtype_size(dtype);
    double worst = 0.0, scale = 0.0;
    uint64_t worst_at = 0, differ = 0, first_diff = n;
    for (uint64_t i = 0; i < n; i++) {
      const double x = decode(a, dtype, i), y = decode(b, dtype, i);
      if (std::isfinite(x)) scale = std::fmax(scale, std::fabs(x));
      if (memcmp(a + i * es, b + i * es, es) == 0 || (std::isnan(x) && std::isnan(y))) continue;
      differ++;
      if (first_diff == n) first_diff = i;
      const double err = x == y ? 0.0 : std::fabs(x - y);  // (Inf, Inf) compares equal, NaN gives NaN
      if (!(err <= worst)) {                               // a NaN on one side only is the worst error there is
        worst = std::isnan(err) ? INFINITY : err;
        worst_at = i;
      }
    }
    const double bound = tol.abs + tol.rel * scale;
    if (tol.exact && differ) {
      fail("%s: %llu of %llu values differ, the first at [%llu]: %.9g vs %.9g", what, (unsigned long long)differ,
           (unsigned long long)n, (unsigned long long)first_diff, decode(a, dtype, first_diff),
           decode(b, dtype, first_diff));
    } else if (!tol.exact && !(worst <= bound)) {
      fail("%s: max abs error %.3g at [%llu] (%.9g vs %.9g) is over the bound %.3g", what, worst,
           (unsigned long long)worst_at, decode(a, dtype, worst_at), decode(b, dtype, worst_at), bound);
    }
    const double ratio = tol.exact || bound <= 0.0 ? (differ ? INFINITY : 0.0) : worst / bound;
    return Diff{differ, worst, scale > 0.0 ? worst / scale : worst, bound, ratio};
  }

  std::string fn_, desc_, shown_;
  std::vector<std::string> notes_;
  qlora_status want_ = QLORA_OK;
  double ms_[2] = {0.0, 0.0};
  double worst_ratio_ = -1.0;
  bool exact_ = true, compared_ = false;
  int exceptions_;
};

// printf into a std::string, for case descriptions.
inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

}  // namespace parity
