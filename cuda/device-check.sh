#!/usr/bin/env bash
# device-check.sh: everything worth checking on a GPU machine, in one run of at most ~8 minutes.
#
#   bash cuda/device-check.sh        (from anywhere; works on a bare machine with nvcc, no network)
#
# Steps (each one's failure is reported and the next steps still run):
#   1. build         make -C cuda -j16 (-k: a CPU-library failure does not stop the CUDA library)
#   2. deno tests    QLORA_BACKEND=cuda ./deno task test (all tests, tests/parity_test.ts included);
#                    skipped when npx is missing (./deno runs Deno from npm)
#   3. C check       a C++ program, built here, that loads build/libqlora_cuda.so with dlopen and checks
#                    uniform fill / axpby / dropout bit for bit against the CPU library (or the shared
#                    formulas where that library is missing), GEMM against a double-precision loop and
#                    the 4-bit GEMM against a dequantize-then-multiply loop; run twice: with cuBLAS
#                    (when found) and with QLORA_GEMM=builtin (the built-in kernels)
#   4. benchmarks    NF4 dequantize / quantize bandwidth vs a device-to-device copy, bf16 GEMM TFLOP/s
#                    (cuBLAS path and built-in kernels), NF4 GEMV vs bf16 GEMV
#   5. torch         torch.matmul bf16 GEMM and GEMV on the same GPU, for comparison
#
# Results: lines "RESULT key=value" from every step, collected with each step's status into
# $OUT/summary.txt when $OUT is set (else ./device-check-summary.txt); full logs beside it.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out_dir=${OUT:-$repo}
summary="$out_dir/$([ -n "${OUT:-}" ] && echo summary.txt || echo device-check-summary.txt)"
logs="$out_dir/device-check-logs"
mkdir -p "$logs"
: >"$summary"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

started=$(date +%s)
deadline=$((started + 470)) # every step ends by then: 7m50s, leaving time to write the summary

note() { echo "$*" | tee -a "$summary"; }

# run_step NAME BUDGET_S COMMAND...: runs the command with a timeout of its budget (or what is left
# before the deadline), logs it to $logs/NAME.log, and notes ok / FAILED / TIMED OUT with the time.
run_step() {
  local name=$1 budget=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    note "step $name: SKIPPED (out of time)"
    return 1
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  local t0 rc
  t0=$(date +%s)
  echo "== $name (budget ${budget}s): $*" >&2
  timeout --kill-after=5 "$budget" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    note "step $name: ok (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "step $name: TIMED OUT after ${took}s"
  else
    note "step $name: FAILED rc=$rc (${took}s)"
  fi
  if [ $rc -ne 0 ]; then tail -n 25 "$logs/$name.log" | sed 's/^/    | /' | tee -a "$summary"; fi
  grep -h '^RESULT ' "$logs/$name.log" >>"$work/results" 2>/dev/null
  return $rc
}

# ---- 0. the machine ---------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  nvcc --version 2>&1 | tail -n 1 | sed 's/^/nvcc: /'
  python3 -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1
  echo "npx: $(command -v npx || echo missing)"
} | tee -a "$summary"

