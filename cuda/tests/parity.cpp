// parity.cpp: a native parity harness over the whole C ABI of qlora.h, in the spirit of llm.c's
// dev/cuda: for every function, the same seeded inputs go to two builds of the library (REF, trusted,
// and TEST, checked), the results are read back and compared, bit for bit where the backends promise it
// and within a stated tolerance elsewhere, and both calls are timed. Error paths must give the same
// status on both, with a message. Three "model" cases chain several ops. Everything allocated is freed:
// the ledgers end where they started.
//
//   g++ -std=c++17 -O2 -Wall -Wextra -Icuda/include cuda/tests/parity.cpp -ldl -o build/qlora_parity
//   build/qlora_parity REF.so TEST.so [--filter SUBSTRING] [--quick]
//
// Exit status: 0 all passed, 1 a failure, 2 bad usage, 77 TEST could not initialise (no GPU: skipped).
// One line per case: function, case, result (bit-exact, or the worst error against its bound, or the
// status of an error case), REF and TEST milliseconds (one call each, synchronized) and their ratio.
// Loading the same path twice gives one library (dlopen returns the same handle): copy the .so first.
#include "parity.h"

#include <algorithm>
#include <memory>

using namespace parity;

namespace {

bool g_quick = false;
uint64_t pick(uint64_t quick, uint64_t full) { return g_quick ? quick : full; }

const int32_t kFloatDtypes[3] = {QLORA_F32, QLORA_BF16, QLORA_F16};  // elementwise ops and quantization
const int32_t kActDtypes[2] = {QLORA_F32, QLORA_BF16};               // GEMMs and the model ops
constexpr qlora_status kInvalid = QLORA_ERR_INVALID_ARGUMENT;
constexpr int32_t kWs = QLORA_CAT_WORKSPACE;

// ---- tolerances -------------------------------------------------------------------------------------
// Where the backends compute the same formula in f32 with another order of sums or another libm (expf,
// sinf, logf differ in the last bits), the error is measured against the largest value of the output:
//   f32 outputs 1e-5 (a few ulps, with room for the order of sums), f16 1e-3 (2^-11 is one rounding),
//   bf16 1e-2 (2^-8 is one rounding; a value near a rounding boundary may round either way).
constexpr double kF32Tol = 1e-5, kF16Tol = 1e-3, kBf16Tol = 1e-2;
Tol rounding_tol(int32_t dtype) {
  return within(dtype == QLORA_BF16 ? kBf16Tol : dtype == QLORA_F16 ? kF16Tol : kF32Tol);
}
// GEMMs accumulate k products in f32 in orders of their own: the error of a dot product grows like
// sqrt(k) (random signs) times the size of a product, so the bound is
//   |alpha| * max|A| * max|B| * sqrt(k) * e_in  +  |beta| * max|C0| * 1e-6  +  e_out * max|C|
// with e_in = 1e-5 for exact inputs (f32, or bf16 on both sides) and 2^-8 when a backend may round a
// dequantized 4-bit weight to bf16 and the other not; e_out = 2^-7 (one bf16 ulp) for bf16 C, else 1e-6.
Tol gemm_tol(float alpha, double max_a, double max_b, uint64_t k, double e_in, float beta, double max_c0,
             int32_t c_dtype) {
  const double abs = std::fabs(alpha) * max_a * max_b * std::sqrt((double)k) * e_in + std::fabs(beta) * max_c0 * 1e-6;
  return within(c_dtype == QLORA_BF16 ? 0x1p-7 : 1e-6, abs);
}

// ---- small helpers ----------------------------------------------------------------------------------

// An error case: f(lib, side) must return `want` on both libraries, with a message.
template <typename F>
void expect_status(const char* fn, const std::string& what, qlora_status want, F&& f) {
  Case c(fn, "error: " + what);
  c.run(f, want);
}

qlora_ledger_snapshot stats(int side) {
  qlora_ledger_snapshot s;
  if (lib(side).qlora_memory_stats(&s) != QLORA_OK)
    throw std::runtime_error(std::string(kSide[side]) + ": qlora_memory_stats failed");
  return s;
}

// Inputs of a float dtype: their bytes, and their largest magnitude (for tolerances).
struct Values {
  std::vector<uint8_t> bytes;
  double max;
  Values(const std::vector<float>& v, int32_t dtype) : bytes(encode(v, dtype)), max(max_abs(v)) {}
  // n values uniform in [lo, hi).
  Values(Rng& rng, uint64_t n, int32_t dtype, float lo, float hi) : Values(rng.uniforms(n, lo, hi), dtype) {}
};

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// A 4-bit weight descriptor with plain absmax (the double-quantized fields are set by the callers that use them).
qlora_weight4 plain4(const uint8_t* packed, const float* absmax, int32_t qt, uint64_t bs) {
  qlora_weight4 w{};
  w.packed = packed;
  w.absmax = absmax;
  w.quant_type = qt;
  w.blocksize = bs;
  return w;
}
const char* tn(int t) { return t ? "T" : "N"; }

// ---- library: names, init, device description, synchronize ------------------------------------------

void test_library() {
  {
    Case c("qlora_backend_name",
           fmt("ref \"%s\", test \"%s\"", lib(0).qlora_backend_name(), lib(1).qlora_backend_name()));
    for (int s = 0; s < 2; s++) c.check(lib(s).qlora_backend_name()[0] != '\0', "an empty backend name");
  }
  {
    Case c("qlora_init", "a second time (idempotent)");
    c.run([](Lib& l, int) { return l.qlora_init(); });
  }
  {
    Case c("qlora_synchronize", "nothing queued");
    c.run([](Lib& l, int) { return l.qlora_synchronize(); });
  }
  {
    Case c("qlora_device_name", "256-byte buffer, then 4 bytes (truncated)");
    char big[2][256], small[2][4];
    c.run([&](Lib& l, int s) { return l.qlora_device_name(big[s], sizeof big[s]); });
    c.run([&](Lib& l, int s) {
      memset(small[s], 'x', sizeof small[s]);
      return l.qlora_device_name(small[s], sizeof small[s]);
    });
    for (int s = 0; s < 2; s++) {
      c.check(memchr(big[s], 0, sizeof big[s]) && big[s][0] != '\0', "an empty or unterminated device name");
      c.check(memchr(small[s], 0, sizeof small[s]) != nullptr, "a truncated device name is not NUL-terminated");
    }
  }
  expect_status("qlora_device_name", "buf_len 0", kInvalid, [](Lib& l, int) {
    char b[1];
    return l.qlora_device_name(b, 0);
  });
  expect_status("qlora_device_name", "null buf", kInvalid,
                [](Lib& l, int) { return l.qlora_device_name(nullptr, 16); });
}

// ---- memory: allocations, the ledger, the budget -----------------------------------------------------

// Restores both libraries' budgets on scope exit.
struct BudgetGuard {
  uint64_t old[2];
  BudgetGuard() {
    for (int s = 0; s < 2; s++) old[s] = stats(s).budget;
  }
  ~BudgetGuard() {
    for (int s = 0; s < 2; s++) lib(s).qlora_set_memory_budget(old[s]);
  }
};

void test_memory() {
  {
    Case c("qlora_malloc", "one per category: ledger deltas, alignment");
    qlora_ledger_snapshot before[2], after[2];
    void* p[2][QLORA_NUM_CATEGORIES] = {};
    auto bytes = [](int cat) { return (uint64_t)(1000 + 77 * cat); };
    for (int s = 0; s < 2; s++) before[s] = stats(s);
    c.run([&](Lib& l, int s) {
      for (int cat = 0; cat < QLORA_NUM_CATEGORIES; cat++) {
        const qlora_status st = l.qlora_malloc(&p[s][cat], bytes(cat), cat);
        if (st != QLORA_OK) return st;
      }
      return QLORA_OK;
    });
    uint64_t total = 0;
    for (int cat = 0; cat < QLORA_NUM_CATEGORIES; cat++) total += bytes(cat);
    for (int s = 0; s < 2; s++) {
      after[s] = stats(s);
      for (int cat = 0; cat < QLORA_NUM_CATEGORIES; cat++) {
        if (after[s].current[cat] - before[s].current[cat] != bytes(cat))
          c.fail("%s: category %d grew by %llu bytes, not %llu", kSide[s], cat,
                 (unsigned long long)(after[s].current[cat] - before[s].current[cat]), (unsigned long long)bytes(cat));
        if (!p[s][cat] || (uintptr_t)p[s][cat] % after[s].alignment != 0)
          c.fail("%s: allocation %d is null or not aligned to %llu", kSide[s], cat,
                 (unsigned long long)after[s].alignment);
      }
      c.check(after[s].total_current - before[s].total_current == total, "total_current did not grow by the sum");
      c.check(after[s].live_allocations - before[s].live_allocations == QLORA_NUM_CATEGORIES,
              "live_allocations did not grow by 8");
    }
    c.run([&](Lib& l, int s) {
      for (int cat = 0; cat < QLORA_NUM_CATEGORIES; cat++) {
        const qlora_status st = l.qlora_free(p[s][cat]);
        if (st != QLORA_OK) return st;
      }
      return QLORA_OK;
    });
    for (int s = 0; s < 2; s++)
      c.check(stats(s).total_current == before[s].total_current, "total_current did not come back after the frees");
  }
  {
    Case c("qlora_reset_peak", "after a freed 1 MiB allocation");
    void* p[2] = {};
    c.run([&](Lib& l, int s) {
      const qlora_status st = l.qlora_malloc(&p[s], 1 << 20, QLORA_CAT_ACTIVATIONS);
      return st != QLORA_OK ? st : l.qlora_free(p[s]);
    });
    for (int s = 0; s < 2; s++) {
      const qlora_ledger_snapshot x = stats(s);
      c.check(x.total_peak >= x.total_current + (1 << 20), "total_peak does not show the freed allocation");
    }
    c.run([](Lib& l, int) { return l.qlora_reset_peak(); });
    for (int s = 0; s < 2; s++) {
      const qlora_ledger_snapshot x = stats(s);
      c.check(x.total_peak == x.total_current && x.host_peak == x.host_current, "peaks are not the current values");
      for (int cat = 0; cat < QLORA_NUM_CATEGORIES; cat++)
        c.check(x.peak[cat] == x.current[cat], "a category's peak is not its current value");
    }
  }
  {
    BudgetGuard guard;
    Twin hold(1 << 16);  // something in use, so that "below current use" is a real budget
    uint64_t used[2];
    for (int s = 0; s < 2; s++) used[s] = stats(s).total_current;
    {
      Case c("qlora_set_memory_budget", "1 byte below current use");
      c.run([&](Lib& l, int s) { return l.qlora_set_memory_budget(used[s] - 1); });
    }
    void* p[2] = {};
    expect_status("qlora_malloc", "256 bytes past a budget below current use", QLORA_ERR_OUT_OF_MEMORY,
                  [&](Lib& l, int s) { return l.qlora_malloc(&p[s], 256, kWs); });
    {
      Case c("qlora_set_memory_budget", "current use + 4096: 4096 bytes fit");
      c.run([&](Lib& l, int s) { return l.qlora_set_memory_budget(used[s] + 4096); });
      c.run([&](Lib& l, int s) { return l.qlora_malloc(&p[s], 4096, kWs); });
    }
    void* q[2] = {};
    expect_status("qlora_malloc", "1 byte more than the budget", QLORA_ERR_OUT_OF_MEMORY,
                  [&](Lib& l, int s) { return l.qlora_malloc(&q[s], 1, kWs); });
    {
      Case c("qlora_set_memory_budget", "free, then unlimited (0)");
      c.run([&](Lib& l, int s) { return l.qlora_free(p[s]); });
      c.run([](Lib& l, int) { return l.qlora_set_memory_budget(0); });
      c.run([&](Lib& l, int s) {
        const qlora_status st = l.qlora_malloc(&q[s], 1 << 20, kWs);
        return st != QLORA_OK ? st : l.qlora_free(q[s]);
      });
    }
  }
  // Error paths of the allocator.
  void* out = nullptr;
  int local = 0;
  expect_status("qlora_malloc", "null out", kInvalid, [](Lib& l, int) { return l.qlora_malloc(nullptr, 64, kWs); });
  expect_status("qlora_malloc", "0 bytes", kInvalid, [&](Lib& l, int) { return l.qlora_malloc(&out, 0, kWs); });
  expect_status("qlora_malloc", "category -1", kInvalid, [&](Lib& l, int) { return l.qlora_malloc(&out, 64, -1); });
  expect_status("qlora_malloc", fmt("category %d", QLORA_NUM_CATEGORIES), kInvalid,
                [&](Lib& l, int) { return l.qlora_malloc(&out, 64, QLORA_NUM_CATEGORIES); });
  expect_status("qlora_malloc", "2^47 bytes", QLORA_ERR_OUT_OF_MEMORY,
                [&](Lib& l, int) { return l.qlora_malloc(&out, 1ull << 47, kWs); });
  expect_status("qlora_free", "a stack address (not from the library)", kInvalid,
                [&](Lib& l, int) { return l.qlora_free(&local); });
  {
    Twin t(4096);
    expect_status("qlora_free", "an interior pointer (+256)", kInvalid,
                  [&](Lib& l, int s) { return l.qlora_free((char*)t[s] + 256); });
  }
  {
    void* p[2] = {};
    {
      Case c("qlora_free", "NULL (a no-op), then a live allocation");
      c.run([](Lib& l, int) { return l.qlora_free(nullptr); });
      c.run([&](Lib& l, int s) {
        const qlora_status st = l.qlora_malloc(&p[s], 512, kWs);
        return st != QLORA_OK ? st : l.qlora_free(p[s]);
      });
    }
    expect_status("qlora_free", "the same pointer twice", kInvalid, [&](Lib& l, int s) { return l.qlora_free(p[s]); });
  }
  expect_status("qlora_memory_stats", "null out", kInvalid, [](Lib& l, int) { return l.qlora_memory_stats(nullptr); });
}

// ---- host pool ----------------------------------------------------------------------------------------

void test_host_memory(Rng& rng) {
  const uint64_t n = 12345;
  const std::vector<uint8_t> data = rng.bytes(n);
  {
    Case c("qlora_host_malloc", "12345 B: zero-filled, pool figures, round trip");
    void* h[2] = {};
    uint64_t before[2];
    for (int s = 0; s < 2; s++) before[s] = stats(s).host_current;
    c.run([&](Lib& l, int s) { return l.qlora_host_malloc(&h[s], n); });
    const std::vector<uint8_t> zeros(n, 0);
    for (int s = 0; s < 2; s++) {
      c.check(h[s] != nullptr, "a null host pointer");
      c.check(stats(s).host_current - before[s] == n, "host_current did not grow by the request");
      c.check(h[s] && memcmp(h[s], zeros.data(), n) == 0, "the new host memory is not zero-filled");
    }
    Twin d(n);
    std::vector<uint8_t> back[2];
    c.run([&](Lib& l, int s) {
      memcpy(h[s], data.data(), n);  // host memory: the caller writes it directly
      qlora_status st = l.qlora_memcpy(d[s], h[s], n, QLORA_HOST_TO_DEVICE);
      if (st == QLORA_OK) memset(h[s], 0, n);
      if (st == QLORA_OK) st = l.qlora_memcpy(h[s], d[s], n, QLORA_DEVICE_TO_HOST);
      back[s].assign((const uint8_t*)h[s], (const uint8_t*)h[s] + n);
      return st;
    });
    c.compare_host("round trip", back[0].data(), back[1].data(), QLORA_U8, n, bit_exact());
    c.check(back[0] == data && back[1] == data, "the round trip changed the bytes");
    c.run([&](Lib& l, int s) { return l.qlora_host_free(h[s]); });
    for (int s = 0; s < 2; s++) c.check(stats(s).host_current == before[s], "host_current did not come back");
  }
  void* out = nullptr;
  int local = 0;
  expect_status("qlora_host_malloc", "null out", kInvalid,
                [](Lib& l, int) { return l.qlora_host_malloc(nullptr, 64); });
  expect_status("qlora_host_malloc", "0 bytes", kInvalid, [&](Lib& l, int) { return l.qlora_host_malloc(&out, 0); });
  expect_status("qlora_host_malloc", "2^47 bytes", QLORA_ERR_OUT_OF_MEMORY,
                [&](Lib& l, int) { return l.qlora_host_malloc(&out, 1ull << 47); });
  expect_status("qlora_host_free", "a stack address", kInvalid, [&](Lib& l, int) { return l.qlora_host_free(&local); });
  void* h[2] = {};
  {
    Case c("qlora_host_free", "NULL (a no-op), then a live allocation");
    c.run([](Lib& l, int) { return l.qlora_host_free(nullptr); });
    c.run([&](Lib& l, int s) {
      const qlora_status st = l.qlora_host_malloc(&h[s], 100);
      return st != QLORA_OK ? st : l.qlora_host_free(h[s]);
    });
  }
  expect_status("qlora_host_free", "the same pointer twice", kInvalid,
                [&](Lib& l, int s) { return l.qlora_host_free(h[s]); });
}

// ---- copies and memset --------------------------------------------------------------------------------

void test_memcpy(Rng& rng) {
  for (uint64_t n : {(uint64_t)1, (uint64_t)4099, pick(70001, (16u << 20) + 3)}) {
    const std::vector<uint8_t> data = rng.bytes(n), zeros(n, 0);
    Twin a(n), b(zeros);
    {
      Case c("qlora_memcpy", fmt("%llu bytes: H2D, D2D (ragged offsets), D2H", (unsigned long long)n));
      c.run([&](Lib& l, int s) { return l.qlora_memcpy(a[s], data.data(), n, QLORA_HOST_TO_DEVICE); });
      // n > 5: bytes [1, n - 4) of a go to [3, n - 2) of b.
      const uint64_t src = n > 5 ? 1 : 0, dst = n > 5 ? 3 : 0, len = n > 5 ? n - 5 : n;
      c.run([&](Lib& l, int s) { return l.qlora_memcpy(b.u8(s) + dst, a.u8(s) + src, len, QLORA_DEVICE_TO_DEVICE); });
      c.compare("a", a, QLORA_U8, n, bit_exact());
      c.compare("b", b, QLORA_U8, n, bit_exact());
      std::vector<uint8_t> want = zeros;
      memcpy(want.data() + dst, data.data() + src, len);
      for (int s = 0; s < 2; s++) c.check(a.download(s) == data && b.download(s) == want, "copies changed the bytes");
    }
    {
      Case c("qlora_memset", fmt("%llu bytes: 0xA5 on a ragged middle part", (unsigned long long)n));
      const uint64_t off = n > 8 ? 7 : 0, len = n > 8 ? n / 2 + 1 : n;
      c.run([&](Lib& l, int s) { return l.qlora_memset(a.u8(s) + off, 0xA5, len); });
      c.compare("a", a, QLORA_U8, n, bit_exact());
      std::vector<uint8_t> want = data;
      memset(want.data() + off, 0xA5, len);
      for (int s = 0; s < 2; s++) c.check(a.download(s) == want, "memset wrote the wrong bytes");
    }
  }
  Twin t(64);
  uint8_t host[64] = {};
  {
    Case c("qlora_memcpy", "0 bytes, every kind; qlora_memset 0 bytes");
    for (int kind = 0; kind < 3; kind++)
      c.run([&](Lib& l, int s) {
        return l.qlora_memcpy(kind == 1 ? (void*)host : t[s], kind == 0 ? (void*)host : t[s], 0, kind);
      });
    c.run([&](Lib& l, int s) { return l.qlora_memset(t[s], 1, 0); });
  }
  expect_status("qlora_memcpy", "null dst", kInvalid,
                [&](Lib& l, int) { return l.qlora_memcpy(nullptr, host, 8, QLORA_HOST_TO_DEVICE); });
  expect_status("qlora_memcpy", "null src", kInvalid,
                [&](Lib& l, int s) { return l.qlora_memcpy(t[s], nullptr, 8, QLORA_HOST_TO_DEVICE); });
  expect_status("qlora_memcpy", "kind 3", kInvalid, [&](Lib& l, int s) { return l.qlora_memcpy(t[s], host, 8, 3); });
  expect_status("qlora_memcpy", "kind -1", kInvalid, [&](Lib& l, int s) { return l.qlora_memcpy(t[s], host, 8, -1); });
  expect_status("qlora_memset", "null pointer", kInvalid, [](Lib& l, int) { return l.qlora_memset(nullptr, 0, 8); });
  expect_status("qlora_memset", "value 256", kInvalid, [&](Lib& l, int s) { return l.qlora_memset(t[s], 256, 8); });
  expect_status("qlora_memset", "value -1", kInvalid, [&](Lib& l, int s) { return l.qlora_memset(t[s], -1, 8); });
}

// ---- casts and fills (bit-exact but the normal fill: libm's log, cos and sin) --------------------------

void test_cast(Rng& rng) {
  for (int32_t sd : kFloatDtypes)
    for (int32_t dd : kFloatDtypes)
      for (uint64_t n : {(uint64_t)1, (uint64_t)4097, pick(65537, (4u << 20) + 3)}) {
        // Random bit patterns: every class of value (NaN, Inf, subnormals, both zeros) shows up.
        Twin src(rng.bytes(n * dtype_size(sd))), dst(n * dtype_size(dd));
        Case c("qlora_cast",
               fmt("%s -> %s, n %llu, random bit patterns", dtype_name(sd), dtype_name(dd), (unsigned long long)n));
        c.run([&](Lib& l, int s) { return l.qlora_cast(src[s], sd, dst[s], dd, n); });
        c.compare("dst", dst, dd, n, bit_exact());
      }
  Twin t(64);
  {
    Case c("qlora_cast", "n 0");
    c.run([&](Lib& l, int s) { return l.qlora_cast(t[s], QLORA_F32, t[s], QLORA_BF16, 0); });
  }
  expect_status("qlora_cast", "null src", kInvalid,
                [&](Lib& l, int s) { return l.qlora_cast(nullptr, 0, t[s], 1, 4); });
  expect_status("qlora_cast", "null dst", kInvalid,
                [&](Lib& l, int s) { return l.qlora_cast(t[s], 0, nullptr, 1, 4); });
  expect_status("qlora_cast", "src dtype u8", kInvalid,
                [&](Lib& l, int s) { return l.qlora_cast(t[s], QLORA_U8, t[s], 1, 4); });
  expect_status("qlora_cast", "dst dtype i32", kInvalid,
                [&](Lib& l, int s) { return l.qlora_cast(t[s], 0, t[s], QLORA_I32, 4); });
  expect_status("qlora_cast", "f32 src misaligned (+2 bytes)", kInvalid,
                [&](Lib& l, int s) { return l.qlora_cast(t.u8(s) + 2, QLORA_F32, t[s], QLORA_BF16, 4); });
}

void test_fill_normal() {
  for (int32_t dt : kFloatDtypes)
    for (uint64_t n : {(uint64_t)1, (uint64_t)1001, pick(65537, (4u << 20) + 1)}) {
      Twin t(n * dtype_size(dt));
      Case c("qlora_fill_normal", fmt("%s n %llu, N(0.5, 2^2), seed 42", dtype_name(dt), (unsigned long long)n));
      c.run([&](Lib& l, int s) { return l.qlora_fill_normal(t[s], dt, n, 0.5f, 2.0f, 42); });
      c.compare("values", t, dt, n, rounding_tol(dt));
    }
  {
    Twin t(1001 * 4);
    Case c("qlora_fill_normal", "f32 n 1001, std 0: every value is the mean");
    c.run([&](Lib& l, int s) { return l.qlora_fill_normal(t[s], QLORA_F32, 1001, -1.25f, 0.0f, 7); });
    c.compare("values", t, QLORA_F32, 1001, bit_exact());
    const std::vector<float> mean(1001, -1.25f);
    for (int s = 0; s < 2; s++) c.check(t.download(s) == encode(mean, QLORA_F32), "a value is not the mean");
  }
  {
    // A value depends on (seed, index) only: the first 10 of a fill of 1001 are a fill of 10.
    Twin longer(1001 * 4), shorter(10 * 4);
    Case c("qlora_fill_normal", "f32: n 10 is the prefix of n 1001 (each library)");
    c.run([&](Lib& l, int s) { return l.qlora_fill_normal(longer[s], QLORA_F32, 1001, 0.0f, 1.0f, 9); });
    c.run([&](Lib& l, int s) { return l.qlora_fill_normal(shorter[s], QLORA_F32, 10, 0.0f, 1.0f, 9); });
    for (int s = 0; s < 2; s++) {
      const std::vector<uint8_t> a = longer.download(s, 40), b = shorter.download(s);
      c.expect_values(s ? "test prefix" : "ref prefix", a.data(), b.data(), QLORA_F32, 10, bit_exact());
    }
  }
  Twin t(64);
  {
    Case c("qlora_fill_normal", "n 0");
    c.run([&](Lib& l, int s) { return l.qlora_fill_normal(t[s], QLORA_F32, 0, 0.0f, 1.0f, 1); });
  }
  expect_status("qlora_fill_normal", "std -1", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_normal(t[s], 0, 4, 0, -1, 1); });
  expect_status("qlora_fill_normal", "std NaN", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_normal(t[s], 0, 4, 0, NAN, 1); });
  expect_status("qlora_fill_normal", "std Inf", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_normal(t[s], 0, 4, 0, INFINITY, 1); });
  expect_status("qlora_fill_normal", "dtype u8", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_normal(t[s], QLORA_U8, 4, 0, 1, 1); });
  expect_status("qlora_fill_normal", "null pointer", kInvalid,
                [](Lib& l, int) { return l.qlora_fill_normal(nullptr, 0, 4, 0, 1, 1); });
}

void test_fill_uniform() {
  for (int32_t dt : kFloatDtypes)
    for (uint64_t n : {(uint64_t)1, (uint64_t)999, pick(65537, (4u << 20) + 1)}) {
      Twin t(n * dtype_size(dt));
      Case c("qlora_fill_uniform", fmt("%s n %llu, [-2, 3), seed 5", dtype_name(dt), (unsigned long long)n));
      c.run([&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], dt, n, -2.0f, 3.0f, 5); });
      c.compare("values", t, dt, n, bit_exact());
    }
  {
    Twin t(77 * 2);
    Case c("qlora_fill_uniform", "bf16 n 77, low = high = 1.5");
    c.run([&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], QLORA_BF16, 77, 1.5f, 1.5f, 5); });
    c.compare("values", t, QLORA_BF16, 77, bit_exact());
  }
  Twin t(64);
  {
    Case c("qlora_fill_uniform", "n 0");
    c.run([&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], QLORA_F32, 0, 0.0f, 1.0f, 1); });
  }
  expect_status("qlora_fill_uniform", "low > high", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], 0, 4, 2, 1, 1); });
  expect_status("qlora_fill_uniform", "low NaN", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], 0, 4, NAN, 1, 1); });
  expect_status("qlora_fill_uniform", "high Inf", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], 0, 4, 0, INFINITY, 1); });
  expect_status("qlora_fill_uniform", "dtype i32", kInvalid,
                [&](Lib& l, int s) { return l.qlora_fill_uniform(t[s], QLORA_I32, 4, 0, 1, 1); });
  expect_status("qlora_fill_uniform", "null pointer", kInvalid,
                [](Lib& l, int) { return l.qlora_fill_uniform(nullptr, 0, 4, 0, 1, 1); });
}

// ---- axpby and dropout (bit-exact: the same f32 operations, each rounded on its own) -------------------

void test_axpby(Rng& rng) {
  struct Coef {
    float alpha, beta;
    bool nan_y;
  };
  const Coef coefs[] = {{0.5f, -1.25f, false}, {2.0f, 0.0f, true}, {-1.0f, 1.0f, false}};
  for (int32_t dt : kFloatDtypes)
    for (uint64_t n : {(uint64_t)1, (uint64_t)1001, pick(65539, (4u << 20) + 5)})
      for (const Coef& k : coefs) {
        Values x(rng, n, dt, -3, 3), y(k.nan_y ? Values(std::vector<float>(n, NAN), dt) : Values(rng, n, dt, -3, 3));
        Twin tx(x.bytes), ty(y.bytes);
        Case c("qlora_axpby", fmt("%s n %llu, alpha %g beta %g%s", dtype_name(dt), (unsigned long long)n, k.alpha,
                                  k.beta, k.nan_y ? " (y NaN)" : ""));
        c.run([&](Lib& l, int s) { return l.qlora_axpby(k.alpha, tx[s], k.beta, ty[s], dt, n); });
        c.compare("y", ty, dt, n, bit_exact());
        if (k.nan_y)
          for (int s = 0; s < 2; s++) {
            const std::vector<uint8_t> out = ty.download(s);
            for (uint64_t i = 0; i < n; i++)
              if (std::isnan(decode(out.data(), dt, i))) {
                c.fail("%s: beta 0 kept the NaN of y[%llu]", kSide[s], (unsigned long long)i);
                break;
              }
          }
      }
  Twin t(64);
  {
    Case c("qlora_axpby", "n 0");
    c.run([&](Lib& l, int s) { return l.qlora_axpby(1.0f, t[s], 1.0f, t[s], QLORA_F32, 0); });
  }
  expect_status("qlora_axpby", "null x", kInvalid,
                [&](Lib& l, int s) { return l.qlora_axpby(1, nullptr, 1, t[s], 0, 4); });
  expect_status("qlora_axpby", "null y", kInvalid,
                [&](Lib& l, int s) { return l.qlora_axpby(1, t[s], 1, nullptr, 0, 4); });
  expect_status("qlora_axpby", "dtype u8", kInvalid,
                [&](Lib& l, int s) { return l.qlora_axpby(1, t[s], 1, t[s], QLORA_U8, 4); });
  expect_status("qlora_axpby", "f32 y misaligned (+2 bytes)", kInvalid,
                [&](Lib& l, int s) { return l.qlora_axpby(1, t[s], 1, t.u8(s) + 2, QLORA_F32, 4); });
}

void test_dropout(Rng& rng) {
  for (int32_t dt : kFloatDtypes)
    for (uint64_t n : {(uint64_t)1, (uint64_t)1001, pick(65537, (4u << 20) + 3)})
      for (float p : {0.0f, 0.1f, 0.5f, 0.95f})
        for (bool in_place : {false, true}) {
          if (in_place && p != 0.5f) continue;  // x == y once per size is enough
          Values x(rng, n, dt, -2, 2);
          Twin tx(x.bytes), ty(n * dtype_size(dt));
          Case c("qlora_dropout", fmt("%s n %llu, p %g%s", dtype_name(dt), (unsigned long long)n, p,
                                      in_place ? ", in place (x == y)" : ""));
          c.run([&](Lib& l, int s) { return l.qlora_dropout(tx[s], in_place ? tx[s] : ty[s], dt, n, p, 1234); });
          c.compare("y", in_place ? tx : ty, dt, n, bit_exact());
        }
  Twin t(64);
  {
    Case c("qlora_dropout", "n 0");
    c.run([&](Lib& l, int s) { return l.qlora_dropout(t[s], t[s], QLORA_F32, 0, 0.5f, 1); });
  }
  expect_status("qlora_dropout", "p 1", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dropout(t[s], t[s], 0, 4, 1.0f, 1); });
  expect_status("qlora_dropout", "p -0.01", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dropout(t[s], t[s], 0, 4, -0.01f, 1); });
  expect_status("qlora_dropout", "p NaN", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dropout(t[s], t[s], 0, 4, NAN, 1); });
  expect_status("qlora_dropout", "dtype i32", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dropout(t[s], t[s], QLORA_I32, 4, 0.5f, 1); });
  expect_status("qlora_dropout", "null x", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dropout(nullptr, t[s], 0, 4, 0.5f, 1); });
}

// ---- code tables (host outputs, bit-exact) -------------------------------------------------------------

void test_maps() {
  for (int32_t qt : {QLORA_NF4, QLORA_FP4, QLORA_INT4}) {
    float out[2][16];
    Case c("qlora_quant_map", fmt("quant type %d", qt));
    c.run([&](Lib& l, int s) { return l.qlora_quant_map(qt, out[s]); });
    c.compare_host("map", out[0], out[1], QLORA_F32, 16, bit_exact());
  }
  expect_status("qlora_quant_map", "quant type 3", kInvalid, [](Lib& l, int) {
    float o[16];
    return l.qlora_quant_map(3, o);
  });
  expect_status("qlora_quant_map", "quant type -1", kInvalid, [](Lib& l, int) {
    float o[16];
    return l.qlora_quant_map(-1, o);
  });
  expect_status("qlora_quant_map", "null out", kInvalid, [](Lib& l, int) { return l.qlora_quant_map(0, nullptr); });
  {
    float out[2][256];
    Case c("qlora_dynamic_map", "signed, 256 values");
    c.run([&](Lib& l, int s) { return l.qlora_dynamic_map(out[s]); });
    c.compare_host("map", out[0], out[1], QLORA_F32, 256, bit_exact());
  }
  {
    float out[2][256];
    Case c("qlora_dynamic_map_unsigned", "256 values");
    c.run([&](Lib& l, int s) { return l.qlora_dynamic_map_unsigned(out[s]); });
    c.compare_host("map", out[0], out[1], QLORA_F32, 256, bit_exact());
  }
  expect_status("qlora_dynamic_map", "null out", kInvalid, [](Lib& l, int) { return l.qlora_dynamic_map(nullptr); });
  expect_status("qlora_dynamic_map_unsigned", "null out", kInvalid,
                [](Lib& l, int) { return l.qlora_dynamic_map_unsigned(nullptr); });
}

// ---- 4-bit quantization (bit-exact: the same IEEE operations and thresholds) ---------------------------