# cuBLAS is loaded at run time by name (libcublas.so.13/.12). Where the system has none but PyTorch
# brought its own (pip's nvidia-cublas), put that folder on the loader path.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so' && [ ! -e /usr/local/cuda/lib64/libcublas.so.13 ] &&
  [ ! -e /usr/local/cuda/lib64/libcublas.so.12 ]; then
  torch_cublas=$(python3 -c 'import os, nvidia.cublas as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null)
  if [ -n "$torch_cublas" ] && [ -d "$torch_cublas" ]; then
    export LD_LIBRARY_PATH="$torch_cublas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "cublas: using PyTorch's copy in $torch_cublas"
  else
    note "cublas: none found; qlora_gemm uses its built-in kernels"
  fi
else
  note "cublas: $(ldconfig -p 2>/dev/null | grep -o 'libcublas\.so[.0-9]*' | sort -u | tr '\n' ' ')"
fi

# ---- 1. build ---------------------------------------------------------------------------------
run_step build 150 make -C cuda -j16 -k
[ -f build/libqlora_cuda.so ] || note "build: build/libqlora_cuda.so is missing; the checks below will fail"

# ---- 2. the Deno test suite on the CUDA backend -------------------------------------------------
if command -v npx >/dev/null 2>&1; then
  NO_COLOR=1 QLORA_BACKEND=cuda run_step deno-tests 150 ./deno task test
else
  note "step deno-tests: SKIPPED (npx not found; ./deno needs Node.js/npm)"
fi

# ---- 3 and 4. the C check and benchmarks ------------------------------------------------------
cat >"$work/qcheck.cpp" <<'EOF'
// qcheck: correctness checks ("check") and benchmarks ("bench", "bench-gemm") of a qlora backend,
// loaded with dlopen so that the CUDA and CPU libraries (same symbols) can sit in one process.
#include <dlfcn.h>
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "qlora.h"
#include "half.h"      // bf16/f16 conversions of the library
#include "validate.h"  // random_word, unit_float, dropout_keep: the shared generator

using namespace qlora;

#define FUNCS                                                                                       \
  X(qlora_init) X(qlora_last_error) X(qlora_device_name) X(qlora_synchronize) X(qlora_malloc)       \
  X(qlora_free) X(qlora_memcpy) X(qlora_fill_uniform) X(qlora_fill_normal) X(qlora_axpby)           \
  X(qlora_dropout) X(qlora_gemm) X(qlora_gemm_4bit_workspace) X(qlora_gemm_4bit) X(qlora_quantize_4bit) \
  X(qlora_dequantize_4bit) X(qlora_quant_map)

struct Lib {
#define X(f) decltype(&::f) f = nullptr;
  FUNCS
#undef X
  bool open(const char* path) {
    void* so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so) return false;
#define X(f) f = (decltype(&::f))dlsym(so, #f);
    FUNCS
#undef X
    return qlora_init && qlora_init() == QLORA_OK;
  }
};

Lib gpu, cpu;
bool have_cpu = false;
int failures = 0;

void q(qlora_status s, const char* what) {
  if (s != QLORA_OK) throw std::runtime_error(std::string(what) + ": " + gpu.qlora_last_error());
}
size_t esize(int dt) { return dt == QLORA_F32 ? 4 : 2; }
void* dalloc(size_t bytes) {
  void* p = nullptr;
  q(gpu.qlora_malloc(&p, bytes, QLORA_CAT_WORKSPACE), "malloc");
  return p;
}
void up(void* d, const void* h, size_t b) { q(gpu.qlora_memcpy(d, h, b, QLORA_HOST_TO_DEVICE), "upload"); }
void down(void* h, const void* d, size_t b) { q(gpu.qlora_memcpy(h, d, b, QLORA_DEVICE_TO_HOST), "download"); }
std::mt19937_64 rng(1234);
float randf() { return std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng); }
std::vector<uint8_t> host_random(int dt, size_t n, bool nan = false) {
  std::vector<uint8_t> h(n * esize(dt));
  for (size_t i = 0; i < n; i++) store_float(h.data(), dt, i, nan ? NAN : randf());
  return h;
}
void report(bool ok, const std::string& what) {
  printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  if (!ok) failures++;
}
double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// ---- elementwise: bit for bit against the CPU library (or the shared formulas) ----
void check_ops() {
  const size_t n = (1 << 20) + 3;
  for (int dt = 0; dt < 3; dt++) {
    const size_t bytes = n * esize(dt);
    void* d = dalloc(bytes);
    void* d2 = dalloc(bytes);
    std::vector<uint8_t> got(bytes), want(bytes);
    // uniform fill
    q(gpu.qlora_fill_uniform(d, dt, n, -0.25f, 3.0f, 77), "fill_uniform");
    down(got.data(), d, bytes);
    if (have_cpu) {
      q(cpu.qlora_fill_uniform(want.data(), dt, n, -0.25f, 3.0f, 77), "cpu fill_uniform");
    } else {
      const volatile float width = 3.0f - -0.25f;
      for (size_t i = 0; i < n; i++) {
        volatile float scaled = width * unit_float(random_word(77, i));
        store_float(want.data(), dt, i, -0.25f + scaled);
      }
    }
    report(got == want, "fill_uniform dtype " + std::to_string(dt) + " bit-identical");
    // axpby, beta != 0 and beta = 0 over a NaN y
    for (int pass = 0; pass < 2; pass++) {
      float beta = pass ? 0.0f : -0.7f;
      auto x = host_random(dt, n), y = host_random(dt, n, pass == 1);
      up(d, x.data(), bytes);
      up(d2, y.data(), bytes);
      q(gpu.qlora_axpby(1.3f, d, beta, d2, dt, n), "axpby");
      down(got.data(), d2, bytes);
      if (have_cpu) {
        q(cpu.qlora_axpby(1.3f, x.data(), beta, y.data(), dt, n), "cpu axpby");
      } else {
        for (size_t i = 0; i < n; i++) {
          volatile float ax = 1.3f * load_float(x.data(), dt, i);
          volatile float by = beta == 0.0f ? 0.0f : beta * load_float(y.data(), dt, i);
          store_float(y.data(), dt, i, beta == 0.0f ? (float)ax : ax + by);
        }
      }
      report(got == y, "axpby beta " + std::to_string(beta) + " dtype " + std::to_string(dt) + " bit-identical");
    }
    // dropout, in place
    auto x = host_random(dt, n);
    up(d, x.data(), bytes);
    q(gpu.qlora_dropout(d, d, dt, n, 0.1f, 5), "dropout");
    down(got.data(), d, bytes);
    if (have_cpu) {
      q(cpu.qlora_dropout(x.data(), x.data(), dt, n, 0.1f, 5), "cpu dropout");
    } else {
      const float scale = 1.0f / (1.0f - 0.1f);
      for (size_t i = 0; i < n; i++)
        store_float(x.data(), dt, i, dropout_keep(5, i, 0.1f) ? load_float(x.data(), dt, i) * scale : 0.0f);
    }
    report(got == x, "dropout dtype " + std::to_string(dt) + " bit-identical");
    gpu.qlora_free(d);
    gpu.qlora_free(d2);
  }
}