void test_quantize_4bit(Rng& rng) {
  struct Shape {
    uint64_t n, bs;
  };
  const Shape shapes[] = {{1, 64}, {31, 32}, {4095, 64}, {pick(70001, (4u << 20) + 17), 256}};
  for (int32_t qt : {QLORA_NF4, QLORA_FP4, QLORA_INT4})
    for (int32_t dt : kFloatDtypes)
      for (const Shape& sh : shapes) {
        const uint64_t n = sh.n, bs = sh.bs, blocks = ceil_div(n, bs);
        std::vector<float> v = rng.normals(n, 3.0f);
        if (n > 2 * bs) std::fill(v.begin() + (long)bs, v.begin() + (long)(2 * bs), 0.0f);  // an all-zero block
        Twin x(encode(v, dt)), packed((n + 1) / 2, QLORA_CAT_QUANTIZED_WEIGHTS),
            absmax(blocks * 4, QLORA_CAT_QUANT_CONSTANTS);
        {
          Case c("qlora_quantize_4bit", fmt("type %d %s n %llu blocksize %llu", qt, dtype_name(dt),
                                            (unsigned long long)n, (unsigned long long)bs));
          c.run([&](Lib& l, int s) { return l.qlora_quantize_4bit(x[s], dt, n, qt, bs, packed.u8(s), absmax.f32(s)); });
          c.compare("packed", packed, QLORA_U8, (n + 1) / 2 - (n % 2), bit_exact());  // whole pairs
          if (n % 2) {  // the high nibble of the last byte (its low nibble is padding)
            const uint8_t r = packed.download(0, 1, n / 2)[0] >> 4, t = packed.download(1, 1, n / 2)[0] >> 4;
            c.compare_host("last nibble", &r, &t, QLORA_U8, 1, bit_exact());
          }
          c.compare("absmax", absmax, QLORA_F32, blocks, bit_exact());
        }
        // Dequantize REF's codes on both, to x's dtype and to f32.
        const std::vector<uint8_t> codes = packed.download(0), scales = absmax.download(0);
        packed.upload(codes.data(), codes.size());
        absmax.upload(scales.data(), scales.size());
        for (int32_t od : {dt, (int32_t)QLORA_F32}) {
          Twin out(n * dtype_size(od));
          Case c("qlora_dequantize_4bit", fmt("type %d -> %s n %llu blocksize %llu", qt, dtype_name(od),
                                              (unsigned long long)n, (unsigned long long)bs));
          c.run([&](Lib& l, int s) {
            const qlora_weight4 w = plain4(packed.u8(s), absmax.f32(s), qt, bs);
            return l.qlora_dequantize_4bit(&w, n, out[s], od);
          });
          c.compare("out", out, od, n, bit_exact());
          if (dt == QLORA_F32) break;  // f32 -> f32 once
        }
      }
  {
    // Arbitrary codes and scales (every nibble, code 0 of Int4 included), odd n, blocksize 4096.
    const uint64_t n = pick(9001, (1u << 20) + 1), bs = 4096, blocks = ceil_div(n, bs);
    Twin packed(rng.bytes((n + 1) / 2)), absmax(encode(rng.uniforms(blocks, 0.0f, 5.0f), QLORA_F32));
    for (int32_t qt : {QLORA_NF4, QLORA_FP4, QLORA_INT4})
      for (int32_t od : kFloatDtypes) {
        Twin out(n * dtype_size(od));
        Case c("qlora_dequantize_4bit",
               fmt("type %d -> %s n %llu, random codes", qt, dtype_name(od), (unsigned long long)n));
        c.run([&](Lib& l, int s) {
          const qlora_weight4 w = plain4(packed.u8(s), absmax.f32(s), qt, bs);
          return l.qlora_dequantize_4bit(&w, n, out[s], od);
        });
        c.compare("out", out, od, n, bit_exact());
      }
  }
  {
    // Double-quantized constants read as they are: the same bits as dequantizing with the absmax that
    // qlora_double_dequantize restores from them, on each library.
    const uint64_t n = pick(30001, (1u << 20) + 3), bs = 64, blocks = ceil_div(n, bs), nbs = 256;
    Twin x(encode(rng.normals(n, 0.05f), QLORA_F32)), packed((n + 1) / 2, QLORA_CAT_QUANTIZED_WEIGHTS),
        absmax(blocks * 4, QLORA_CAT_QUANT_CONSTANTS), codes(blocks, QLORA_CAT_QUANT_CONSTANTS),
        nested(ceil_div(blocks, nbs) * 4, QLORA_CAT_QUANT_CONSTANTS), restored(blocks * 4);
    float offset = 0.0f;
    if (lib(0).qlora_quantize_4bit(x[0], QLORA_F32, n, QLORA_NF4, bs, packed.u8(0), absmax.f32(0)) != QLORA_OK ||
        lib(0).qlora_double_quantize(absmax.f32(0), blocks, nbs, codes.u8(0), nested.f32(0), &offset) != QLORA_OK)
      throw std::runtime_error(std::string("ref: quantizing failed: ") + lib(0).qlora_last_error());
    for (Twin* t : {&packed, &codes, &nested}) {
      const std::vector<uint8_t> bytes = t->download(0);
      t->upload(bytes.data(), bytes.size());
    }
    for (int32_t od : kFloatDtypes) {
      Twin out(n * dtype_size(od)), want(n * dtype_size(od));
      Case c("qlora_dequantize_4bit", fmt("nf4 double-quantized -> %s n %llu", dtype_name(od), (unsigned long long)n));
      c.run([&](Lib& l, int s) {
        qlora_weight4 w = plain4(packed.u8(s), nullptr, QLORA_NF4, bs);
        w.absmax_codes = codes.u8(s);
        w.nested_absmax = nested.f32(s);
        w.offset = offset;
        w.nested_blocksize = nbs;
        return l.qlora_dequantize_4bit(&w, n, out[s], od);
      });
      c.compare("out", out, od, n, bit_exact());
      for (int s = 0; s < 2; s++) {
        const qlora_weight4 w = plain4(packed.u8(s), restored.f32(s), QLORA_NF4, bs);
        if (lib(s).qlora_double_dequantize(codes.u8(s), nested.f32(s), offset, blocks, nbs, restored.f32(s)) !=
                QLORA_OK ||
            lib(s).qlora_dequantize_4bit(&w, n, want[s], od) != QLORA_OK)
          throw std::runtime_error(std::string(kSide[s]) + ": the restored absmax path failed");
        c.expect_values(s ? "test vs its restored absmax" : "ref vs its restored absmax", want.download(s).data(),
                        out.download(s).data(), od, n, bit_exact());
      }
    }
  }
  // Error paths: x holds 200 finite values (f32, or another dtype with a NaN or an Inf at [150]).
  std::vector<float> v = rng.normals(200, 1.0f);
  Twin x(encode(v, QLORA_F32)), packed(128), absmax(64);
  auto quantize = [&](uint64_t n, int32_t qt, uint64_t bs, int32_t dt = QLORA_F32) {
    return [&, n, qt, bs, dt](Lib& l, int s) {
      return l.qlora_quantize_4bit(x[s], dt, n, qt, bs, packed.u8(s), absmax.f32(s));
    };
  };
  const char* q4 = "qlora_quantize_4bit";
  expect_status(q4, "n 0", kInvalid, quantize(0, 0, 64));
  expect_status(q4, "blocksize 48 (not a power of two)", kInvalid, quantize(200, 0, 48));
  expect_status(q4, "blocksize 16 (too small)", kInvalid, quantize(200, 0, 16));
  expect_status(q4, "blocksize 8192 (too large)", kInvalid, quantize(200, 0, 8192));
  expect_status(q4, "blocksize 0", kInvalid, quantize(200, 0, 0));
  expect_status(q4, "quant type 3", kInvalid, quantize(200, 3, 64));
  expect_status(q4, "dtype u8", kInvalid, quantize(200, 0, 64, QLORA_U8));
  expect_status(q4, "null x", kInvalid, [&](Lib& l, int s) {
    return l.qlora_quantize_4bit(nullptr, 0, 200, 0, 64, packed.u8(s), absmax.f32(s));
  });
  expect_status(q4, "null packed", kInvalid,
                [&](Lib& l, int s) { return l.qlora_quantize_4bit(x[s], 0, 200, 0, 64, nullptr, absmax.f32(s)); });
  expect_status(q4, "null absmax", kInvalid,
                [&](Lib& l, int s) { return l.qlora_quantize_4bit(x[s], 0, 200, 0, 64, packed.u8(s), nullptr); });
  expect_status(q4, "f32 x misaligned (+2 bytes)", kInvalid, [&](Lib& l, int s) {
    return l.qlora_quantize_4bit(x.u8(s) + 2, 0, 100, 0, 64, packed.u8(s), absmax.f32(s));
  });
  for (int32_t dt : {QLORA_F32, QLORA_BF16, QLORA_F16})
    for (float bad : {NAN, INFINITY}) {
      const std::vector<uint8_t> finite = encode(v, dt), one = encode({bad}, dt);
      x.upload(finite.data(), finite.size());
      x.upload(one.data(), one.size(), 150 * dtype_size(dt));
      expect_status(q4, fmt("%s at x[150] of 200 (%s)", std::isnan(bad) ? "NaN" : "Inf", dtype_name(dt)),
                    QLORA_ERR_NON_FINITE, quantize(200, 1, 64, dt));
    }
  const char* d4 = "qlora_dequantize_4bit";
  auto dequantize = [&](uint64_t n, int32_t od, void (*edit)(qlora_weight4&)) {
    return [&, n, od, edit](Lib& l, int s) {
      qlora_weight4 w = plain4(packed.u8(s), absmax.f32(s), QLORA_NF4, 64);
      edit(w);
      return l.qlora_dequantize_4bit(&w, n, x[s], od);
    };
  };
  expect_status(d4, "n 0", kInvalid, dequantize(0, QLORA_F32, [](qlora_weight4&) {}));
  expect_status(d4, "blocksize 48", kInvalid, dequantize(100, QLORA_F32, [](qlora_weight4& w) { w.blocksize = 48; }));
  expect_status(d4, "quant type -1", kInvalid, dequantize(100, QLORA_F32, [](qlora_weight4& w) { w.quant_type = -1; }));
  expect_status(d4, "out dtype i32", kInvalid, dequantize(100, QLORA_I32, [](qlora_weight4&) {}));
  expect_status(d4, "null packed", kInvalid, dequantize(100, QLORA_F32, [](qlora_weight4& w) { w.packed = nullptr; }));
  expect_status(d4, "no absmax and no double-quantized constants", kInvalid,
                dequantize(100, QLORA_F32, [](qlora_weight4& w) { w.absmax = nullptr; }));
  expect_status(d4, "double-quantized, nested blocksize 0", kInvalid, dequantize(100, QLORA_F32, [](qlora_weight4& w) {
                  w.absmax_codes = w.packed;
                  w.nested_absmax = w.absmax;
                  w.absmax = nullptr;
                }));
  expect_status(d4, "double-quantized, offset NaN", kInvalid, dequantize(100, QLORA_F32, [](qlora_weight4& w) {
                  w.absmax_codes = w.packed;
                  w.nested_absmax = w.absmax;
                  w.absmax = nullptr;
                  w.nested_blocksize = 256;
                  w.offset = NAN;
                }));
  expect_status(d4, "null descriptor", kInvalid,
                [&](Lib& l, int s) { return l.qlora_dequantize_4bit(nullptr, 100, x[s], QLORA_F32); });
  expect_status(d4, "null out", kInvalid, [&](Lib& l, int s) {
    const qlora_weight4 w = plain4(packed.u8(s), absmax.f32(s), QLORA_NF4, 64);
    return l.qlora_dequantize_4bit(&w, 100, nullptr, QLORA_F32);
  });
}

// ---- double quantization (bit-exact: the mean in the fixed order of codes.h) ---------------------------

void test_double_quantize(Rng& rng) {
  struct Shape {
    uint64_t n, bs;
    bool constant;
  };
  const Shape shapes[] = {{1, 256, false},
                          {255, 32, false},
                          {300, 256, true},
                          {4097, 256, false},
                          {pick(70001, (1u << 20) + 1), 4096, false},
                          {pick(20000, 3000000), 256, false}};
  for (const Shape& sh : shapes) {
    const uint64_t n = sh.n, bs = sh.bs, blocks = ceil_div(n, bs);
    // absmax of 4-bit blocks: positive; a constant array makes every (absmax - mean) zero.
    const std::vector<float> a = sh.constant ? std::vector<float>(n, 1.5f) : rng.uniforms(n, 0.01f, 4.0f);
    Twin absmax(encode(a, QLORA_F32), QLORA_CAT_QUANT_CONSTANTS), codes(n, QLORA_CAT_QUANT_CONSTANTS),
        nested(blocks * 4, QLORA_CAT_QUANT_CONSTANTS), back(n * 4);
    float offset[2] = {0.0f, 0.0f};
    {
      Case c("qlora_double_quantize", fmt("n %llu nested blocksize %llu%s", (unsigned long long)n,
                                          (unsigned long long)bs, sh.constant ? ", all equal" : ""));
      c.run([&](Lib& l, int s) {
        return l.qlora_double_quantize(absmax.f32(s), n, bs, codes.u8(s), nested.f32(s), &offset[s]);
      });
      c.compare("codes", codes, QLORA_U8, n, bit_exact());
      c.compare("nested_absmax", nested, QLORA_F32, blocks, bit_exact());
      c.compare_host("offset", &offset[0], &offset[1], QLORA_F32, 1, bit_exact());
    }
    // Dequantize REF's codes on both.
    const std::vector<uint8_t> rc = codes.download(0), rn = nested.download(0);
    codes.upload(rc.data(), rc.size());
    nested.upload(rn.data(), rn.size());
    Case c("qlora_double_dequantize",
           fmt("n %llu nested blocksize %llu", (unsigned long long)n, (unsigned long long)bs));
    c.run([&](Lib& l, int s) {
      return l.qlora_double_dequantize(codes.u8(s), nested.f32(s), offset[0], n, bs, back.f32(s));
    });
    c.compare("absmax", back, QLORA_F32, n, bit_exact());
  }
  Twin absmax(encode(rng.uniforms(100, 0.1f, 1.0f), QLORA_F32)), codes(100), nested(64);
  float offset = 0.0f;
  const char* dq = "qlora_double_quantize";
  auto quantize = [&](uint64_t n, uint64_t bs) {
    return [&, n, bs](Lib& l, int s) {
      return l.qlora_double_quantize(absmax.f32(s), n, bs, codes.u8(s), nested.f32(s), &offset);
    };
  };
  expect_status(dq, "n 0", kInvalid, quantize(0, 256));
  expect_status(dq, "nested blocksize 100", kInvalid, quantize(100, 100));
  expect_status(dq, "nested blocksize 8192", kInvalid, quantize(100, 8192));
  expect_status(dq, "null codes", kInvalid, [&](Lib& l, int s) {
    return l.qlora_double_quantize(absmax.f32(s), 100, 256, nullptr, nested.f32(s), &offset);
  });
  expect_status(dq, "null offset_out", kInvalid, [&](Lib& l, int s) {
    return l.qlora_double_quantize(absmax.f32(s), 100, 256, codes.u8(s), nested.f32(s), nullptr);
  });
  const float nan = NAN;
  absmax.upload(&nan, 4, 4 * 57);
  expect_status(dq, "NaN at absmax[57]", QLORA_ERR_NON_FINITE, quantize(100, 256));
  const char* dd = "qlora_double_dequantize";
  expect_status(dd, "offset NaN", QLORA_ERR_NON_FINITE, [&](Lib& l, int s) {
    return l.qlora_double_dequantize(codes.u8(s), nested.f32(s), NAN, 100, 256, absmax.f32(s));
  });
  expect_status(dd, "n 0", kInvalid, [&](Lib& l, int s) {
    return l.qlora_double_dequantize(codes.u8(s), nested.f32(s), 0, 0, 256, absmax.f32(s));
  });
  expect_status(dd, "nested blocksize 0", kInvalid, [&](Lib& l, int s) {
    return l.qlora_double_dequantize(codes.u8(s), nested.f32(s), 0, 100, 0, absmax.f32(s));
  });
  expect_status(dd, "null absmax", kInvalid, [&](Lib& l, int s) {
    return l.qlora_double_dequantize(codes.u8(s), nested.f32(s), 0, 100, 256, nullptr);
  });
}

// ---- GEMM (tolerance: accumulation order) ---------------------------------------------------------------

struct GemmSpec {
  int ta, tb;
  uint64_t m, n, k;
  int32_t ab, cd;
  uint64_t batch, sa, sb, sc;  // strides in elements (0: one matrix for the whole batch)
  float alpha, beta;           // beta 0: C starts as NaN, which must be ignored
};

void gemm_case(Rng& rng, const GemmSpec& g, const char* extra) {
  const uint64_t na = g.sa ? (g.batch - 1) * g.sa + g.m * g.k : g.m * g.k;
  const uint64_t nb = g.sb ? (g.batch - 1) * g.sb + g.k * g.n : g.k * g.n;
  const uint64_t nc = (g.batch - 1) * g.sc + g.m * g.n;
  Values a(rng, na, g.ab, -1, 1), b(rng, nb, g.ab, -1, 1);
  Values c0 = g.beta == 0.0f ? Values(std::vector<float>(nc, NAN), g.cd) : Values(rng, nc, g.cd, -1, 1);
  Twin ta(a.bytes), tb(b.bytes), tc(c0.bytes);
  Case c("qlora_gemm", fmt("%s->%s %llux%llux%llu %s%s%s", dtype_name(g.ab), dtype_name(g.cd), (unsigned long long)g.m,
                           (unsigned long long)g.n, (unsigned long long)g.k, tn(g.ta), tn(g.tb), extra));
  c.run([&](Lib& l, int s) {
    return l.qlora_gemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, ta[s], tb[s], g.ab, g.beta, tc[s], g.cd, g.batch, g.sa,
                        g.sb, g.sc);
  });
  c.compare("C", tc, g.cd, nc, gemm_tol(g.alpha, a.max, b.max, g.k, 1e-5, g.beta, g.beta == 0.0f ? 0.0 : c0.max, g.cd));
}