// ---- GEMM against a double loop (batches in order, as a loop would) ----
struct GemmCase {
  int ta, tb;
  uint64_t m, n, k;
  int abd, cd;
  uint64_t batch;
  bool share_a, share_b, share_c;
  float alpha, beta;
};

void check_gemm_case(const GemmCase& g) {
  const uint64_t sa = g.share_a ? 0 : g.m * g.k, sb = g.share_b ? 0 : g.k * g.n, sc = g.share_c ? 0 : g.m * g.n;
  const uint64_t na = (g.share_a ? 1 : g.batch) * g.m * g.k, nb = (g.share_b ? 1 : g.batch) * g.k * g.n;
  const uint64_t nc = (g.share_c ? 1 : g.batch) * g.m * g.n;
  auto a = host_random(g.abd, na), b = host_random(g.abd, nb), c = host_random(g.cd, nc, g.beta == 0.0f);
  std::vector<double> ref(nc), mag(nc, 1e-30);
  for (uint64_t i = 0; i < nc; i++) ref[i] = load_float(c.data(), g.cd, i);
  for (uint64_t bt = 0; bt < g.batch; bt++)
    for (uint64_t i = 0; i < g.m; i++)
      for (uint64_t j = 0; j < g.n; j++) {
        double s = 0, abs_sum = 0;
        for (uint64_t p = 0; p < g.k; p++) {
          double av = load_float(a.data(), g.abd, bt * sa + (g.ta ? p * g.m + i : i * g.k + p));
          double bv = load_float(b.data(), g.abd, bt * sb + (g.tb ? j * g.k + p : p * g.n + j));
          s += av * bv;
          abs_sum += fabs(av * bv);
        }
        const uint64_t idx = bt * sc + i * g.n + j;
        const double old = g.beta == 0.0f ? 0.0 : g.beta * ref[idx];
        ref[idx] = g.alpha * s + old;
        mag[idx] = fabs(g.alpha) * abs_sum + fabs(old) + 1e-30;
      }
  void* da = dalloc(a.size());
  void* db = dalloc(b.size());
  void* dc = dalloc(c.size());
  up(da, a.data(), a.size());
  up(db, b.data(), b.size());
  up(dc, c.data(), c.size());
  q(gpu.qlora_gemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, da, db, g.abd, g.beta, dc, g.cd, g.batch, sa, sb, sc), "gemm");
  down(c.data(), dc, c.size());
  double worst = 0;
  for (uint64_t i = 0; i < nc; i++) {
    double err = fabs(load_float(c.data(), g.cd, i) - ref[i]) / mag[i];
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
  }
  const double tol = (g.cd == QLORA_BF16 ? 1.0 / 128 : 1e-5) * (g.share_c && g.batch > 1 ? 4 : 1);
  char what[256];
  snprintf(what, sizeof what, "gemm ta %d tb %d m %llu n %llu k %llu ab %s c %s batch %llu share %d%d%d beta %g: rel err %.2e",
           g.ta, g.tb, (unsigned long long)g.m, (unsigned long long)g.n, (unsigned long long)g.k,
           g.abd ? "bf16" : "f32", g.cd ? "bf16" : "f32", (unsigned long long)g.batch, g.share_a, g.share_b,
           g.share_c, g.beta, worst);
  report(worst <= tol, what);
  gpu.qlora_free(da);
  gpu.qlora_free(db);
  gpu.qlora_free(dc);
}

void check_gemm() {
  const uint64_t shapes[][3] = {{1, 1, 1}, {17, 33, 65}, {128, 256, 64}, {257, 129, 300}, {64, 1, 4096}, {1, 512, 77}};
  int i = 0;
  for (auto& s : shapes)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        i++;
        GemmCase g = {ta, tb, s[0], s[1], s[2], i % 2 ? QLORA_BF16 : QLORA_F32, (i / 2) % 2 ? QLORA_BF16 : QLORA_F32,
                      1, false, false, false, i % 3 ? 0.75f : 1.0f, i % 4 ? 0.0f : 0.5f};
        check_gemm_case(g);
      }
  check_gemm_case({0, 1, 33, 47, 80, QLORA_BF16, QLORA_F32, 3, false, true, false, 1.0f, 0.0f});   // shared B
  check_gemm_case({1, 0, 20, 30, 40, QLORA_F32, QLORA_F32, 4, true, false, false, -1.0f, 2.0f});   // shared A
  check_gemm_case({0, 0, 16, 24, 32, QLORA_F32, QLORA_BF16, 3, false, false, true, 1.0f, 1.0f});   // one C: in order
  check_gemm_case({0, 0, 8, 8, 8, QLORA_BF16, QLORA_BF16, 70000, false, false, false, 1.0f, 0.0f}); // many batches
}

// ---- 4-bit GEMM against dequantize-then-multiply in double ----
struct Gemm4Case {
  int tw;
  uint64_t m, n, k;
  int qt;
  uint64_t bs;
  int xd, cd;
  float beta;
};

void check_gemm_4bit_case(const Gemm4Case& g) {
  const uint64_t nw = g.n * g.k, blocks = (nw + g.bs - 1) / g.bs;
  std::vector<float> w(nw);
  for (auto& v : w) v = randf() * randf();
  void* dw = dalloc(nw * 4);
  uint8_t* dpk = (uint8_t*)dalloc((nw + 1) / 2);
  float* dam = (float*)dalloc(blocks * 4);
  up(dw, w.data(), nw * 4);
  q(gpu.qlora_quantize_4bit(dw, QLORA_F32, nw, g.qt, g.bs, dpk, dam), "quantize");
  std::vector<uint8_t> pk((nw + 1) / 2);
  std::vector<float> am(blocks), code(16);
  down(pk.data(), dpk, pk.size());
  down(am.data(), dam, blocks * 4);
  q(gpu.qlora_quant_map(g.qt, code.data()), "quant_map");
  auto x = host_random(g.xd, g.m * g.k), c = host_random(g.cd, g.m * g.n, g.beta == 0.0f);
  uint64_t ws = 0;
  q(gpu.qlora_gemm_4bit_workspace(g.tw, g.m, g.n, g.k, &ws), "workspace size");
  std::vector<double> ref(g.m * g.n), mag(g.m * g.n);
  for (uint64_t r = 0; r < g.m; r++)
    for (uint64_t j = 0; j < g.n; j++) {
      double s = 0, abs_sum = 0;
      for (uint64_t p = 0; p < g.k; p++) {
        const uint64_t f = g.tw ? j * g.k + p : p * g.n + j;
        float wv = code[(f & 1) ? pk[f / 2] & 15 : pk[f / 2] >> 4] * am[f / g.bs];
        if (ws > 0 && g.xd == QLORA_BF16) wv = bf16_to_float(float_to_bf16(wv));  // W dequantized to X's dtype
        double xv = load_float(x.data(), g.xd, r * g.k + p);
        s += xv * wv;
        abs_sum += fabs(xv * wv);
      }
      const uint64_t idx = r * g.n + j;
      const double old = g.beta == 0.0f ? 0.0 : g.beta * load_float(c.data(), g.cd, idx);
      ref[idx] = s + old;
      mag[idx] = abs_sum + fabs(old) + 1e-30;
    }
  void* dx = dalloc(x.size());
  void* dc = dalloc(c.size());
  void* dws = ws ? dalloc(ws) : nullptr;
  up(dx, x.data(), x.size());
  up(dc, c.data(), c.size());
  q(gpu.qlora_gemm_4bit(g.tw, g.m, g.n, g.k, 1.0f, dx, g.xd, dpk, dam, g.qt, g.bs, g.beta, dc, g.cd, dws, ws),
    "gemm_4bit");
  down(c.data(), dc, c.size());
  double worst = 0;
  for (uint64_t i = 0; i < g.m * g.n; i++) {
    double err = fabs(load_float(c.data(), g.cd, i) - ref[i]) / mag[i];
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
  }
  char what[256];
  snprintf(what, sizeof what, "gemm_4bit trans_w %d m %llu n %llu k %llu qt %d bs %llu x %s c %s ws %llu: rel err %.2e",
           g.tw, (unsigned long long)g.m, (unsigned long long)g.n, (unsigned long long)g.k, g.qt,
           (unsigned long long)g.bs, g.xd ? "bf16" : "f32", g.cd ? "bf16" : "f32", (unsigned long long)ws, worst);
  report(worst <= (g.cd == QLORA_BF16 ? 1.0 / 128 : 1e-5), what);
  for (void* p : {dw, (void*)dpk, (void*)dam, dx, dc, dws}) gpu.qlora_free(p);
}