void test_gemm(Rng& rng) {
  struct Mnk {
    uint64_t m, n, k;
  };
  std::vector<Mnk> shapes = {{1, 1, 1}, {7, 5, 3}, {17, 33, 65}, {64, 64, 64}, {128, 96, 80}};
  if (!g_quick) shapes.insert(shapes.end(), {{1024, 1024, 1024}, {1000, 1023, 1025}});
  for (const Mnk& s : shapes)
    for (int32_t ab : kActDtypes)
      for (int32_t cd : kActDtypes)
        for (int t = 0; t < 4; t++) {
          const int ta = t >> 1, tb = t & 1;
          if (ab != cd && ta != tb) continue;  // mixed dtypes: NN and TT only
          const bool accumulate = (t + (int)s.k) % 2 == 1;
          gemm_case(rng,
                    {ta, tb, s.m, s.n, s.k, ab, cd, 1, 0, 0, 0, accumulate ? 0.5f : 1.0f, accumulate ? 1.5f : 0.0f},
                    accumulate ? " a0.5 b1.5" : " b0");
        }
  // Batches: contiguous, B shared (stride 0), A shared, padded strides, transposed.
  for (int32_t ab : kActDtypes) {
    const int32_t cd = ab;
    const uint64_t m = 17, n = 9, k = 33;
    gemm_case(rng, {0, 0, m, n, k, ab, cd, 3, m * k, k * n, m * n, 1.0f, 0.0f}, " batch 3");
    gemm_case(rng, {0, 1, m, n, k, ab, cd, 3, m * k, 0, m * n, 1.0f, 0.0f}, " batch 3, B shared");
    gemm_case(rng, {1, 0, m, n, k, ab, cd, 4, 0, k * n, m * n, 2.0f, 0.5f}, " batch 4, A shared");
    gemm_case(rng, {1, 1, m, n, k, ab, cd, 3, m * k + 5, k * n + 3, m * n + 7, 1.0f, 1.0f}, " batch 3, padded");
  }
  Twin t(4096);
  const char* g = "qlora_gemm";
  auto gemm = [&](int ta, int tb, uint64_t m, uint64_t n, uint64_t k, int32_t ab, int32_t cd, uint64_t batch,
                  int skew = 0) {
    return [&, ta, tb, m, n, k, ab, cd, batch, skew](Lib& l, int s) {
      return l.qlora_gemm(ta, tb, m, n, k, 1.0f, t.u8(s) + skew, t[s], ab, 0.0f, t[s], cd, batch, 0, 0, 0);
    };
  };
  expect_status(g, "trans_a 2", kInvalid, gemm(2, 0, 4, 4, 4, 0, 0, 1));
  expect_status(g, "trans_b -1", kInvalid, gemm(0, -1, 4, 4, 4, 0, 0, 1));
  expect_status(g, "A/B dtype f16", kInvalid, gemm(0, 0, 4, 4, 4, QLORA_F16, 0, 1));
  expect_status(g, "C dtype f16", kInvalid, gemm(0, 0, 4, 4, 4, 0, QLORA_F16, 1));
  expect_status(g, "C dtype i32", kInvalid, gemm(0, 0, 4, 4, 4, 0, QLORA_I32, 1));
  expect_status(g, "batch 0", kInvalid, gemm(0, 0, 4, 4, 4, 0, 0, 0));
  expect_status(g, "m 0", kInvalid, gemm(0, 0, 0, 4, 4, 0, 0, 1));
  expect_status(g, "k 0", kInvalid, gemm(0, 0, 4, 4, 0, 0, 0, 1));
  expect_status(g, "n 2^31", kInvalid, gemm(0, 0, 4, 1ull << 31, 4, 0, 0, 1));
  expect_status(g, "f32 A misaligned (+2 bytes)", kInvalid, gemm(0, 0, 4, 4, 4, 0, 0, 1, 2));
  expect_status(g, "null A", kInvalid, [&](Lib& l, int s) {
    return l.qlora_gemm(0, 0, 4, 4, 4, 1, nullptr, t[s], 0, 0, t[s], 0, 1, 0, 0, 0);
  });
  expect_status(g, "null C", kInvalid, [&](Lib& l, int s) {
    return l.qlora_gemm(0, 0, 4, 4, 4, 1, t[s], t[s], 0, 0, nullptr, 0, 1, 0, 0, 0);
  });
}

// ---- GEMM with a 4-bit matrix --------------------------------------------------------------------------

// W (stored n x k when trans_w, else k x n) quantized by REF, the same codes on both sides; with `dq`, its
// constants double-quantized by REF too and read as they are (no f32 absmax).
struct Weight4 {
  uint64_t n, k, bs;
  int32_t qt;
  bool dq;
  float offset = 0.0f;
  double max;  // the largest |dequantized value|: the largest absmax (codes lie in [-1, 1])
  std::unique_ptr<Twin> packed, absmax, codes, nested;
  Weight4(Rng& rng, uint64_t n_, uint64_t k_, int32_t qt_, uint64_t bs_, bool dq_ = false)
      : n(n_), k(k_), bs(bs_), qt(qt_), dq(dq_) {
    const uint64_t count = n * k, blocks = ceil_div(count, bs);
    Twin w(encode(rng.normals(count, 0.05f), QLORA_F32));
    packed = std::make_unique<Twin>((count + 1) / 2, QLORA_CAT_QUANTIZED_WEIGHTS);
    absmax = std::make_unique<Twin>(blocks * 4, QLORA_CAT_QUANT_CONSTANTS);
    if (lib(0).qlora_quantize_4bit(w[0], QLORA_F32, count, qt, bs, packed->u8(0), absmax->f32(0)) != QLORA_OK)
      throw std::runtime_error(std::string("ref: qlora_quantize_4bit failed: ") + lib(0).qlora_last_error());
    if (dq) {
      codes = std::make_unique<Twin>(blocks, QLORA_CAT_QUANT_CONSTANTS);
      nested = std::make_unique<Twin>(ceil_div(blocks, 256) * 4, QLORA_CAT_QUANT_CONSTANTS);
      if (lib(0).qlora_double_quantize(absmax->f32(0), blocks, 256, codes->u8(0), nested->f32(0), &offset) != QLORA_OK ||
          lib(0).qlora_double_dequantize(codes->u8(0), nested->f32(0), offset, blocks, 256, absmax->f32(0)) != QLORA_OK)
        throw std::runtime_error(std::string("ref: double quantization failed: ") + lib(0).qlora_last_error());
    }
    for (Twin* t : {packed.get(), absmax.get(), codes.get(), nested.get()}) {
      if (!t) continue;
      const std::vector<uint8_t> bytes = t->download(0);
      t->upload(bytes.data(), bytes.size());
    }
    const std::vector<uint8_t> scales = absmax->download(0);
    max = 0.0;
    for (uint64_t i = 0; i < blocks; i++) max = std::fmax(max, decode(scales.data(), QLORA_F32, i));
  }
  // The descriptor of side s (double-quantized: codes, nested absmax and offset; no absmax).
  qlora_weight4 desc(int s) const {
    qlora_weight4 w = plain4(packed->u8(s), dq ? nullptr : absmax->f32(s), qt, bs);
    if (dq) {
      w.absmax_codes = codes->u8(s);
      w.nested_absmax = nested->f32(s);
      w.offset = offset;
      w.nested_blocksize = 256;
    }
    return w;
  }
};

// One product; with a rank, a LoRA bypass (A, B uniform in [-0.5, 0.5), scaling 2) whose h is compared too.
void gemm4_case(Rng& rng, const Weight4& w, int tw, uint64_t m, int32_t xd, int32_t cd, float alpha, float beta,
                uint64_t rank = 0) {
  const uint64_t n = w.n, k = w.k;
  Values x(rng, m * k, xd, -1, 1);
  Values c0 = beta == 0.0f ? Values(std::vector<float>(m * n, NAN), cd) : Values(rng, m * n, cd, -1, 1);
  Twin tx(x.bytes), tc(c0.bytes);
  const Values a(rng, std::max<uint64_t>(rank, 1) * k, xd, -0.5f, 0.5f), b(rng, n * std::max<uint64_t>(rank, 1), xd, -0.5f, 0.5f);
  Twin ta(a.bytes), tb(b.bytes), th(std::max<uint64_t>(rank, 1) * m * dtype_size(xd));
  uint64_t ws[2] = {0, 0};
  for (int s = 0; s < 2; s++)
    if (lib(s).qlora_gemm_4bit_workspace(tw, m, n, k, &ws[s]) != QLORA_OK)
      throw std::runtime_error(std::string(kSide[s]) + ": qlora_gemm_4bit_workspace failed");
  Twin work(PerSide{ws[0], ws[1]});  // each library's own size (a side needing none gets NULL)
  Case c("qlora_gemm_4bit", fmt("type %d bs %llu%s x %s->%s m%llu n%llu k%llu %s%s%s", w.qt, (unsigned long long)w.bs,
                                w.dq ? " dq" : "", dtype_name(xd), dtype_name(cd), (unsigned long long)m,
                                (unsigned long long)n, (unsigned long long)k, tw ? "XW^T" : "XW",
                                beta == 0.0f ? "" : " b1", rank ? fmt(" lora r%llu", (unsigned long long)rank).c_str() : ""));
  c.run([&](Lib& l, int s) {
    const qlora_weight4 d = w.desc(s);
    qlora_lora4 lora{ta[s], tb[s], th[s], rank, 2.0f, xd};
    return l.qlora_gemm_4bit(tw, m, n, k, alpha, tx[s], xd, &d, rank ? &lora : nullptr, beta, tc[s], cd, work[s], ws[s]);
  });
  const double e_in = xd == QLORA_BF16 ? 0x1p-8 : 1e-5;
  // The bypass adds scaling * h . B, h = x . A: at most 2 * (k/2) * (rank/2) in size, within the product's
  // tolerance scaled by it.
  const double bypass = rank ? 2.0 * 0.5 * (double)k * 0.5 * (double)rank * 0.5 : 0.0;
  c.compare("C", tc, cd, m * n,
            gemm_tol(alpha, x.max, w.max + bypass / (double)k, k, e_in, beta, beta == 0.0f ? 0.0 : c0.max, cd));
  if (rank) c.compare("h", th, xd, m * rank, gemm_tol(1.0f, x.max, 0.5, k, e_in, 0.0f, 0.0, xd));
}

void test_gemm_4bit(Rng& rng) {
  struct Nk {
    uint64_t n, k;
  };
  std::vector<Nk> shapes = {{33, 65}, {96, 80}};
  if (!g_quick) shapes.push_back({1024, 1030});
  for (const Nk& sh : shapes)
    for (int tw : {1, 0}) {
      const Weight4 w(rng, sh.n, sh.k, QLORA_NF4, 64);
      for (uint64_t m : {(uint64_t)1, (uint64_t)3, (uint64_t)5, (uint64_t)17, pick(64, 512)})
        for (int32_t xd : kActDtypes)
          for (int32_t cd : kActDtypes) {
            if (xd != cd && m != 5) continue;  // mixed dtypes at one m
            gemm4_case(rng, w, tw, m, xd, cd, 1.0f, m == 3 ? 1.0f : 0.0f);
          }
    }
  for (int32_t qt : {QLORA_FP4, QLORA_INT4})
    for (uint64_t bs : {(uint64_t)32, (uint64_t)4096}) {
      const Weight4 w(rng, 70, 51, qt, bs);  // blocks straddle rows of W; the last block is partial
      gemm4_case(rng, w, 1, 1, QLORA_F32, QLORA_F32, 0.75f, 0.0f);
      gemm4_case(rng, w, 0, 9, QLORA_BF16, QLORA_F32, 0.75f, 0.5f);
    }
  // Double-quantized constants read as they are, at every row count the fused paths take and above; a
  // LoRA bypass in the same call.
  for (int tw : {1, 0}) {
    const Weight4 w(rng, 160, 128, QLORA_NF4, 64, true);
    for (uint64_t m : {(uint64_t)1, (uint64_t)2, (uint64_t)4, (uint64_t)7, (uint64_t)8, (uint64_t)13})
      gemm4_case(rng, w, tw, m, m % 2 ? QLORA_BF16 : QLORA_F32, m % 2 ? QLORA_BF16 : QLORA_F32, 1.0f, 0.0f);
    if (tw)
      for (uint64_t m : {(uint64_t)1, (uint64_t)3, (uint64_t)8, (uint64_t)21})
        for (int32_t xd : kActDtypes) gemm4_case(rng, w, 1, m, xd, xd, 1.0f, m == 3 ? 1.0f : 0.0f, 8);
  }
  // Many rows of bf16 X over whole blocks (the CPU's panel-decoding GEMM where the CPU has AVX512_BF16):
  // every type, plain and double-quantized constants, rows past a block of X (64) and a chunk of W (96
  // rows, 6 per micro-kernel call) that do not divide evenly, beta, C in both dtypes, and a bypass; k past
  // one panel (4096 values).
  for (int32_t qt : {QLORA_NF4, QLORA_FP4, QLORA_INT4}) {
    const bool dq = qt != QLORA_FP4;
    const Weight4 w(rng, 163, 256, qt, qt == QLORA_INT4 ? 128 : 64, dq);
    for (uint64_t m : {(uint64_t)9, (uint64_t)30, pick(67, 131)})
      gemm4_case(rng, w, 1, m, QLORA_BF16, m == 30 ? QLORA_F32 : QLORA_BF16, 0.5f, m == 9 ? 1.0f : 0.0f,
                 qt == QLORA_NF4 ? 8 : 0);
  }
  gemm4_case(rng, Weight4(rng, 100, 4160, QLORA_NF4, 64, true), 1, pick(13, 70), QLORA_BF16, QLORA_BF16, 1.0f, 0.0f);
  // The bf16 GEMV's steps of 128 values: k an odd multiple of 64 (a last step of half the bytes), past a
  // tile of 16,384 values, blocks of 64 (two tables a step) and of 128 or more (one), with a bypass.
  {
    struct Gemv {
      uint64_t n, k, bs;
      bool dq;
    };
    for (const Gemv& g : {Gemv{40, 192, 64, true}, Gemv{24, 16448, 64, true}, Gemv{40, 384, 128, false},
                          Gemv{24, 16512, 128, true}}) {
      const Weight4 w(rng, g.n, g.k, QLORA_NF4, g.bs, g.dq);
      for (uint64_t m : {(uint64_t)1, (uint64_t)3, (uint64_t)8})
        gemm4_case(rng, w, 1, m, QLORA_BF16, m == 3 ? QLORA_F32 : QLORA_BF16, 1.0f, m == 8 ? 0.5f : 0.0f,
                   m == 1 ? 8 : 0);
    }
  }
  // Input gradients of many bf16 rows (trans_w = 0) over whole blocks along n (the CPU's column-chunk GEMM
  // where the CPU has AVX512_BF16): n a multiple of 64 but not of its 128-column chunks, k past two panels
  // of 256 rows of W and not a multiple of them, rows leaving every remainder of its 6-row micro-kernel,
  // each type, plain and double-quantized constants, block sizes 64 to 512 (a row of W), beta, both C
  // dtypes.
  {
    struct Grad {
      int32_t qt;
      uint64_t bs, n;
      bool dq;
    };
    for (const Grad& g : {Grad{QLORA_NF4, 64, 320, true}, Grad{QLORA_FP4, 64, 384, false},
                          Grad{QLORA_INT4, 128, 384, true}, Grad{QLORA_NF4, 512, 512, false}}) {
      const Weight4 w(rng, g.n, 530, g.qt, g.bs, g.dq);
      for (uint64_t m : {(uint64_t)9, (uint64_t)11, (uint64_t)16, (uint64_t)20, (uint64_t)31, pick(13, 131)})
        gemm4_case(rng, w, 0, m, QLORA_BF16, m % 2 ? QLORA_BF16 : QLORA_F32, 0.5f, m == 11 ? 1.0f : 0.0f);
    }
  }
  // The kernels' fast paths: rows of W in whole words (k % 32 == 0; k = 2080 is two and a bit warp steps of
  // 1024 values of CUDA's GEMV), n % 8 == 0 but not a multiple of the tiles, each quant type, block sizes
  // from 32 to 4096 (longer than a row), plain and double-quantized scales, at each row count of the GEMVs
  // (1..4), of the CPU's (6) and above (130: two row tiles of CUDA's tensor-core kernel), with and without
  // a LoRA bypass (rank 40: more than a warp's lanes).
  struct Fast {
    int32_t qt;
    uint64_t bs;
    bool dq;
  };
  const std::vector<Fast> fast = g_quick ? std::vector<Fast>{{QLORA_NF4, 64, true}, {QLORA_FP4, 32, false}}
                                         : std::vector<Fast>{{QLORA_NF4, 64, true},
                                                             {QLORA_NF4, 256, false},
                                                             {QLORA_FP4, 32, false},
                                                             {QLORA_INT4, 4096, true}};
  for (const Fast& f : fast)
    for (int tw : {1, 0}) {
      const Weight4 w(rng, 72, 2080, f.qt, f.bs, f.dq);
      for (uint64_t m : {(uint64_t)1, (uint64_t)2, (uint64_t)3, (uint64_t)4, (uint64_t)6, (uint64_t)130}) {
        const int32_t xd = m == 1 || m == 3 || m == 6 ? QLORA_F32 : QLORA_BF16, cd = m == 3 ? QLORA_BF16 : xd;
        gemm4_case(rng, w, tw, m, xd, cd, 1.0f, m == 2 ? 0.5f : 0.0f);
        if (tw && (m == 2 || m == 130)) gemm4_case(rng, w, 1, m, m == 2 ? QLORA_F32 : QLORA_BF16, cd, 1.0f, 0.0f, 8);
        if (tw && m == 1 && !g_quick) gemm4_case(rng, w, 1, m, QLORA_BF16, QLORA_BF16, 1.0f, 1.0f, 40);
      }
    }
  // Workspace sizes are each backend's own (they tile differently): both must answer, no comparison.
  // The description shows the sizes of a first call; the timed call must give the same again.
  for (uint64_t m : {(uint64_t)1, (uint64_t)17})
    for (int tw : {1, 0}) {
      uint64_t first[2] = {0, 0}, bytes[2] = {0, 0};
      for (int s = 0; s < 2; s++) lib(s).qlora_gemm_4bit_workspace(tw, m, 96, 80, &first[s]);
      Case c("qlora_gemm_4bit_workspace",
             fmt("m %llu n 96 k 80 %s: ref %llu B, test %llu B (own sizes)", (unsigned long long)m, tw ? "XW^T" : "XW",
                 (unsigned long long)first[0], (unsigned long long)first[1]));
      c.run([&](Lib& l, int s) { return l.qlora_gemm_4bit_workspace(tw, m, 96, 80, &bytes[s]); });
      c.check(bytes[0] == first[0] && bytes[1] == first[1], "a second call gave another size");
    }
  const char* gw = "qlora_gemm_4bit_workspace";
  uint64_t bytes = 0;
  expect_status(gw, "null bytes_out", kInvalid,
                [](Lib& l, int) { return l.qlora_gemm_4bit_workspace(1, 4, 4, 4, nullptr); });
  expect_status(gw, "trans_w 2", kInvalid,
                [&](Lib& l, int) { return l.qlora_gemm_4bit_workspace(2, 4, 4, 4, &bytes); });
  expect_status(gw, "m 0", kInvalid, [&](Lib& l, int) { return l.qlora_gemm_4bit_workspace(1, 0, 4, 4, &bytes); });
  // Error paths of the product, on a valid 17 x 96 x 80 call where each library needs a workspace.
  const Weight4 w(rng, 96, 80, QLORA_NF4, 64);
  uint64_t need[2];
  for (int s = 0; s < 2; s++) lib(s).qlora_gemm_4bit_workspace(1, 17, 96, 80, &need[s]);
  Twin x(17 * 80 * 4), c(17 * 96 * 4), work(PerSide{need[0], need[1]});
  struct Call {
    int tw = 1;
    uint64_t m = 17;
    int32_t xd = 0, cd = 0, qt = 0;
    uint64_t bs = 64;
    bool small_ws = false, null_ws = false;
  };
  auto product = [&](Call a) {
    return [&, a](Lib& l, int s) {
      const uint64_t wsb = a.small_ws ? need[s] - 1 : need[s];
      qlora_weight4 d = w.desc(s);
      d.quant_type = a.qt;
      d.blocksize = a.bs;
      return l.qlora_gemm_4bit(a.tw, a.m, 96, 80, 1.0f, x[s], a.xd, &d, nullptr, 0.0f, c[s], a.cd,
                               a.null_ws ? nullptr : work[s], wsb);
    };
  };
  const char* g4 = "qlora_gemm_4bit";
  if (need[0] > 0 && need[1] > 0) {
    Call small;
    small.small_ws = true;
    expect_status(g4, "workspace 1 byte short (m 17)", kInvalid, product(small));
    Call none;
    none.null_ws = true;
    expect_status(g4, "null workspace (m 17)", kInvalid, product(none));
  }
  // A valid call with one argument made invalid.
  auto bad_call = [&](const char* what, auto edit) {
    Call a;
    edit(a);
    expect_status(g4, what, kInvalid, product(a));
  };
  bad_call("trans_w 2", [](Call& a) { a.tw = 2; });
  bad_call("X dtype f16", [](Call& a) { a.xd = QLORA_F16; });
  bad_call("C dtype f16", [](Call& a) { a.cd = QLORA_F16; });
  bad_call("quant type 3", [](Call& a) { a.qt = 3; });
  bad_call("blocksize 48", [](Call& a) { a.bs = 48; });
  bad_call("m 0", [](Call& a) { a.m = 0; });
  expect_status(g4, "no absmax and no double-quantized constants", kInvalid, [&](Lib& l, int s) {
    qlora_weight4 d = w.desc(s);
    d.absmax = nullptr;
    return l.qlora_gemm_4bit(1, 17, 96, 80, 1.0f, x[s], 0, &d, nullptr, 0.0f, c[s], 0, work[s], need[s]);
  });
  expect_status(g4, "null descriptor", kInvalid, [&](Lib& l, int s) {
    return l.qlora_gemm_4bit(1, 17, 96, 80, 1.0f, x[s], 0, nullptr, nullptr, 0.0f, c[s], 0, work[s], need[s]);
  });
  // The LoRA bypass: forward only, X's dtype, a rank, a finite scale, every buffer.
  Twin lora_buf(96 * 8 * 4);
  auto with_lora = [&](int tw, auto edit) {
    return [&, tw, edit](Lib& l, int s) {
      const qlora_weight4 d = w.desc(s);
      qlora_lora4 lora{lora_buf[s], lora_buf[s], lora_buf[s], 8, 2.0f, QLORA_F32};
      edit(lora);
      return l.qlora_gemm_4bit(tw, 17, 96, 80, 1.0f, x[s], 0, &d, &lora, 0.0f, c[s], 0, work[s], need[s]);
    };
  };
  expect_status(g4, "LoRA bypass with trans_w 0", kInvalid, with_lora(0, [](qlora_lora4&) {}));
  expect_status(g4, "LoRA rank 0", kInvalid, with_lora(1, [](qlora_lora4& a) { a.rank = 0; }));
  expect_status(g4, "LoRA dtype bf16 with f32 X", kInvalid, with_lora(1, [](qlora_lora4& a) { a.dtype = QLORA_BF16; }));
  expect_status(g4, "LoRA scaling Inf", kInvalid, with_lora(1, [](qlora_lora4& a) { a.scaling = INFINITY; }));
  expect_status(g4, "LoRA null h", kInvalid, with_lora(1, [](qlora_lora4& a) { a.h = nullptr; }));
}