void check_gemm_4bit() {
  const Gemm4Case cases[] = {
      {1, 1, 4096, 4096, QLORA_NF4, 64, QLORA_BF16, QLORA_BF16, 0.0f},
      {1, 4, 1000, 1032, QLORA_FP4, 64, QLORA_F32, QLORA_F32, 0.5f},
      {1, 2, 333, 257, QLORA_INT4, 128, QLORA_F32, QLORA_BF16, 0.0f},
      {0, 1, 4096, 1024, QLORA_NF4, 64, QLORA_BF16, QLORA_F32, 0.0f},
      {0, 3, 333, 257, QLORA_INT4, 128, QLORA_F32, QLORA_BF16, 1.0f},
      {1, 5, 768, 1024, QLORA_NF4, 64, QLORA_BF16, QLORA_BF16, 0.0f},
      {1, 64, 1024, 768, QLORA_NF4, 64, QLORA_F32, QLORA_F32, 0.25f},
      {0, 64, 512, 1024, QLORA_NF4, 64, QLORA_F32, QLORA_F32, 0.0f},
      {0, 17, 1000, 333, QLORA_FP4, 32, QLORA_BF16, QLORA_F32, 0.0f},
      {1, 33, 333, 257, QLORA_NF4, 64, QLORA_BF16, QLORA_F32, -1.0f},
  };
  for (auto& g : cases) check_gemm_4bit_case(g);
}

// ---- benchmarks: median of a few timed runs after a warm-up ----
template <class F>
double time_it(int iters, F f) {
  f();
  q(gpu.qlora_synchronize(), "sync");
  std::vector<double> t;
  for (int r = 0; r < 3; r++) {
    double t0 = now();
    for (int i = 0; i < iters; i++) f();
    q(gpu.qlora_synchronize(), "sync");
    t.push_back((now() - t0) / iters);
  }
  std::sort(t.begin(), t.end());
  return t[1];
}

void bench_quant() {
  const uint64_t n = 256ull << 20;  // 256M values
  void* x = dalloc(n * 2);          // bf16
  void* out16 = dalloc(n * 2);
  void* out32 = dalloc(n * 4);
  uint8_t* pk = (uint8_t*)dalloc(n / 2);
  float* am = (float*)dalloc(n / 64 * 4);
  q(gpu.qlora_fill_normal(x, QLORA_BF16, n, 0.0f, 0.02f, 1), "fill");
  q(gpu.qlora_quantize_4bit(x, QLORA_BF16, n, QLORA_NF4, 64, pk, am), "quantize");
  const double gb = 1e9;
  double t_copy = time_it(10, [&] { q(gpu.qlora_memcpy(out16, x, n * 2, QLORA_DEVICE_TO_DEVICE), "copy"); });
  double copy_bw = 2.0 * n * 2 / t_copy / gb;  // read + write
  double t_dq16 = time_it(10, [&] { q(gpu.qlora_dequantize_4bit(pk, am, n, QLORA_NF4, 64, out16, QLORA_BF16), "dq"); });
  double t_dq32 = time_it(10, [&] { q(gpu.qlora_dequantize_4bit(pk, am, n, QLORA_NF4, 64, out32, QLORA_F32), "dq"); });
  // quantize waits for its NaN check each call (a host round trip): still a fair end-to-end figure
  double t_q = time_it(5, [&] { q(gpu.qlora_quantize_4bit(x, QLORA_BF16, n, QLORA_NF4, 64, pk, am), "q"); });
  const double packed = n / 2 + n / 64 * 4;
  printf("RESULT copy_d2d_GBps=%.0f\n", copy_bw);
  printf("RESULT nf4_dequant_bf16_GBps=%.0f ratio_to_copy=%.2f\n", (packed + n * 2) / t_dq16 / gb,
         (packed + n * 2) / t_dq16 / gb / copy_bw);
  printf("RESULT nf4_dequant_f32_GBps=%.0f ratio_to_copy=%.2f\n", (packed + n * 4) / t_dq32 / gb,
         (packed + n * 4) / t_dq32 / gb / copy_bw);
  printf("RESULT nf4_quant_from_bf16_GBps=%.0f ratio_to_copy=%.2f\n", (n * 2 + packed) / t_q / gb,
         (n * 2 + packed) / t_q / gb / copy_bw);
  for (void* p : {x, out16, out32, (void*)pk, (void*)am}) gpu.qlora_free(p);
}