// ---- AdamW and 8-bit AdamW (bit-exact: the same f32 operations in the same order) ----------------------

struct Hyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.01f, bc1 = 0.1f, bc2 = 0.001f, scale = 1.0f;
};

// The bias corrections of step t, rounded once from double.
Hyper hyper_at(int step, float scale) {
  Hyper h;
  h.bc1 = (float)(1.0 - std::pow(0.9, step));
  h.bc2 = (float)(1.0 - std::pow(0.999, step));
  h.scale = scale;
  return h;
}

struct SegSpec {
  uint64_t n;
  int32_t pd, gd;
  bool master;
};

// One segment's buffers in both libraries; `eight` selects the 8-bit states (codes + block absmax).
struct SegBufs {
  SegSpec spec;
  std::unique_ptr<Twin> param, grad, m, v, master, m_absmax, v_absmax;
  SegBufs(Rng& rng, const SegSpec& s, bool eight) : spec(s) {
    const std::vector<float> w = rng.uniforms(s.n, -1, 1);
    param = std::make_unique<Twin>(encode(w, s.pd), QLORA_CAT_ADAPTERS);
    grad = std::make_unique<Twin>(s.n * dtype_size(s.gd), QLORA_CAT_GRADIENTS);
    if (s.master) master = std::make_unique<Twin>(encode(w, QLORA_F32), QLORA_CAT_OPTIMIZER_STATES);
    const uint64_t state = eight ? s.n : 4 * s.n, blocks = ceil_div(s.n, QLORA_ADAMW8_BLOCK);
    m = std::make_unique<Twin>(std::vector<uint8_t>(state, 0), QLORA_CAT_OPTIMIZER_STATES);
    v = std::make_unique<Twin>(std::vector<uint8_t>(state, 0), QLORA_CAT_OPTIMIZER_STATES);
    if (eight) {
      m_absmax = std::make_unique<Twin>(std::vector<uint8_t>(4 * blocks, 0), QLORA_CAT_OPTIMIZER_STATES);
      v_absmax = std::make_unique<Twin>(std::vector<uint8_t>(4 * blocks, 0), QLORA_CAT_OPTIMIZER_STATES);
    }
  }
  void new_grad(Rng& rng) {
    const std::vector<uint8_t> g = encode(rng.normals(spec.n, 0.1f), spec.gd);
    grad->upload(g.data(), g.size());
  }
  qlora_adamw_segment seg(int s) const {
    return {(*param)[s], (*grad)[s], m->f32(s), v->f32(s), master ? master->f32(s) : nullptr, spec.n, spec.pd, spec.gd};
  }
  qlora_adamw8_segment seg8(int s) const {
    return {(*param)[s],
            (*grad)[s],
            m->u8(s),
            v->u8(s),
            m_absmax->f32(s),
            v_absmax->f32(s),
            master ? master->f32(s) : nullptr,
            spec.n,
            spec.pd,
            spec.gd};
  }
  void compare(Case& c, bool eight) const {
    c.compare("param", *param, spec.pd, spec.n, bit_exact());
    c.compare("m", *m, eight ? QLORA_U8 : QLORA_F32, spec.n, bit_exact());
    c.compare("v", *v, eight ? QLORA_U8 : QLORA_F32, spec.n, bit_exact());
    if (master) c.compare("master", *master, QLORA_F32, spec.n, bit_exact());
    if (eight) {
      const uint64_t blocks = ceil_div(spec.n, QLORA_ADAMW8_BLOCK);
      c.compare("m_absmax", *m_absmax, QLORA_F32, blocks, bit_exact());
      c.compare("v_absmax", *v_absmax, QLORA_F32, blocks, bit_exact());
    }
  }
};