void bench_gemm(const char* label, uint64_t size, int iters) {
  const uint64_t m = size, n = size, k = size;
  void* a = dalloc(m * k * 2);
  void* b = dalloc(k * n * 2);
  void* c = dalloc(m * n * 2);
  q(gpu.qlora_fill_normal(a, QLORA_BF16, m * k, 0.0f, 1.0f, 1), "fill");
  q(gpu.qlora_fill_normal(b, QLORA_BF16, k * n, 0.0f, 1.0f, 2), "fill");
  double t = time_it(iters, [&] {
    q(gpu.qlora_gemm(0, 0, m, n, k, 1.0f, a, b, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemm");
  });
  printf("RESULT qlora_bf16_gemm_%s_%llu_TFLOPs=%.1f\n", label, (unsigned long long)size, 2.0 * m * n * k / t / 1e12);
  for (void* p : {a, b, c}) gpu.qlora_free(p);
}

void bench_gemv() {
  const uint64_t n = 8192, k = 8192;  // W stored n x k, as a linear layer's weight
  void* w16 = dalloc(n * k * 2);
  uint8_t* pk = (uint8_t*)dalloc(n * k / 2);
  float* am = (float*)dalloc(n * k / 64 * 4);
  void* x = dalloc(4 * k * 2);
  void* c = dalloc(4 * n * 2);
  q(gpu.qlora_fill_normal(w16, QLORA_BF16, n * k, 0.0f, 0.02f, 3), "fill");
  q(gpu.qlora_fill_normal(x, QLORA_BF16, 4 * k, 0.0f, 1.0f, 4), "fill");
  q(gpu.qlora_quantize_4bit(w16, QLORA_BF16, n * k, QLORA_NF4, 64, pk, am), "quantize");
  for (uint64_t m : {1ull, 4ull}) {
    double t16 = time_it(50, [&] {
      q(gpu.qlora_gemm(0, 1, m, n, k, 1.0f, x, w16, QLORA_BF16, 0.0f, c, QLORA_BF16, 1, 0, 0, 0), "gemv bf16");
    });
    uint64_t ws = 0;  // 0 on CUDA for m <= 4 (the fused GEMV); asked anyway, so any backend runs this
    q(gpu.qlora_gemm_4bit_workspace(1, m, n, k, &ws), "workspace size");
    void* dws = ws ? dalloc(ws) : nullptr;
    double t4 = time_it(50, [&] {
      q(gpu.qlora_gemm_4bit(1, m, n, k, 1.0f, x, QLORA_BF16, pk, am, QLORA_NF4, 64, 0.0f, c, QLORA_BF16, dws, ws),
        "gemv nf4");
    });
    gpu.qlora_free(dws);
    const double bytes16 = n * k * 2.0, bytes4 = n * k / 2.0 + n * k / 64 * 4.0;
    printf("RESULT gemv_m%llu_%llux%llu bf16_us=%.1f (%.0f GB/s) nf4_us=%.1f (%.0f GB/s) nf4_speedup=%.2f\n",
           (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, t16 * 1e6, bytes16 / t16 / 1e9, t4 * 1e6, bytes4 / t4 / 1e9, t16 / t4);
  }
  for (void* p : {w16, (void*)pk, (void*)am, x, c}) gpu.qlora_free(p);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  const char* lib = argc > 2 ? argv[2] : "build/libqlora_cuda.so";
  if (!gpu.open(lib)) {
    printf("FAIL cannot load or init %s: %s\n", lib, gpu.qlora_last_error ? gpu.qlora_last_error() : dlerror());
    return 2;
  }
  char name[256] = "";
  gpu.qlora_device_name(name, sizeof name);
  const char* gemm_env = getenv("QLORA_GEMM");
  printf("device: %s (QLORA_GEMM=%s)\n", name, gemm_env ? gemm_env : "");
  try {
    if (mode == "check") {
      have_cpu = cpu.open("build/libqlora_cpu.so");
      printf("elementwise reference: %s\n", have_cpu ? "CPU library" : "the shared formulas (no CPU library)");
      check_ops();
      check_gemm();
      check_gemm_4bit();
      printf("RESULT c_check%s_failures=%d\n", gemm_env ? "_builtin" : "", failures);
    } else if (mode == "bench") {
      bench_quant();
      bench_gemm("default", 8192, 10);
      bench_gemv();
    } else if (mode == "bench-gemm") {
      bench_gemm(gemm_env ? gemm_env : "default", 4096, 5);
    }
  } catch (const std::exception& e) {
    printf("FAIL %s\n", e.what());
    return 2;
  }
  return failures ? 1 : 0;
}
EOF

if run_step compile-check 60 g++ -std=c++17 -O2 -ffp-contract=off -Icuda/include -Icuda/src/common \
  "$work/qcheck.cpp" -o "$work/qcheck" -ldl; then
  run_step c-check 45 "$work/qcheck" check
  QLORA_GEMM=builtin run_step c-check-builtin 45 "$work/qcheck" check
  run_step bench 60 "$work/qcheck" bench
  QLORA_GEMM=builtin run_step bench-builtin-gemm 30 "$work/qcheck" bench-gemm
fi

# ---- 5. PyTorch on the same GPU, for comparison -------------------------------------------------
cat >"$work/torch_bench.py" <<'EOF'
import time
import torch

def timed(f, iters):
    f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters

s = 8192
a = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
b = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
t = timed(lambda: torch.matmul(a, b), 10)
print(f"RESULT torch_bf16_gemm_8192_TFLOPs={2 * s**3 / t / 1e12:.1f}")
w = torch.randn(s, s, device="cuda", dtype=torch.bfloat16)
for m in (1, 4):
    x = torch.randn(m, s, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: torch.matmul(x, w.t()), 50)
    print(f"RESULT torch_gemv_m{m}_8192x8192 bf16_us={t * 1e6:.1f} ({s * s * 2 / t / 1e9:.0f} GB/s)")
EOF
run_step torch 45 python3 "$work/torch_bench.py"

# ---- summary --------------------------------------------------------------------------------------
{
  echo "---- results"
  [ -f "$work/results" ] && sed 's/^RESULT //' "$work/results"
  # qlora's bf16 GEMM as a fraction of torch.matmul's
  awk -F'[= ]' '/qlora_bf16_gemm_default_8192_TFLOPs/ {q = $3} /torch_bf16_gemm_8192_TFLOPs/ {t = $3}
    END { if (q && t) printf "qlora/torch bf16 GEMM 8192: %.2f\n", q / t }' "$work/results" 2>/dev/null
  echo "total: $(($(date +%s) - started))s; logs in $logs"
} | tee -a "$summary"