// Three steps over four segments (every dtype combination, with and without a master copy), compared
// after each step; then the error paths on one valid segment.
void test_adamw_common(Rng& rng, bool eight) {
  const char* fn = eight ? "qlora_adamw8_step" : "qlora_adamw_step";
  const std::vector<SegSpec> specs = {{1, QLORA_F32, QLORA_F32, false},
                                      {eight ? 257u : 1017u, QLORA_F32, QLORA_BF16, false},
                                      {pick(4099, (1u << 20) + 3), QLORA_BF16, QLORA_F32, true},
                                      {eight ? 512u : 33u, QLORA_BF16, QLORA_BF16, false}};
  std::vector<std::unique_ptr<SegBufs>> segs;
  for (const SegSpec& s : specs) segs.push_back(std::make_unique<SegBufs>(rng, s, eight));
  auto step = [&](const Hyper& h) {
    return [&, h](Lib& l, int s) {
      if (eight) {
        std::vector<qlora_adamw8_segment> list;
        for (const auto& g : segs) list.push_back(g->seg8(s));
        return l.qlora_adamw8_step(list.data(), list.size(), h.lr, h.beta1, h.beta2, h.eps, h.wd, h.bc1, h.bc2,
                                   h.scale);
      }
      std::vector<qlora_adamw_segment> list;
      for (const auto& g : segs) list.push_back(g->seg(s));
      return l.qlora_adamw_step(list.data(), list.size(), h.lr, h.beta1, h.beta2, h.eps, h.wd, h.bc1, h.bc2, h.scale);
    };
  };
  for (int t = 1; t <= 3; t++) {
    for (auto& g : segs) g->new_grad(rng);
    const float scale = t == 2 ? 0.5f : 1.0f;
    Case c(fn, fmt("step %d of 3, 4 segments (n 1..%llu, all dtype pairs)%s", t, (unsigned long long)specs[2].n,
                   t == 2 ? ", grad_scale 0.5" : ""));
    c.run(step(hyper_at(t, scale)));
    for (const auto& g : segs) g->compare(c, eight);
  }
  {
    Case c(fn, "count 0, segments NULL");
    c.run([&](Lib& l, int) {
      return eight ? l.qlora_adamw8_step(nullptr, 0, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1)
                   : l.qlora_adamw_step(nullptr, 0, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
    });
  }
  // Error paths: hyperparameters, then one segment (segs[2], bf16 param with a master) made invalid.
  auto bad_hyper = [&](const char* what, auto edit) {
    Hyper h;
    edit(h);
    expect_status(fn, what, kInvalid, step(h));
  };
  bad_hyper("lr NaN", [](Hyper& h) { h.lr = NAN; });
  bad_hyper("beta1 1", [](Hyper& h) { h.beta1 = 1.0f; });
  bad_hyper("beta2 -0.1", [](Hyper& h) { h.beta2 = -0.1f; });
  bad_hyper("eps 0", [](Hyper& h) { h.eps = 0.0f; });
  bad_hyper("bias_correction1 0", [](Hyper& h) { h.bc1 = 0.0f; });
  bad_hyper("bias_correction2 1.5", [](Hyper& h) { h.bc2 = 1.5f; });
  bad_hyper("grad_scale Inf", [](Hyper& h) { h.scale = INFINITY; });
  expect_status(fn, "segments NULL, count 1", kInvalid, [&](Lib& l, int) {
    return eight ? l.qlora_adamw8_step(nullptr, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1)
                 : l.qlora_adamw_step(nullptr, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
  });
  const SegBufs& g = *segs[2];
  auto bad_segment = [&](const char* what, auto mutate) {
    expect_status(fn, what, kInvalid, [&, mutate](Lib& l, int s) {
      Hyper k;
      if (eight) {
        qlora_adamw8_segment x = g.seg8(s);
        mutate(x, s);
        return l.qlora_adamw8_step(&x, 1, k.lr, k.beta1, k.beta2, k.eps, k.wd, k.bc1, k.bc2, k.scale);
      }
      qlora_adamw_segment x = g.seg(s);
      mutate(x, s);
      return l.qlora_adamw_step(&x, 1, k.lr, k.beta1, k.beta2, k.eps, k.wd, k.bc1, k.bc2, k.scale);
    });
  };
  bad_segment("segment n 0", [](auto& x, int) { x.n = 0; });
  bad_segment("null param", [](auto& x, int) { x.param = nullptr; });
  bad_segment("null grad", [](auto& x, int) { x.grad = nullptr; });
  bad_segment("master with an f32 param", [](auto& x, int) { x.param_dtype = QLORA_F32; });
  bad_segment("param dtype f16", [](auto& x, int) { x.param_dtype = QLORA_F16; });
  bad_segment("grad dtype u8", [](auto& x, int) { x.grad_dtype = QLORA_U8; });
  bad_segment("n 2^45 (larger than any device)", [](auto& x, int) { x.n = 1ull << 45; });
  bad_segment("master misaligned (+2 bytes)", [](auto& x, int) { x.master = (float*)((char*)x.master + 2); });
  // The state pointers differ between the two segment types.
  expect_status(fn, eight ? "null m_codes" : "null m", kInvalid, [&](Lib& l, int s) {
    if (eight) {
      qlora_adamw8_segment x = g.seg8(s);
      x.m_codes = nullptr;
      return l.qlora_adamw8_step(&x, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
    }
    qlora_adamw_segment x = g.seg(s);
    x.m = nullptr;
    return l.qlora_adamw_step(&x, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
  });
  expect_status(fn, eight ? "null v_absmax" : "v misaligned (+2 bytes)", kInvalid, [&](Lib& l, int s) {
    if (eight) {
      qlora_adamw8_segment x = g.seg8(s);
      x.v_absmax = nullptr;
      return l.qlora_adamw8_step(&x, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
    }
    qlora_adamw_segment x = g.seg(s);
    x.v = (float*)((char*)x.v + 2);
    return l.qlora_adamw_step(&x, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1, 1, 1);
  });
}

void test_adamw(Rng& rng) { test_adamw_common(rng, false); }
void test_adamw8(Rng& rng) { test_adamw_common(rng, true); }

// ---- sum of squares (bit-exact: double sums in the fixed chunk order) ----------------------------------

void test_sum_squares(Rng& rng) {
  for (int32_t dt : kFloatDtypes)
    for (uint64_t n : {(uint64_t)0, (uint64_t)1, (uint64_t)4095, (uint64_t)4097, pick(100003, (5u << 20) + 1)}) {
      Values x(rng, n, dt, -3, 3);
      Twin t(x.bytes);
      double out[2] = {-1.0, -1.0};
      Case c("qlora_sum_squares", fmt("%s n %llu", dtype_name(dt), (unsigned long long)n));
      c.run([&](Lib& l, int s) { return l.qlora_sum_squares(t[s], dt, n, &out[s]); });
      c.compare_host("sum", &out[0], &out[1], kF64, 1, bit_exact());
    }
  {
    std::vector<float> v = rng.uniforms(5000, -1, 1);
    v[4321] = NAN;
    Twin t(encode(v, QLORA_F32));
    double out[2] = {0.0, 0.0};
    Case c("qlora_sum_squares", "f32 n 5000 with a NaN: a NaN sum, status OK");
    c.run([&](Lib& l, int s) { return l.qlora_sum_squares(t[s], QLORA_F32, 5000, &out[s]); });
    c.check(std::isnan(out[0]) && std::isnan(out[1]), "the sum is not NaN");
  }
  Twin t(64);
  double out = 0.0;
  expect_status("qlora_sum_squares", "null x", kInvalid,
                [&](Lib& l, int) { return l.qlora_sum_squares(nullptr, 0, 4, &out); });
  expect_status("qlora_sum_squares", "null out", kInvalid,
                [&](Lib& l, int s) { return l.qlora_sum_squares(t[s], 0, 4, nullptr); });
  expect_status("qlora_sum_squares", "dtype u8", kInvalid,
                [&](Lib& l, int s) { return l.qlora_sum_squares(t[s], QLORA_U8, 4, &out); });
}

// ---- embedding (bit-exact: a copy, and per-token sums in row order) -----------------------------------

void test_embedding(Rng& rng) {
  struct Shape {
    uint64_t rows, vocab, dim;
  };
  const Shape shapes[] = {{1, 1, 1}, {17, 50, 33}, {64, 7, 20}, {pick(256, 4096), 1000, pick(96, 4096)}};
  for (int32_t dt : kActDtypes)
    for (const Shape& sh : shapes) {
      const std::vector<int32_t> tokens = rng.ints(sh.rows, 0, (int32_t)sh.vocab);
      Twin tt(tokens), table(Values(rng, sh.vocab * sh.dim, dt, -1, 1).bytes), out(sh.rows * sh.dim * dtype_size(dt));
      const std::string shape = fmt("%s rows %llu vocab %llu dim %llu", dtype_name(dt), (unsigned long long)sh.rows,
                                    (unsigned long long)sh.vocab, (unsigned long long)sh.dim);
      {
        Case c("qlora_embedding_forward", shape);
        c.run([&](Lib& l, int s) {
          return l.qlora_embedding_forward(tt.i32(s), sh.rows, table[s], sh.vocab, sh.dim, out[s], dt);
        });
        c.compare("out", out, dt, sh.rows * sh.dim, bit_exact());
      }
      {
        // dtable starts non-zero: the gradient is added. Then a frozen table (NULL) is a no-op.
        Twin dout(Values(rng, sh.rows * sh.dim, dt, -1, 1).bytes);
        Case c("qlora_embedding_backward", shape + " (+ NULL dtable)");
        c.run([&](Lib& l, int s) {
          return l.qlora_embedding_backward(tt.i32(s), sh.rows, dout[s], sh.vocab, sh.dim, table[s], dt);
        });
        c.run([&](Lib& l, int s) {
          return l.qlora_embedding_backward(tt.i32(s), sh.rows, dout[s], sh.vocab, sh.dim, nullptr, dt);
        });
        c.compare("dtable", table, dt, sh.vocab * sh.dim, bit_exact());
      }
    }
  // Error paths: 40 rows of tokens over vocab 10, dim 8, a bad token at row 23 where asked.
  std::vector<int32_t> tokens = rng.ints(40, 0, 10);
  Twin tt(tokens), table(10 * 8 * 4), out(40 * 8 * 4);
  auto forward = [&](uint64_t rows, uint64_t vocab, uint64_t dim, int32_t dt) {
    return [&, rows, vocab, dim, dt](Lib& l, int s) {
      return l.qlora_embedding_forward(tt.i32(s), rows, table[s], vocab, dim, out[s], dt);
    };
  };
  auto backward = [&](uint64_t rows, uint64_t vocab, uint64_t dim, int32_t dt) {
    return [&, rows, vocab, dim, dt](Lib& l, int s) {
      return l.qlora_embedding_backward(tt.i32(s), rows, out[s], vocab, dim, table[s], dt);
    };
  };
  const char *f = "qlora_embedding_forward", *b = "qlora_embedding_backward";
  expect_status(f, "rows 0", kInvalid, forward(0, 10, 8, 0));
  expect_status(f, "vocab 0", kInvalid, forward(40, 0, 8, 0));
  expect_status(f, "dim 0", kInvalid, forward(40, 10, 0, 0));
  expect_status(f, "vocab 2^31", kInvalid, forward(40, 1ull << 31, 8, 0));
  expect_status(f, "dtype f16", kInvalid, forward(40, 10, 8, QLORA_F16));
  expect_status(f, "null table", kInvalid,
                [&](Lib& l, int s) { return l.qlora_embedding_forward(tt.i32(s), 40, nullptr, 10, 8, out[s], 0); });
  expect_status(b, "dtype f16", kInvalid, backward(40, 10, 8, QLORA_F16));
  expect_status(b, "null dout", kInvalid,
                [&](Lib& l, int s) { return l.qlora_embedding_backward(tt.i32(s), 40, nullptr, 10, 8, table[s], 0); });
  for (int32_t bad : {10, -1, INT32_MIN}) {
    const int32_t value = bad;
    tt.upload(&value, 4, 23 * 4);
    expect_status(f, fmt("token %d at row 23 of 40 (vocab 10)", bad), kInvalid, forward(40, 10, 8, 0));
    expect_status(b, fmt("token %d at row 23 of 40 (vocab 10)", bad), kInvalid, backward(40, 10, 8, 0));
  }
}

// ---- RMSNorm --------------------------------------------------------------------------------------------

void test_rmsnorm(Rng& rng) {
  struct Shape {
    uint64_t rows, dim;
  };
  const Shape shapes[] = {{1, 1}, {3, 17}, {pick(64, 2048), pick(333, 4096)}};
  for (int32_t dt : kActDtypes)
    for (const Shape& sh : shapes) {
      const uint64_t rows = sh.rows, dim = sh.dim, es = dtype_size(dt);
      Twin x(Values(rng, rows * dim, dt, -2, 2).bytes), w(Values(rng, dim, dt, 0.5f, 1.5f).bytes), out(rows * dim * es),
          rstd(rows * 4);
      const std::string shape =
          fmt("%s rows %llu dim %llu", dtype_name(dt), (unsigned long long)rows, (unsigned long long)dim);
      {
        Case c("qlora_rmsnorm_forward", shape + ", eps 1e-5");
        c.run([&](Lib& l, int s) {
          return l.qlora_rmsnorm_forward(x[s], w[s], rows, dim, 1e-5f, out[s], rstd.f32(s), dt);
        });
        c.compare("out", out, dt, rows * dim, rounding_tol(dt));
        c.compare("rstd", rstd, QLORA_F32, rows, within(kF32Tol));
      }
      // Backward from REF's rstd on both; dweight starts non-zero (the gradient is added), then NULL.
      const std::vector<uint8_t> r = rstd.download(0);
      rstd.upload(r.data(), r.size());
      double max_rstd = 0.0;
      for (uint64_t i = 0; i < rows; i++) max_rstd = std::fmax(max_rstd, decode(r.data(), QLORA_F32, i));
      const Values dy(rng, rows * dim, dt, -1, 1);
      Twin dout(dy.bytes), dx(rows * dim * es), dw(Values(rng, dim, dt, -1, 1).bytes), dx2(rows * dim * es);
      Case c("qlora_rmsnorm_backward", shape + " (+ NULL dweight)");
      c.run([&](Lib& l, int s) {
        return l.qlora_rmsnorm_backward(dout[s], x[s], w[s], rstd.f32(s), rows, dim, dx[s], dw[s], dt);
      });
      c.run([&](Lib& l, int s) {
        return l.qlora_rmsnorm_backward(dout[s], x[s], w[s], rstd.f32(s), rows, dim, dx2[s], nullptr, dt);
      });
      // dx = rstd * (g - xhat * mean(g * xhat)) cancels (to exactly 0 when dim is 1): its error is also
      // allowed against the size of the cancelling terms, max rstd * max|dout| * max|weight| (<= 1.5).
      Tol dx_tol = rounding_tol(dt);
      dx_tol.abs = dx_tol.rel * max_rstd * dy.max * 1.5;
      c.compare("dx", dx, dt, rows * dim, dx_tol);
      c.compare("dweight", dw, dt, dim, rounding_tol(dt));
      c.compare("dx (frozen weight)", dx2, dt, rows * dim, dx_tol);
    }
  Twin t(4096);
  auto forward = [&](uint64_t rows, uint64_t dim, float eps, int32_t dt) {
    return [&, rows, dim, eps, dt](Lib& l, int s) {
      return l.qlora_rmsnorm_forward(t[s], t[s], rows, dim, eps, t[s], t.f32(s), dt);
    };
  };
  const char *f = "qlora_rmsnorm_forward", *b = "qlora_rmsnorm_backward";
  expect_status(f, "eps 0", kInvalid, forward(2, 8, 0.0f, 0));
  expect_status(f, "eps NaN", kInvalid, forward(2, 8, NAN, 0));
  expect_status(f, "rows 0", kInvalid, forward(0, 8, 1e-5f, 0));
  expect_status(f, "dim 0", kInvalid, forward(2, 0, 1e-5f, 0));
  expect_status(f, "dtype f16", kInvalid, forward(2, 8, 1e-5f, QLORA_F16));
  expect_status(f, "null rstd", kInvalid,
                [&](Lib& l, int s) { return l.qlora_rmsnorm_forward(t[s], t[s], 2, 8, 1e-5f, t[s], nullptr, 0); });
  expect_status(b, "null dx", kInvalid, [&](Lib& l, int s) {
    return l.qlora_rmsnorm_backward(t[s], t[s], t[s], t.f32(s), 2, 8, nullptr, t[s], 0);
  });
  expect_status(b, "dtype f16", kInvalid, [&](Lib& l, int s) {
    return l.qlora_rmsnorm_backward(t[s], t[s], t[s], t.f32(s), 2, 8, t[s], t[s], QLORA_F16);
  });
  expect_status(b, "dim 0", kInvalid, [&](Lib& l, int s) {
    return l.qlora_rmsnorm_backward(t[s], t[s], t[s], t.f32(s), 2, 0, t[s], t[s], 0);
  });
}

// ---- RoPE -----------------------------------------------------------------------------------------------

void test_rope(Rng& rng) {
  struct Shape {
    uint64_t batch, seq, heads, hd;
  };
  std::vector<Shape> shapes = {{1, 1, 1, 2}, {2, 17, 3, 16}, {2, 70, 4, 128}};
  if (!g_quick) shapes.push_back({4, 2048, 8, 128});
  for (int32_t dt : kActDtypes)
    for (const Shape& sh : shapes)
      for (int inverse : {0, 1}) {
        const uint64_t n = sh.batch * sh.seq * sh.heads * sh.hd;
        const float theta = inverse ? 500000.0f : 10000.0f;
        Twin x(Values(rng, n, dt, -2, 2).bytes);
        Case c("qlora_rope", fmt("%s %llux%llux%llux%llu theta %g%s", dtype_name(dt), (unsigned long long)sh.batch,
                                 (unsigned long long)sh.seq, (unsigned long long)sh.heads, (unsigned long long)sh.hd,
                                 theta, inverse ? " inverse" : ""));
        c.run([&](Lib& l, int s) { return l.qlora_rope(x[s], sh.batch, sh.seq, sh.heads, sh.hd, theta, inverse, dt); });
        c.compare("x", x, dt, n, rounding_tol(dt));
      }
  Twin t(4096);
  auto rope = [&](uint64_t seq, uint64_t hd, float theta, int inverse, int32_t dt) {
    return [&, seq, hd, theta, inverse, dt](Lib& l, int s) {
      return l.qlora_rope(t[s], 1, seq, 2, hd, theta, inverse, dt);
    };
  };
  const char* r = "qlora_rope";
  expect_status(r, "head_dim 3 (odd)", kInvalid, rope(4, 3, 10000, 0, 0));
  expect_status(r, "theta 0", kInvalid, rope(4, 8, 0, 0, 0));
  expect_status(r, "theta NaN", kInvalid, rope(4, 8, NAN, 0, 0));
  expect_status(r, "inverse 2", kInvalid, rope(4, 8, 10000, 2, 0));
  expect_status(r, "dtype f16", kInvalid, rope(4, 8, 10000, 0, QLORA_F16));
  expect_status(r, "seq 0", kInvalid, rope(0, 8, 10000, 0, 0));
  expect_status(r, "null x", kInvalid, [](Lib& l, int) { return l.qlora_rope(nullptr, 1, 4, 2, 8, 10000, 0, 0); });
}

// ---- attention ---------------------------------------------------------------------------------------
// Forward: out is a convex combination of rows of v, so its error is measured against max|v|:
// f32 2e-5 (exp, the order of the softmax sums and of the products), bf16 1e-2 (a backend may round the
// probabilities to bf16 before P V, as the CPU does, or keep them in f32). lse (f32): 1e-5 of max|lse| + 1e-5.
// Backward: gradients are sums over the sequence and the heads of a group, with P recomputed from lse:
// f32 1e-4, bf16 3e-2 of the largest gradient (P and dS rounded to bf16 on one side, not the other).
// dS = P (dP - delta) cancels (exactly to 0 at seq 1, where delta = dP): the same factor is also
// allowed against the size of the terms before cancellation. A gradient sums up to seq * group terms
// scale * dP * q (or k), and dP = dO . v sums hd products while scale = 1 / sqrt(hd), so the terms
// add up to about max|dO| max|v| max|q, k| sqrt(seq * group).

struct AttnShape {
  uint64_t batch, seq, heads, kv_heads, hd;
  uint64_t q_count() const { return batch * seq * heads * hd; }
  uint64_t kv_count() const { return batch * seq * kv_heads * hd; }
  uint64_t lse_count() const { return batch * heads * seq; }
  std::string name(int32_t dt) const {
    return fmt("%s b%llu seq %llu heads %llu/%llu hd %llu", dtype_name(dt), (unsigned long long)batch,
               (unsigned long long)seq, (unsigned long long)heads, (unsigned long long)kv_heads,
               (unsigned long long)hd);
  }
};

Tol attention_out_tol(int32_t dt, double max_v) {
  const double e = dt == QLORA_BF16 ? kBf16Tol : 2e-5;
  return within(0.0, e * max_v);
}
Tol attention_grad_tol(int32_t dt, const AttnShape& a, double max_dout, double max_v, double max_qk) {
  const double e = dt == QLORA_BF16 ? 3e-2 : 1e-4;
  const double terms = max_dout * max_v * max_qk * std::sqrt((double)(a.seq * (a.heads / a.kv_heads)));
  return within(e, e * terms);
}
const Tol kLseTol = within(kF32Tol, kF32Tol);

std::vector<AttnShape> attention_shapes() {
  std::vector<AttnShape> shapes;
  for (uint64_t hd : {16, 64, 128})
    for (uint64_t seq : {1, 17, 70}) shapes.push_back({2, seq, 4, 2, hd});
  shapes.push_back({1, 33, 3, 3, 32});  // plain multi-head
  shapes.push_back({1, 40, 8, 1, 64});  // multi-query
  if (!g_quick) shapes.push_back({2, 1024, 8, 2, 128});
  return shapes;
}

void test_attention(Rng& rng) {
  for (int32_t dt : kActDtypes)
    for (const AttnShape& a : attention_shapes()) {
      const uint64_t es = dtype_size(dt);
      const Values vq(rng, a.q_count(), dt, -2, 2), vk(rng, a.kv_count(), dt, -2, 2), v(rng, a.kv_count(), dt, -1, 1);
      Twin q(vq.bytes), k(vk.bytes), tv(v.bytes), out(a.q_count() * es), lse(a.lse_count() * 4);
      {
        Case c("qlora_attention_forward", a.name(dt));
        c.run([&](Lib& l, int s) {
          return l.qlora_attention_forward(q[s], k[s], tv[s], a.batch, a.seq, a.heads, a.kv_heads, a.hd, out[s],
                                           lse.f32(s), dt);
        });
        c.compare("out", out, dt, a.q_count(), attention_out_tol(dt, v.max));
        c.compare("lse", lse, QLORA_F32, a.lse_count(), kLseTol);
      }
      // Backward from REF's out and lse on both.
      const std::vector<uint8_t> o = out.download(0), m = lse.download(0);
      out.upload(o.data(), o.size());
      lse.upload(m.data(), m.size());
      const Values vdout(rng, a.q_count(), dt, -1, 1);
      Twin dout(vdout.bytes), dq(a.q_count() * es), dk(a.kv_count() * es), dv(a.kv_count() * es);
      Case c("qlora_attention_backward", a.name(dt));
      c.run([&](Lib& l, int s) {
        return l.qlora_attention_backward(dout[s], q[s], k[s], tv[s], out[s], lse.f32(s), a.batch, a.seq, a.heads,
                                          a.kv_heads, a.hd, dq[s], dk[s], dv[s], dt);
      });
      const Tol tol = attention_grad_tol(dt, a, vdout.max, v.max, std::fmax(vq.max, vk.max));
      c.compare("dq", dq, dt, a.q_count(), tol);
      c.compare("dk", dk, dt, a.kv_count(), tol);
      c.compare("dv", dv, dt, a.kv_count(), tol);
    }
  Twin t(1 << 16);
  auto forward = [&](uint64_t seq, uint64_t heads, uint64_t kv, uint64_t hd, int32_t dt) {
    return [&, seq, heads, kv, hd, dt](Lib& l, int s) {
      return l.qlora_attention_forward(t[s], t[s], t[s], 1, seq, heads, kv, hd, t[s], t.f32(s), dt);
    };
  };
  auto backward = [&](uint64_t seq, uint64_t heads, uint64_t kv, uint64_t hd) {
    return [&, seq, heads, kv, hd](Lib& l, int s) {
      return l.qlora_attention_backward(t[s], t[s], t[s], t[s], t[s], t.f32(s), 1, seq, heads, kv, hd, t[s], t[s], t[s],
                                        0);
    };
  };
  const char *f = "qlora_attention_forward", *b = "qlora_attention_backward";
  expect_status(f, "heads 3, kv_heads 2", kInvalid, forward(4, 3, 2, 8, 0));
  expect_status(f, "head_dim 256", QLORA_ERR_UNSUPPORTED, forward(4, 2, 2, 256, 0));
  expect_status(f, "seq 0", kInvalid, forward(0, 2, 2, 8, 0));
  expect_status(f, "kv_heads 0", kInvalid, forward(4, 2, 0, 8, 0));
  expect_status(f, "dtype f16", kInvalid, forward(4, 2, 2, 8, QLORA_F16));
  expect_status(f, "null lse", kInvalid, [&](Lib& l, int s) {
    return l.qlora_attention_forward(t[s], t[s], t[s], 1, 4, 2, 2, 8, t[s], nullptr, 0);
  });
  expect_status(b, "head_dim 130", QLORA_ERR_UNSUPPORTED, backward(4, 2, 2, 130));
  expect_status(b, "heads 4, kv_heads 3", kInvalid, backward(4, 4, 3, 8));
  expect_status(b, "null dq", kInvalid, [&](Lib& l, int s) {
    return l.qlora_attention_backward(t[s], t[s], t[s], t[s], t[s], t.f32(s), 1, 4, 2, 2, 8, nullptr, t[s], t[s], 0);
  });
}

// ---- generation: RoPE at positions, the key/value cache, attention over it ----------------------------

void test_rope_at(Rng& rng) {
  struct Shape {
    uint64_t rows, heads, hd;
  };
  for (int32_t dt : kActDtypes)
    for (const Shape& sh : {Shape{1, 1, 2}, Shape{5, 3, 16}, Shape{33, 4, 128}})
      for (int inverse : {0, 1}) {
        const uint64_t n = sh.rows * sh.heads * sh.hd;
        // Positions anywhere a cache puts them: 0, large (4,095, 100,000), negative (a padding row).
        std::vector<int32_t> pos = rng.ints(sh.rows, -40, 5000);
        pos[0] = sh.rows > 1 ? 100000 : 0;
        Twin x(Values(rng, n, dt, -2, 2).bytes), p(pos);
        Case c("qlora_rope_at", fmt("%s %llux%llux%llu%s", dtype_name(dt), (unsigned long long)sh.rows,
                                    (unsigned long long)sh.heads, (unsigned long long)sh.hd, inverse ? " inverse" : ""));
        c.run([&](Lib& l, int s) {
          return l.qlora_rope_at(x[s], sh.rows, sh.heads, sh.hd, p.i32(s), 500000.0f, inverse, dt);
        });
        c.compare("x", x, dt, n, rounding_tol(dt));
      }
  Twin t(4096), p(std::vector<int32_t>(8, 0));
  const char* r = "qlora_rope_at";
  expect_status(r, "rows 0", kInvalid, [&](Lib& l, int s) { return l.qlora_rope_at(t[s], 0, 2, 8, p.i32(s), 1e4f, 0, 0); });
  expect_status(r, "head_dim 5 (odd)", kInvalid,
                [&](Lib& l, int s) { return l.qlora_rope_at(t[s], 4, 2, 5, p.i32(s), 1e4f, 0, 0); });
  expect_status(r, "null positions", kInvalid,
                [&](Lib& l, int s) { return l.qlora_rope_at(t[s], 4, 2, 8, nullptr, 1e4f, 0, 0); });
  expect_status(r, "theta -1", kInvalid, [&](Lib& l, int s) { return l.qlora_rope_at(t[s], 4, 2, 8, p.i32(s), -1, 0, 0); });
  expect_status(r, "dtype f16", kInvalid,
                [&](Lib& l, int s) { return l.qlora_rope_at(t[s], 4, 2, 8, p.i32(s), 1e4f, 0, QLORA_F16); });
}

void test_kv_cache_append(Rng& rng) {
  for (int32_t dt : kActDtypes) {
    const uint64_t batch = 3, kv_dim = 2 * 64, capacity = 40, es = dtype_size(dt), cache = batch * capacity * kv_dim;
    Twin kc(Values(rng, cache, dt, -1, 1).bytes), vc(Values(rng, cache, dt, -1, 1).bytes);
    std::vector<uint8_t> want_k = kc.download(0), want_v = vc.download(0);
    for (uint64_t at : {(uint64_t)0, (uint64_t)7, (uint64_t)39}) {
      const uint64_t tokens = at == 39 ? 1 : at == 0 ? 7 : 20, n = batch * tokens * kv_dim;
      const Values k(rng, n, dt, -1, 1), v(rng, n, dt, -1, 1);
      Twin tk(k.bytes), tv(v.bytes);
      Case c("qlora_kv_cache_append", fmt("%s batch 3, %llu tokens at row %llu of 40", dtype_name(dt),
                                          (unsigned long long)tokens, (unsigned long long)at));
      c.run([&](Lib& l, int s) {
        return l.qlora_kv_cache_append(tk[s], tv[s], batch, tokens, kv_dim, kc[s], vc[s], capacity, at, dt);
      });
      for (uint64_t b = 0; b < batch; b++) {  // the expected cache: the rows copied, the rest untouched
        const uint64_t row = kv_dim * es;
        memcpy(want_k.data() + (b * capacity + at) * row, k.bytes.data() + b * tokens * row, tokens * row);
        memcpy(want_v.data() + (b * capacity + at) * row, v.bytes.data() + b * tokens * row, tokens * row);
      }
      c.compare("k_cache", kc, dt, cache, bit_exact());
      c.compare("v_cache", vc, dt, cache, bit_exact());
      for (int s = 0; s < 2; s++) {
        c.expect_values("k_cache vs the expected copy", want_k.data(), kc.download(s).data(), dt, cache, bit_exact());
        c.expect_values("v_cache vs the expected copy", want_v.data(), vc.download(s).data(), dt, cache, bit_exact());
      }
    }
  }
  Twin t(1 << 14);
  auto append = [&](uint64_t tokens, uint64_t capacity, uint64_t at, int32_t dt) {
    return [&, tokens, capacity, at, dt](Lib& l, int s) {
      return l.qlora_kv_cache_append(t[s], t[s], 1, tokens, 8, t[s], t[s], capacity, at, dt);
    };
  };
  const char* f = "qlora_kv_cache_append";
  expect_status(f, "rows 30 .. 34 past a capacity of 32", kInvalid, append(4, 32, 30, 0));
  expect_status(f, "at 33 past a capacity of 32", kInvalid, append(1, 32, 33, 0));
  expect_status(f, "tokens 0", kInvalid, append(0, 32, 0, 0));
  expect_status(f, "dtype f16", kInvalid, append(1, 32, 0, QLORA_F16));
  expect_status(f, "null v_cache", kInvalid,
                [&](Lib& l, int s) { return l.qlora_kv_cache_append(t[s], t[s], 1, 1, 8, t[s], nullptr, 4, 0, 0); });
}

// Attention over a cache: shapes of a prefill (tokens > 1, from past 0 or after a first chunk) and of
// decode steps (1 token) over a long cache, with left padding (first_key > 0; rows before it are
// padding and must come out as zeros, on both libraries).
struct CachedShape {
  uint64_t batch, tokens, past, capacity, heads, kv_heads, hd;
  std::vector<int32_t> first_key;  // empty: NULL
  std::string name(int32_t dt) const {
    std::string fk = first_key.empty() ? "NULL" : "";
    for (size_t i = 0; i < first_key.size(); i++) fk += fmt("%s%d", i ? "," : "", first_key[i]);
    return fmt("%s b%llu t%llu past %llu cap %llu h %llu/%llu hd %llu fk %s", dtype_name(dt),
               (unsigned long long)batch, (unsigned long long)tokens, (unsigned long long)past,
               (unsigned long long)capacity, (unsigned long long)heads, (unsigned long long)kv_heads,
               (unsigned long long)hd, fk.c_str());
  }
};

void test_attention_cached(Rng& rng) {
  std::vector<CachedShape> shapes = {
      {1, 1, 0, 1, 1, 1, 2, {}},                 // one token, one key
      {2, 9, 0, 16, 4, 2, 64, {0, 3}},           // a left-padded prefill
      {2, 1, 40, 48, 4, 2, 128, {2, 0}},         // a decode step
      {2, 5, 17, 30, 8, 1, 32, {-3, 20}},        // a chunk; sequence 1 still in its padding (zeros)
      {1, 70, 30, 100, 4, 4, 64, {}},            // a long chunk after a first one
      {3, 1, 199, 256, 4, 2, 128, {0, 100, 0}},  // decode over more than one key tile
  };
  if (!g_quick) shapes.push_back({1, 1, 4095, 4096, 32, 32, 128, {}});  // LLaMA-2-7B's last token
  for (int32_t dt : kActDtypes)
    for (const CachedShape& a : shapes) {
      const uint64_t q_count = a.batch * a.tokens * a.heads * a.hd, cache = a.batch * a.capacity * a.kv_heads * a.hd;
      const Values vq(rng, q_count, dt, -2, 2), vk(rng, cache, dt, -2, 2), vv(rng, cache, dt, -1, 1);
      Twin q(vq.bytes), kc(vk.bytes), vc(vv.bytes), out(q_count * dtype_size(dt)),
          fk(a.first_key.empty() ? std::vector<int32_t>{0} : a.first_key);
      Case c("qlora_attention_cached", a.name(dt));
      c.run([&](Lib& l, int s) {
        return l.qlora_attention_cached(q[s], kc[s], vc[s], a.batch, a.tokens, a.past, a.capacity, a.heads, a.kv_heads,
                                        a.hd, a.first_key.empty() ? nullptr : fk.i32(s), out[s], dt);
      });
      c.compare("out", out, dt, q_count, attention_out_tol(dt, vv.max));
      // Padding rows (no key to attend) are zeros on both.
      std::vector<uint8_t> zeros(a.heads * a.hd * dtype_size(dt), 0);
      for (uint64_t b = 0; b < a.batch; b++)
        for (uint64_t t = 0; t < a.tokens; t++)
          if (!a.first_key.empty() && (int64_t)(a.past + t) < a.first_key[b])
            for (int s = 0; s < 2; s++)
              c.expect_values("a padding row", zeros.data(),
                              out.download(s, zeros.size(), ((b * a.tokens + t) * a.heads * a.hd) * dtype_size(dt))
                                  .data(),
                              dt, a.heads * a.hd, bit_exact());
    }
  Twin t(1 << 16);
  auto cached = [&](uint64_t tokens, uint64_t past, uint64_t capacity, uint64_t heads, uint64_t kv, uint64_t hd) {
    return [&, tokens, past, capacity, heads, kv, hd](Lib& l, int s) {
      return l.qlora_attention_cached(t[s], t[s], t[s], 1, tokens, past, capacity, heads, kv, hd, nullptr, t[s], 0);
    };
  };
  const char* f = "qlora_attention_cached";
  expect_status(f, "rows 30 .. 34 past a capacity of 32", kInvalid, cached(4, 30, 32, 2, 2, 8));
  expect_status(f, "past 33 past a capacity of 32", kInvalid, cached(1, 33, 32, 2, 2, 8));
  expect_status(f, "capacity 0", kInvalid, cached(1, 0, 0, 2, 2, 8));
  expect_status(f, "tokens 0", kInvalid, cached(0, 0, 8, 2, 2, 8));
  expect_status(f, "heads 3, kv_heads 2", kInvalid, cached(1, 0, 8, 3, 2, 8));
  expect_status(f, "head_dim 256", QLORA_ERR_UNSUPPORTED, cached(1, 0, 8, 2, 2, 256));
  expect_status(f, "null out", kInvalid, [&](Lib& l, int s) {
    return l.qlora_attention_cached(t[s], t[s], t[s], 1, 1, 0, 8, 2, 2, 8, nullptr, nullptr, 0);
  });
}

// ---- SwiGLU -----------------------------------------------------------------------------------------------

void test_swiglu(Rng& rng) {
  struct Range {
    const char* name;
    float lo, hi;
  };
  const Range ranges[] = {{"gate in [-8, 8)", -8, 8}, {"gate in [-1e4, 1e4) (saturation)", -1e4f, 1e4f}};
  for (int32_t dt : kActDtypes)
    for (uint64_t n : {(uint64_t)1, (uint64_t)1001, pick(70001, (4u << 20) + 1)})
      for (const Range& r : ranges) {
        if (n == 1 && r.hi > 8) continue;
        const uint64_t bytes = n * dtype_size(dt);
        Twin gate(Values(rng, n, dt, r.lo, r.hi).bytes), up(Values(rng, n, dt, -2, 2).bytes), out(bytes),
            dout(Values(rng, n, dt, -1, 1).bytes), dgate(bytes), dup(bytes);
        const std::string desc = fmt("%s n %llu, %s", dtype_name(dt), (unsigned long long)n, r.name);
        {
          Case c("qlora_swiglu_forward", desc);
          c.run([&](Lib& l, int s) { return l.qlora_swiglu_forward(gate[s], up[s], n, out[s], dt); });
          c.compare("out", out, dt, n, rounding_tol(dt));
        }
        Case c("qlora_swiglu_backward", desc);
        c.run([&](Lib& l, int s) { return l.qlora_swiglu_backward(dout[s], gate[s], up[s], n, dgate[s], dup[s], dt); });
        c.compare("dgate", dgate, dt, n, rounding_tol(dt));
        c.compare("dup", dup, dt, n, rounding_tol(dt));
      }
  Twin t(64);
  const char *f = "qlora_swiglu_forward", *b = "qlora_swiglu_backward";
  expect_status(f, "n 0", kInvalid, [&](Lib& l, int s) { return l.qlora_swiglu_forward(t[s], t[s], 0, t[s], 0); });
  expect_status(f, "dtype f16", kInvalid,
                [&](Lib& l, int s) { return l.qlora_swiglu_forward(t[s], t[s], 4, t[s], QLORA_F16); });
  expect_status(f, "null up", kInvalid,
                [&](Lib& l, int s) { return l.qlora_swiglu_forward(t[s], nullptr, 4, t[s], 0); });
  expect_status(b, "n 0", kInvalid,
                [&](Lib& l, int s) { return l.qlora_swiglu_backward(t[s], t[s], t[s], 0, t[s], t[s], 0); });
  expect_status(b, "null dup", kInvalid,
                [&](Lib& l, int s) { return l.qlora_swiglu_backward(t[s], t[s], t[s], 4, t[s], nullptr, 0); });
}

// ---- cross-entropy ----------------------------------------------------------------------------------------
// Losses are f32 from the same inputs on both sides: 1e-5 of the largest loss (+1e-6) for both dtypes.
// dlogits: the dtype's rounding tolerance of the largest gradient, + 1e-6 |grad_scale| for f32.

void test_cross_entropy(Rng& rng) {
  struct Shape {
    uint64_t rows, vocab;
  };
  const Shape shapes[] = {{1, 1}, {5, 17}, {pick(33, 512), pick(1000, 32000)}};
  enum Mode { kSeparate, kLossOnly, kInPlace };
  const char* mode_name[] = {"", ", losses only", ", dlogits in place"};
  for (int32_t dt : kActDtypes)
    for (const Shape& sh : shapes)
      for (Mode mode : {kSeparate, kLossOnly, kInPlace}) {
        const uint64_t n = sh.rows * sh.vocab;
        std::vector<int32_t> targets = rng.ints(sh.rows, 0, (int32_t)sh.vocab);
        if (sh.rows > 2) targets[1] = -1;  // an ignored row
        const float scale = 1.0f / (float)sh.rows;
        Twin logits(Values(rng, n, dt, -6, 6).bytes), tt(targets), losses(sh.rows * 4), dlogits(n * dtype_size(dt));
        Case c("qlora_cross_entropy", fmt("%s rows %llu vocab %llu%s", dtype_name(dt), (unsigned long long)sh.rows,
                                          (unsigned long long)sh.vocab, mode_name[mode]));
        c.run([&](Lib& l, int s) {
          void* d = mode == kSeparate ? dlogits[s] : mode == kInPlace ? logits[s] : nullptr;
          return l.qlora_cross_entropy(logits[s], tt.i32(s), sh.rows, sh.vocab, losses.f32(s), d, scale, dt);
        });
        c.compare("losses", losses, QLORA_F32, sh.rows, within(kF32Tol, 1e-6));
        const Tol dtol = dt == QLORA_F32 ? within(kF32Tol, 1e-6 * scale) : rounding_tol(dt);
        if (mode == kSeparate) c.compare("dlogits", dlogits, dt, n, dtol);
        if (mode == kInPlace) c.compare("dlogits (in place)", logits, dt, n, dtol);
      }
  std::vector<int32_t> targets = rng.ints(12, 0, 10);
  Twin logits(12 * 10 * 4), tt(targets), losses(12 * 4);
  auto ce = [&](uint64_t rows, uint64_t vocab, float scale, int32_t dt) {
    return [&, rows, vocab, scale, dt](Lib& l, int s) {
      return l.qlora_cross_entropy(logits[s], tt.i32(s), rows, vocab, losses.f32(s), logits[s], scale, dt);
    };
  };
  const char* f = "qlora_cross_entropy";
  expect_status(f, "rows 0", kInvalid, ce(0, 10, 1, 0));
  expect_status(f, "vocab 0", kInvalid, ce(12, 0, 1, 0));
  expect_status(f, "grad_scale NaN", kInvalid, ce(12, 10, NAN, 0));
  expect_status(f, "dtype f16", kInvalid, ce(12, 10, 1, QLORA_F16));
  expect_status(f, "null targets", kInvalid, [&](Lib& l, int s) {
    return l.qlora_cross_entropy(logits[s], nullptr, 12, 10, losses.f32(s), nullptr, 1, 0);
  });
  expect_status(f, "null losses", kInvalid, [&](Lib& l, int s) {
    return l.qlora_cross_entropy(logits[s], tt.i32(s), 12, 10, nullptr, nullptr, 1, 0);
  });
  for (int32_t bad : {10, -2}) {
    const int32_t value = bad;
    tt.upload(&value, 4, 7 * 4);
    expect_status(f, fmt("target %d at row 7 of 12 (vocab 10)", bad), kInvalid, ce(12, 10, 1, 0));
  }
}

// ---- model cases: several ops chained, each library on its own results ------------------------------------
// Errors compound through a chain: f32 1e-4, bf16 3e-2 of the largest value of each compared output.

Tol chain_tol(int32_t dt) { return within(dt == QLORA_BF16 ? 3e-2 : 1e-4); }

// Embedding -> RMSNorm forward -> RMSNorm backward -> embedding backward: the hidden states, the weight
// gradient and the table gradient.
void test_model_norm(Rng& rng) {
  for (int32_t dt : kActDtypes)
    for (uint64_t rows : {(uint64_t)1, (uint64_t)37, pick(200, 4096)}) {
      const uint64_t vocab = 50, dim = 96, es = dtype_size(dt);
      Twin tokens(rng.ints(rows, 0, (int32_t)vocab)), table(Values(rng, vocab * dim, dt, -1, 1).bytes),
          weight(Values(rng, dim, dt, 0.5f, 1.5f).bytes), h(rows * dim * es), y(rows * dim * es), rstd(rows * 4),
          dy(Values(rng, rows * dim, dt, -1, 1).bytes), dh(rows * dim * es), dweight(std::vector<uint8_t>(dim * es, 0)),
          dtable(std::vector<uint8_t>(vocab * dim * es, 0));
      Case c("model: embed+rmsnorm", fmt("%s rows %llu vocab %llu dim %llu, fwd+bwd", dtype_name(dt),
                                         (unsigned long long)rows, (unsigned long long)vocab, (unsigned long long)dim));
      c.run([&](Lib& l, int s) {
        qlora_status st = l.qlora_embedding_forward(tokens.i32(s), rows, table[s], vocab, dim, h[s], dt);
        if (st == QLORA_OK) st = l.qlora_rmsnorm_forward(h[s], weight[s], rows, dim, 1e-6f, y[s], rstd.f32(s), dt);
        if (st == QLORA_OK)
          st = l.qlora_rmsnorm_backward(dy[s], h[s], weight[s], rstd.f32(s), rows, dim, dh[s], dweight[s], dt);
        if (st == QLORA_OK) st = l.qlora_embedding_backward(tokens.i32(s), rows, dh[s], vocab, dim, dtable[s], dt);
        return st;
      });
      c.compare("y", y, dt, rows * dim, chain_tol(dt));
      c.compare("dweight", dweight, dt, dim, chain_tol(dt));
      c.compare("dtable", dtable, dt, vocab * dim, chain_tol(dt));
    }
}

// RoPE forward then inverse gives the input back within rounding (each library against the input: f32
// 1e-5, bf16 2^-7 for two roundings), and the libraries agree on it.
void test_model_rope(Rng& rng) {
  for (int32_t dt : kActDtypes)
    for (uint64_t seq : {(uint64_t)1, (uint64_t)17, pick(70, 2048)}) {
      const uint64_t batch = 2, heads = 4, hd = 64, n = batch * seq * heads * hd;
      const Values x0(rng, n, dt, -2, 2);
      Twin x(x0.bytes);
      Case c("model: rope round trip",
             fmt("%s 2x%llux4x64, forward then inverse", dtype_name(dt), (unsigned long long)seq));
      c.run([&](Lib& l, int s) {
        qlora_status st = l.qlora_rope(x[s], batch, seq, heads, hd, 10000.0f, 0, dt);
        return st != QLORA_OK ? st : l.qlora_rope(x[s], batch, seq, heads, hd, 10000.0f, 1, dt);
      });
      c.compare("x", x, dt, n, rounding_tol(dt));
      const Tol back = dt == QLORA_BF16 ? within(0x1p-7) : within(kF32Tol);
      for (int s = 0; s < 2; s++)
        c.expect_values(s ? "test vs input" : "ref vs input", x0.bytes.data(), x.download(s).data(), dt, n, back);
    }
}

// One attention layer and a loss, forward and backward:
//   q = x Wq, k = x Wk, v = x Wv (GEMMs), RoPE on q and k, causal GQA attention, logits = o Wo,
//   cross-entropy; then dO = dlogits Wo^T, dWo = o^T dlogits, attention backward, inverse RoPE on dq and
//   dk, dx = dq Wq^T + dk Wk^T + dv Wv^T (beta = 1 accumulation). Compared: losses, dWo, dx.
void test_model_attention(Rng& rng) {
  const uint64_t vocab = 97, heads = 4, kv_heads = 2, batch = 2;
  for (int32_t dt : kActDtypes)
    for (uint64_t hd : {16, 64, 128})
      for (uint64_t seq : {(uint64_t)1, (uint64_t)17, (uint64_t)70}) {
        const uint64_t rows = batch * seq, d = heads * hd, dkv = kv_heads * hd, es = dtype_size(dt);
        const float wscale = 1.0f / std::sqrt((float)d);
        Twin x(Values(rng, rows * d, dt, -1, 1).bytes), wq(Values(rng, d * d, dt, -wscale, wscale).bytes),
            wk(Values(rng, d * dkv, dt, -wscale, wscale).bytes), wv(Values(rng, d * dkv, dt, -wscale, wscale).bytes),
            wo(Values(rng, d * vocab, dt, -wscale, wscale).bytes), targets(rng.ints(rows, 0, (int32_t)vocab));
        Twin q(rows * d * es), k(rows * dkv * es), v(rows * dkv * es), o(rows * d * es), lse(batch * heads * seq * 4),
            logits(rows * vocab * es), losses(rows * 4), dO(rows * d * es), dWo(d * vocab * es), dq(rows * d * es),
            dk(rows * dkv * es), dv(rows * dkv * es), dx(rows * d * es);
        Case c("model: attention layer", fmt("%s b2 seq %llu heads 4/2 hd %llu, fwd+bwd", dtype_name(dt),
                                             (unsigned long long)seq, (unsigned long long)hd));
        c.run([&](Lib& l, int s) {
          auto mm = [&](int ta, int tb, uint64_t m, uint64_t n, uint64_t kk, const Twin& a, const Twin& b, float beta,
                        Twin& out) {
            return l.qlora_gemm(ta, tb, m, n, kk, 1.0f, a[s], b[s], dt, beta, out[s], dt, 1, 0, 0, 0);
          };
          qlora_status st = mm(0, 0, rows, d, d, x, wq, 0, q);
          if (st == QLORA_OK) st = mm(0, 0, rows, dkv, d, x, wk, 0, k);
          if (st == QLORA_OK) st = mm(0, 0, rows, dkv, d, x, wv, 0, v);
          if (st == QLORA_OK) st = l.qlora_rope(q[s], batch, seq, heads, hd, 10000.0f, 0, dt);
          if (st == QLORA_OK) st = l.qlora_rope(k[s], batch, seq, kv_heads, hd, 10000.0f, 0, dt);
          if (st == QLORA_OK)
            st = l.qlora_attention_forward(q[s], k[s], v[s], batch, seq, heads, kv_heads, hd, o[s], lse.f32(s), dt);
          if (st == QLORA_OK) st = mm(0, 0, rows, vocab, d, o, wo, 0, logits);
          if (st == QLORA_OK)
            st = l.qlora_cross_entropy(logits[s], targets.i32(s), rows, vocab, losses.f32(s), logits[s],
                                       1.0f / (float)rows, dt);
          if (st == QLORA_OK) st = mm(0, 1, rows, d, vocab, logits, wo, 0, dO);
          if (st == QLORA_OK) st = mm(1, 0, d, vocab, rows, o, logits, 0, dWo);
          if (st == QLORA_OK)
            st = l.qlora_attention_backward(dO[s], q[s], k[s], v[s], o[s], lse.f32(s), batch, seq, heads, kv_heads, hd,
                                            dq[s], dk[s], dv[s], dt);
          if (st == QLORA_OK) st = l.qlora_rope(dq[s], batch, seq, heads, hd, 10000.0f, 1, dt);
          if (st == QLORA_OK) st = l.qlora_rope(dk[s], batch, seq, kv_heads, hd, 10000.0f, 1, dt);
          if (st == QLORA_OK) st = mm(0, 1, rows, d, d, dq, wq, 0, dx);
          if (st == QLORA_OK) st = mm(0, 1, rows, d, dkv, dk, wk, 1, dx);
          if (st == QLORA_OK) st = mm(0, 1, rows, d, dkv, dv, wv, 1, dx);
          return st;
        });
        c.compare("losses", losses, QLORA_F32, rows, chain_tol(dt));
        c.compare("dWo", dWo, dt, d * vocab, chain_tol(dt));
        c.compare("dx", dx, dt, rows * d, chain_tol(dt));
      }
}

// Generation's ops against training's on each library: RoPE at positions t equals qlora_rope (bit for
// bit: the same angles and the same sin/cos), and a prompt appended to a cache and attended in two chunks
// (prefill then decode steps, as model.generate runs it) equals causal attention over the prompt.
void test_model_generation(Rng& rng) {
  for (int32_t dt : kActDtypes) {
    const uint64_t batch = 2, seq = 21, heads = 4, kv_heads = 2, hd = 64, capacity = 32;
    const uint64_t n = batch * seq * heads * hd, nk = batch * seq * kv_heads * hd, es = dtype_size(dt);
    const Values x0(rng, n, dt, -2, 2), k0(rng, nk, dt, -2, 2), v0(rng, nk, dt, -1, 1);
    {
      std::vector<int32_t> pos(batch * seq);
      for (uint64_t r = 0; r < batch * seq; r++) pos[r] = (int32_t)(r % seq);
      Twin a(x0.bytes), b(x0.bytes), p(pos);
      Case c("model: rope_at = rope", fmt("%s 2x21x4x64 at positions 0..20", dtype_name(dt)));
      c.run([&](Lib& l, int s) {
        qlora_status st = l.qlora_rope(a[s], batch, seq, heads, hd, 10000.0f, 0, dt);
        return st != QLORA_OK ? st : l.qlora_rope_at(b[s], batch * seq, heads, hd, p.i32(s), 10000.0f, 0, dt);
      });
      for (int s = 0; s < 2; s++)
        c.expect_values(s ? "test: rope_at vs rope" : "ref: rope_at vs rope", a.download(s).data(), b.download(s).data(),
                        dt, n, bit_exact());
    }
    Twin q(x0.bytes), k(k0.bytes), v(v0.bytes), causal(n * es), lse(batch * heads * seq * 4);
    Twin kc(batch * capacity * kv_heads * hd * es), vc(batch * capacity * kv_heads * hd * es), cached(n * es);
    const uint64_t first = 13;  // the prefill's tokens; then one token at a time
    Case c("model: cached = causal attention", fmt("%s b2 seq 21 heads 4/2 hd 64: prefill 13, then 8 steps", dtype_name(dt)));
    c.run([&](Lib& l, int s) {
      qlora_status st = l.qlora_attention_forward(q[s], k[s], v[s], batch, seq, heads, kv_heads, hd, causal[s],
                                                  lse.f32(s), dt);
      // Per sequence, rows of q/k/v at token t: [b, t, heads or kv_heads, hd]; the steps take a slice of each
      // sequence's rows, so they run one sequence at a time (batch 1) on offset pointers.
      for (uint64_t b = 0; b < batch && st == QLORA_OK; b++)
        for (uint64_t t0 = 0; t0 < seq && st == QLORA_OK; t0 += t0 == 0 ? first : 1) {
          const uint64_t tokens = t0 == 0 ? first : 1;
          const uint64_t kv_off = (b * seq + t0) * kv_heads * hd * es, q_off = (b * seq + t0) * heads * hd * es;
          const uint64_t cache_off = b * capacity * kv_heads * hd * es;
          st = l.qlora_kv_cache_append((char*)k[s] + kv_off, (char*)v[s] + kv_off, 1, tokens, kv_heads * hd,
                                       (char*)kc[s] + cache_off, (char*)vc[s] + cache_off, capacity, t0, dt);
          if (st == QLORA_OK)
            st = l.qlora_attention_cached((char*)q[s] + q_off, (char*)kc[s] + cache_off, (char*)vc[s] + cache_off, 1,
                                          tokens, t0, capacity, heads, kv_heads, hd, nullptr, (char*)cached[s] + q_off,
                                          dt);
        }
      return st;
    });
    c.compare("cached", cached, dt, n, attention_out_tol(dt, v0.max));
    for (int s = 0; s < 2; s++)
      c.expect_values(s ? "test: cached vs causal" : "ref: cached vs causal", causal.download(s).data(),
                      cached.download(s).data(), dt, n, attention_out_tol(dt, v0.max));
  }
}

// ---- the run -----------------------------------------------------------------------------------------

struct Group {
  const char* name;  // the functions it covers: --filter matches a substring of it
  void (*run)(Rng&);
};

const Group kGroups[] = {
    {"qlora_init qlora_backend_name qlora_device_name qlora_synchronize qlora_last_error",
     [](Rng&) { test_library(); }},
    {"qlora_malloc qlora_free qlora_memory_stats qlora_reset_peak qlora_set_memory_budget",
     [](Rng&) { test_memory(); }},
    {"qlora_host_malloc qlora_host_free", test_host_memory},
    {"qlora_memcpy qlora_memset", test_memcpy},
    {"qlora_cast", test_cast},
    {"qlora_fill_normal", [](Rng&) { test_fill_normal(); }},
    {"qlora_fill_uniform", [](Rng&) { test_fill_uniform(); }},
    {"qlora_axpby", test_axpby},
    {"qlora_dropout", test_dropout},
    {"qlora_quant_map qlora_dynamic_map qlora_dynamic_map_unsigned", [](Rng&) { test_maps(); }},
    {"qlora_quantize_4bit qlora_dequantize_4bit", test_quantize_4bit},
    {"qlora_double_quantize qlora_double_dequantize", test_double_quantize},
    {"qlora_gemm", test_gemm},
    {"qlora_gemm_4bit qlora_gemm_4bit_workspace", test_gemm_4bit},
    {"qlora_adamw_step", test_adamw},
    {"qlora_adamw8_step", test_adamw8},
    {"qlora_sum_squares", test_sum_squares},
    {"qlora_embedding_forward qlora_embedding_backward", test_embedding},
    {"qlora_rmsnorm_forward qlora_rmsnorm_backward", test_rmsnorm},
    {"qlora_rope", test_rope},
    {"qlora_attention_forward qlora_attention_backward", test_attention},
    {"qlora_swiglu_forward qlora_swiglu_backward", test_swiglu},
    {"qlora_cross_entropy", test_cross_entropy},
    {"qlora_rope_at", test_rope_at},
    {"qlora_kv_cache_append", test_kv_cache_append},
    {"qlora_attention_cached", test_attention_cached},
    {"model: embed+rmsnorm", test_model_norm},
    {"model: rope round trip", test_model_rope},
    {"model: attention layer", test_model_attention},
    {"model: generation (rope_at, kv cache, cached attention)", test_model_generation},
};

// The ledger figures that must come back: device bytes, live allocations, host pool bytes.
struct Usage {
  uint64_t device, live, host;
  bool operator==(const Usage& o) const { return device == o.device && live == o.live && host == o.host; }
};
Usage usage(int side) {
  const qlora_ledger_snapshot s = stats(side);
  return {s.total_current, s.live_allocations, s.host_current};
}

// Runs one group with its own generator (seeded by its name, so a filtered run sees the same inputs);
// a harness error (an exception) and a leak both fail it.
void run_group(const Group& g) {
  uint64_t seed = 0x5eed;
  for (const char* p = g.name; *p; p++) seed = seed * 131 + (uint8_t)*p;
  Rng rng(seed);
  Usage before[2] = {usage(0), usage(1)};
  try {
    g.run(rng);
  } catch (const std::exception& e) {
    Case c(g.name, "harness error");
    c.fail("%s", e.what());
  }
  for (int s = 0; s < 2; s++) {
    const Usage after = usage(s);
    if (!(after == before[s])) {
      Case c(g.name, fmt("%s: ledger back to the start", kSide[s]));
      c.fail("device bytes %llu -> %llu, live allocations %llu -> %llu, host bytes %llu -> %llu",
             (unsigned long long)before[s].device, (unsigned long long)after.device, (unsigned long long)before[s].live,
             (unsigned long long)after.live, (unsigned long long)before[s].host, (unsigned long long)after.host);
    }
  }
}

int usage_error(const char* argv0) {
  fprintf(stderr, "usage: %s REF.so TEST.so [--filter SUBSTRING] [--quick]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const char* paths[2] = {nullptr, nullptr};
  const char* filter = nullptr;
  int positional = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick"))
      g_quick = true;
    else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
      filter = argv[++i];
    else if (argv[i][0] != '-' && positional < 2)
      paths[positional++] = argv[i];
    else
      return usage_error(argv[0]);
  }
  if (positional != 2) return usage_error(argv[0]);

  int groups = 0;
  for (const Group& g : kGroups) groups += !filter || strstr(g.name, filter);
  if (groups == 0) {
    fprintf(stderr, "parity: no group matches --filter %s\n", filter);
    return 2;
  }
  for (int s = 0; s < 2; s++) open_library(lib(s), paths[s]);
  if (lib(0).handle == lib(1).handle) {
    fprintf(stderr, "parity: %s and %s are one library (dlopen shares a path's handle): copy it to two paths\n",
            paths[0], paths[1]);
    return 2;
  }
  const uint32_t abi[2] = {lib(0).qlora_abi_version(), lib(1).qlora_abi_version()};
  if (abi[0] != QLORA_ABI_VERSION || abi[1] != QLORA_ABI_VERSION) {
    fprintf(stderr, "parity: ABI versions ref %u, test %u, harness %u: rebuild to match\n", abi[0], abi[1],
            (unsigned)QLORA_ABI_VERSION);
    return 1;
  }
  if (lib(0).qlora_init() != QLORA_OK) {
    fprintf(stderr, "parity: ref %s failed to initialise: %s\n", paths[0], lib(0).qlora_last_error());
    return 1;
  }
  if (lib(1).qlora_init() != QLORA_OK) {
    printf("parity: skipped, test %s cannot initialise: %s\n", paths[1], lib(1).qlora_last_error());
    return 77;
  }
  for (int s = 0; s < 2; s++) {
    char name[256] = "";
    lib(s).qlora_device_name(name, sizeof name);
    printf("%-4s %s: %s backend, ABI %u, %s\n", kSide[s], paths[s], lib(s).qlora_backend_name(), abi[s], name);
  }
  printf("%s sizes%s%s\n\n", g_quick ? "quick" : "full", filter ? ", filter: " : "", filter ? filter : "");
  printf("%-26s %-50s %-50s %9s %9s    %-8s %s\n", "function", "case", "result", "ref", "test", "test/ref", "");

  const auto t0 = std::chrono::steady_clock::now();
  const Usage start[2] = {usage(0), usage(1)};
  for (const Group& g : kGroups)
    if (!filter || strstr(g.name, filter)) run_group(g);
  {
    Case c("leak check", "both ledgers back to where they started");
    for (int s = 0; s < 2; s++) c.check(usage(s) == start[s], s ? "test ledger differs" : "ref ledger differs");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("\n%d groups in %.1f s\n%d passed, %d failed\n", groups, seconds, g_passed, g_failed);
  return g_failed ? 1 : 0;
}
