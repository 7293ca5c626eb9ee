// cpu/gemm.cpp: matrix products on the CPU through oneDNN's matmul primitive (a decode step's few bf16 rows
// against W stored n x k through gemv16.cpp instead), and the product with a 4-bit matrix: up to 8 rows of
// X fused (gemv4.cpp), more rows of bf16 X through panels decoded into cache (gemm4.cpp: up to 512 rows of
// the forward product, any number of an input gradient's), other rows dequantized tile by tile into the
// caller's workspace for oneDNN.
// gpu/gemm.cu mirrors this file.
//
// oneDNN was chosen by measurement (2 threads, AMD EPYC Zen 4): bf16 about 800-930 GFLOP/s, the same
// as torch.matmul (which calls the same library for bf16), f32 about 360-470 GFLOP/s against 240 for
// OpenBLAS sgemm (Debian's OpenBLAS has no bf16 GEMM).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "../common/codes.h"
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "cpu.h"
#include "dequant4.h"

// oneDNN 3 changed the matmul API (no matmul::desc, runtime scales): this file is written for 2.x,
// Debian 12's libdnnl-dev (2.6.3).
#if DNNL_VERSION_MAJOR != 2
#error "qlora: cpu/gemm.cpp needs oneDNN 2.x (Debian 12: apt-get install libdnnl-dev)"
#endif

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace qlora {
namespace {

// ---- oneDNN: one engine and stream, primitives cached by everything they were created for ------

struct GemmKey {
  uint64_t m, n, k, lda, ldb, ldc;
  int32_t trans_a, trans_b, ab_dtype, c_dtype;
  uint32_t alpha_bits, beta_bits;
  bool operator<(const GemmKey& o) const {
    return std::tie(m, n, k, lda, ldb, ldc, trans_a, trans_b, ab_dtype, c_dtype, alpha_bits, beta_bits) <
           std::tie(o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.trans_a, o.trans_b, o.ab_dtype, o.c_dtype,
                    o.alpha_bits, o.beta_bits);
  }
};

struct Gemm {
  dnnl::memory::desc a, b, c, scratchpad;
  dnnl::matmul primitive;
};

struct Dnnl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;  // guards the cache
  std::map<GemmKey, std::shared_ptr<Gemm>> cache;
};

constexpr size_t kMaxCachedGemms = 1024;  // past this the cache starts over (shapes of one model are few)

Dnnl& dnnl_state() {
  static Dnnl* state = [] {
    // Before oneDNN's first primitive, or it has no effect.
    if (avx2_only()) dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2);
    return new Dnnl();  // never destroyed: the library is never unloaded (-z nodelete)
  }();
  return *state;
}

dnnl::memory::data_type dnnl_dtype(int32_t dtype) {
  return dtype == QLORA_BF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

// A 2-D product on strided row-major operands: C = alpha * op(A) @ op(B) + beta * C, where op(A) is
// m x k (stored with leading dimension lda, transposed when trans_a) and so on. nullptr when oneDNN
// has no implementation for it (e.g. bf16 on a CPU without AVX-512).
std::shared_ptr<Gemm> get_gemm(const GemmKey& key) {
  Dnnl& d = dnnl_state();
  {
    std::lock_guard<std::mutex> lock(d.mutex);
    auto it = d.cache.find(key);
    if (it != d.cache.end()) return it->second;
  }
  using dims = dnnl::memory::dims;
  const int64_t m = (int64_t)key.m, n = (int64_t)key.n, k = (int64_t)key.k;
  auto g = std::make_shared<Gemm>();
  g->a = dnnl::memory::desc(dims{m, k}, dnnl_dtype(key.ab_dtype),
                            key.trans_a ? dims{1, (int64_t)key.lda} : dims{(int64_t)key.lda, 1});
  g->b = dnnl::memory::desc(dims{k, n}, dnnl_dtype(key.ab_dtype),
                            key.trans_b ? dims{1, (int64_t)key.ldb} : dims{(int64_t)key.ldb, 1});
  g->c = dnnl::memory::desc(dims{m, n}, dnnl_dtype(key.c_dtype), dims{(int64_t)key.ldc, 1});
  float alpha, beta;
  memcpy(&alpha, &key.alpha_bits, 4);
  memcpy(&beta, &key.beta_bits, 4);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-thread scratchpads: see run_gemm
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  try {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(g->a, g->b, g->c), attr, d.engine);
    g->primitive = dnnl::matmul(pd);
    g->scratchpad = pd.scratchpad_desc();
  } catch (const dnnl::error& e) {
    if (e.status != dnnl_unimplemented) throw;
    g = nullptr;  // remembered, so that the next call goes straight to the loop
  }
  std::lock_guard<std::mutex> lock(d.mutex);
  if (d.cache.size() >= kMaxCachedGemms) d.cache.clear();
  d.cache[key] = g;
  return g;
}

// A primitive may run on several threads at once, but a stream and oneDNN's scratchpad may not be
// shared: each thread has its own stream, and each execution its own scratchpad, allocated through the
// ledger (category workspace) and freed when the product is done. Called inside an OpenMP parallel
// region, oneDNN runs the product on the calling thread alone. Throws WorkspaceError when the budget
// has no room for the scratchpad.
//
// A call that writes C in several products (a batch, the 4-bit product's tiles) reserves the largest
// scratchpad first (ReservedPad): a refusal then comes before the first write, so the call can run again
// once memory is freed (qlora.h), and its products share the reserved bytes.
thread_local void* t_pad = nullptr;
thread_local uint64_t t_pad_bytes = 0;

void run_gemm(const Gemm& g, const void* a, const void* b, void* c, void* given_pad = nullptr) {
  Dnnl& d = dnnl_state();
  thread_local dnnl::stream stream(d.engine);
  const uint64_t need = g.scratchpad.get_size();
  Workspace own;
  void* pad = given_pad ? given_pad : t_pad;
  if (!given_pad && need > t_pad_bytes) {  // nothing reserved on this thread (attention's products), or too little
    const qlora_status s = own.alloc(need, "multiply matrices");
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    pad = own.as<void>();
  }
  dnnl::memory am(g.a, d.engine, const_cast<void*>(a));
  dnnl::memory bm(g.b, d.engine, const_cast<void*>(b));
  dnnl::memory cm(g.c, d.engine, c);
  dnnl::memory sm(g.scratchpad, d.engine, pad);
  g.primitive.execute(stream,
                      {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}});
  stream.wait();
}

// ---- a plain loop for tiny products (and for what oneDNN refuses) -------------------------------

struct Operands {
  int32_t trans_a, trans_b;
  uint64_t m, n, k, lda, ldb, ldc;
  float alpha, beta;
  int32_t ab_dtype, c_dtype;
};

// Element (i, p) of op(A) and (p, j) of op(B).
inline float load_a(const Operands& o, const void* a, uint64_t i, uint64_t p) {
  return load_float(a, o.ab_dtype, o.trans_a ? p * o.lda + i : i * o.lda + p);
}
inline float load_b(const Operands& o, const void* b, uint64_t p, uint64_t j) {
  return load_float(b, o.ab_dtype, o.trans_b ? j * o.ldb + p : p * o.ldb + j);
}

// Each C(i, j) a sum in f32 in order of p (both loops give the same bits). A tiny product (kTinyGemm
// multiply-adds at most, many of them inside attention's threads) sums each element directly, with no
// buffer. A larger one, which oneDNN refuses and whose f32 copies would be too large (below), accumulates
// a row of C at a time in a buffer per thread (loop_bytes, through the ledger: the call's reservation or
// allocated here), reading B row by row.
uint64_t loop_bytes(const Operands& o) { return (uint64_t)omp_get_max_threads() * o.n * sizeof(float); }

void gemm_loop(const Operands& o, const void* a, const void* b, void* c, bool tiny) {
  const bool parallel = o.m * o.n * o.k >= (1ull << 20) && o.m > 1;
  if (tiny) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t ii = 0; ii < (int64_t)o.m; ii++) {
      const uint64_t i = (uint64_t)ii;
      for (uint64_t j = 0; j < o.n; j++) {
        float s = 0.0f;
        for (uint64_t p = 0; p < o.k; p++) s += load_a(o, a, i, p) * load_b(o, b, p, j);
        const uint64_t ci = i * o.ldc + j;
        float v = o.alpha * s;
        if (o.beta != 0.0f) v += o.beta * load_float(c, o.c_dtype, ci);
        store_float(c, o.c_dtype, ci, v);
      }
    }
    return;
  }
  Workspace own;
  float* rows = (float*)t_pad;
  if (loop_bytes(o) > t_pad_bytes) {
    const qlora_status s = own.alloc(loop_bytes(o), "multiply matrices");
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    rows = own.as<float>();
  }
#pragma omp parallel if (parallel)
  {
    float* row = rows + (uint64_t)omp_get_thread_num() * o.n;
#pragma omp for schedule(static)
    for (int64_t ii = 0; ii < (int64_t)o.m; ii++) {
      const uint64_t i = (uint64_t)ii;
      for (uint64_t j = 0; j < o.n; j++) row[j] = 0.0f;
      for (uint64_t p = 0; p < o.k; p++) {
        const float av = load_a(o, a, i, p);
        if (o.trans_b) {
          for (uint64_t j = 0; j < o.n; j++) row[j] += av * load_b(o, b, p, j);
        } else if (o.ab_dtype == QLORA_F32) {
          const float* bp = (const float*)b + p * o.ldb;
          for (uint64_t j = 0; j < o.n; j++) row[j] += av * bp[j];
        } else {
          const uint16_t* bp = (const uint16_t*)b + p * o.ldb;
          for (uint64_t j = 0; j < o.n; j++) row[j] += av * bf16_to_float(bp[j]);
        }
      }
      for (uint64_t j = 0; j < o.n; j++) {
        const uint64_t ci = i * o.ldc + j;
        float v = o.alpha * row[j];
        if (o.beta != 0.0f) v += o.beta * load_float(c, o.c_dtype, ci);
        store_float(c, o.c_dtype, ci, v);
      }
    }
  }
}

// Below this many multiply-adds a product runs as the loop above: oneDNN's call costs more.
constexpr uint64_t kTinyGemm = 1ull << 14;

// The oneDNN product of o, or null for a tiny or unsupported one (the loop computes those).
std::shared_ptr<Gemm> gemm_for(const Operands& o) {
  if (o.m * o.n * o.k <= kTinyGemm) return nullptr;
  GemmKey key{o.m, o.n, o.k, o.lda, o.ldb, o.ldc, o.trans_a, o.trans_b, o.ab_dtype, o.c_dtype,
              float_bits(o.alpha), float_bits(o.beta)};
  return get_gemm(key);
}

// ---- what oneDNN refuses: its f32 product on f32 copies ----------------------------------------
// oneDNN 2.6 has no f32 x f32 -> bf16 product, and no bf16 product at all below AVX-512 (most laptops).
// Such a product runs as oneDNN's f32 one: bf16 operands are copied to f32 (op(A) and op(B) packed, their
// transposes kept), a bf16 C is computed into an f32 temporary (alpha applied) and then rounded into C
// with beta. The copies' bytes come from the call's reservation (ReservedPad) or are allocated here,
// through the ledger either way; the plain loop would be 10-25x slower at 512^3. The copies of one route
// stay within kF32RouteMaxBytes (a copy of a whole weight, an LM head: 0.5 GB as f32, is a transient no
// one budgets for): a larger product runs in tiles of columns (f32_tile_columns below), and only one whose
// copy of op(A) alone is too large stays in the loop.
constexpr uint64_t kF32RouteMaxBytes = 16ull << 20;
constexpr uint64_t align64(uint64_t x) { return (x + 63) / 64 * 64; }

struct F32Route {
  std::shared_ptr<Gemm> g;  // null: no route (tiny, already f32, or refused too)
  uint64_t pad = 0, a = 0, b = 0, c = 0;  // bytes of each part, 64-byte aligned
  uint64_t bytes() const { return pad + a + b + c; }
};

F32Route f32_route(const Operands& o) {
  F32Route r;
  if (o.m * o.n * o.k <= kTinyGemm || (o.ab_dtype == QLORA_F32 && o.c_dtype == QLORA_F32)) return r;
  Operands t = o;
  if (o.ab_dtype != QLORA_F32) {
    t.ab_dtype = QLORA_F32;
    t.lda = o.trans_a ? o.m : o.k;
    t.ldb = o.trans_b ? o.k : o.n;
    r.a = align64(o.m * o.k * sizeof(float));
    r.b = align64(o.k * o.n * sizeof(float));
  }
  if (o.c_dtype != QLORA_F32) {
    t.c_dtype = QLORA_F32;
    t.ldc = o.n;
    t.beta = 0.0f;
    r.c = align64(o.m * o.n * sizeof(float));
  }
  if (r.a + r.b + r.c > kF32RouteMaxBytes) return F32Route{};
  r.g = gemm_for(t);
  if (r.g) r.pad = align64(r.g->scratchpad.get_size());
  return r;
}

// rows x cols values of src (leading dimension ld, dtype) into dst as packed f32.
void to_f32(const void* src, int32_t dtype, uint64_t rows, uint64_t cols, uint64_t ld, float* dst) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)rows; r++)
    for (uint64_t j = 0; j < cols; j++) dst[(uint64_t)r * cols + j] = load_float(src, dtype, (uint64_t)r * ld + j);
}

void run_f32_route(const Operands& o, const F32Route& r, const void* a, const void* b, void* c) {
  Workspace own;
  char* base = (char*)t_pad;
  if (r.bytes() > t_pad_bytes) {  // not reserved by the call (attention's products), or too little
    const qlora_status s = own.alloc(r.bytes(), "multiply matrices");
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    base = own.as<char>();
  }
  char* p = base + r.pad;
  const void* a32 = a;
  const void* b32 = b;
  if (r.a) {
    to_f32(a, o.ab_dtype, o.trans_a ? o.k : o.m, o.trans_a ? o.m : o.k, o.lda, (float*)p);
    to_f32(b, o.ab_dtype, o.trans_b ? o.n : o.k, o.trans_b ? o.k : o.n, o.ldb, (float*)(p + r.a));
    a32 = p;
    b32 = p + r.a;
  }
  float* c32 = r.c ? (float*)(p + r.a + r.b) : (float*)c;
  run_gemm(*r.g, a32, b32, c32, r.pad ? base : nullptr);
  if (!r.c) return;
#pragma omp parallel for schedule(static) if (o.m * o.n >= kParallelMin)
  for (int64_t ii = 0; ii < (int64_t)o.m; ii++) {
    const uint64_t i = (uint64_t)ii;
    for (uint64_t j = 0; j < o.n; j++) {
      float v = c32[i * o.n + j];
      if (o.beta != 0.0f) v += o.beta * load_float(c, o.c_dtype, i * o.ldc + j);
      store_float(c, o.c_dtype, i * o.ldc + j, v);
    }
  }
}

// A refused product too large for one f32 route (a 7B weight: 180 MB as f32) runs in tiles of columns of C
// (rows of W when B is transposed), each an f32 route of its own within kF32RouteMaxBytes: op(A) is copied
// again per tile (a small cost next to the tile's product), B and C tile by tile. Without it such products
// fell to the plain loop, minutes for one 7B training step's GEMM on an AVX2 CPU. Asked only of a product
// oneDNN refused and one route could not take; 0: no tiling (tiny, all f32, every column fits one tile, or
// op(A)'s copy alone is too large).
uint64_t f32_tile_columns(const Operands& o) {
  if (o.m * o.n * o.k <= kTinyGemm || (o.ab_dtype == QLORA_F32 && o.c_dtype == QLORA_F32)) return 0;
  const uint64_t a = o.ab_dtype != QLORA_F32 ? align64(o.m * o.k * sizeof(float)) : 0;
  const uint64_t per_column =
      (o.ab_dtype != QLORA_F32 ? o.k * sizeof(float) : 0) + (o.c_dtype != QLORA_F32 ? o.m * sizeof(float) : 0);
  if (a + 128 >= kF32RouteMaxBytes / 2) return 0;
  uint64_t columns = (kF32RouteMaxBytes - a - 128) / per_column;  // 128: the copies' alignment
  if (columns >= 16) columns = columns / 16 * 16;
  return columns < o.n ? columns : 0;
}

// Columns [j0, j0 + columns) of o's product: the same A, B and C from column j0 on (their strides kept).
Operands column_tile(const Operands& o, uint64_t columns) {
  Operands t = o;
  t.n = columns;
  return t;
}

// A decode step's 16-bit product (a few rows against W n x k, large enough to matter): a kernel of our own,
// closer to the read bandwidth than oneDNN's (gemv16.cpp).
bool gemv16_route(const Operands& o) {
  return o.n * o.k >= kParallelMin && gemv16_applies(o.trans_a, o.trans_b, o.m, o.k, o.lda, o.ldb, o.ab_dtype);
}

// One 2-D product on strided operands: the decode-step kernel, oneDNN, its f32 product on f32 copies (whole
// or in tiles of columns), or the loop for tiny ones.
void gemm_2d(const Operands& o, const void* a, const void* b, void* c) {
  if (gemv16_route(o)) {
    gemv16(o.m, o.n, o.k, o.alpha, a, b, o.beta, c, o.c_dtype, o.ldc);
    return;
  }
  if (std::shared_ptr<Gemm> g = gemm_for(o)) {
    run_gemm(*g, a, b, c);
    return;
  }
  if (const F32Route r = f32_route(o); r.g) {
    run_f32_route(o, r, a, b, c);
    return;
  }
  if (const uint64_t columns = f32_tile_columns(o)) {
    const uint64_t ab_size = dtype_size(o.ab_dtype), c_size = dtype_size(o.c_dtype);
    for (uint64_t j0 = 0; j0 < o.n; j0 += columns) {
      const Operands t = column_tile(o, std::min(columns, o.n - j0));
      const void* bt = (const char*)b + (o.trans_b ? j0 * o.ldb : j0) * ab_size;
      void* ct = (char*)c + j0 * c_size;
      if (const F32Route r = f32_route(t); r.g) run_f32_route(t, r, a, bt, ct);
      else gemm_loop(t, a, bt, ct, false);
    }
    return;
  }
  gemm_loop(o, a, b, c, o.m * o.n * o.k <= kTinyGemm);
}

// The scratchpad of every product of one call, reserved through the ledger before the call's first
// write and handed to run_gemm on this thread (t_pad) until it goes out of scope.
class ReservedPad {
 public:
  ReservedPad() = default;
  ~ReservedPad() {
    t_pad = nullptr;
    t_pad_bytes = 0;
  }
  ReservedPad(const ReservedPad&) = delete;
  ReservedPad& operator=(const ReservedPad&) = delete;
  // Reserves the largest scratchpad of the products of `ops` (with the f32 copies of a refused one).
  qlora_status reserve(const std::vector<Operands>& ops, const char* fn) {
    uint64_t bytes = 0;
    for (const Operands& o : ops) {
      if (gemv16_route(o)) continue;  // no scratch
      if (std::shared_ptr<Gemm> g = gemm_for(o)) {
        bytes = std::max<uint64_t>(bytes, g->scratchpad.get_size());
      } else if (o.m * o.n * o.k > kTinyGemm) {  // what oneDNN refuses: an f32 route (whole or a tile's), or the loop
        F32Route r = f32_route(o);
        Operands t = o;
        if (!r.g) {
          if (const uint64_t columns = f32_tile_columns(o)) r = f32_route(t = column_tile(o, columns));
        }
        bytes = std::max<uint64_t>(bytes, r.g ? r.bytes() : loop_bytes(t));
      }
    }
    const qlora_status s = ws_.alloc(bytes, fn);
    if (s != QLORA_OK) return s;
    t_pad = ws_.as<void>();
    t_pad_bytes = bytes;
    return QLORA_OK;
  }

 private:
  Workspace ws_;
};

// ---- tiles and workspace ----------------------------------------------------------------------

// Values per tile, sized for the last-level cache so the tile is still cached when the GEMM reads
// it (measured at M = 512 on LLaMA shapes): trans_w = 1 tiles are rows of W, 4M values (16 MiB as
// f32, the dtype the workspace is sized for; 8 MiB as bf16: oneDNN packs each tile's weights again, and
// at 1M values, 7B's up_proj in 43 tiles, that cost 0.87x bf16's speed at M = 512 against 0.95x in 11);
// trans_w = 0 tiles are k x cols blocks of columns, 4M values, since narrower column blocks slow the GEMM
// down more than the cache helps.
constexpr uint64_t kRowTileValues = 1ull << 22;
constexpr uint64_t kColumnTileValues = 1ull << 22;
constexpr uint64_t kTileAlign = 16;  // tile widths are multiples of this when W allows

// Width of a tile in rows of W (trans_w = 1: rows of length k) or in columns of W (trans_w = 0:
// columns of length k). W's other dimension is n in both cases.
uint64_t tile_width(int32_t trans_w, uint64_t n, uint64_t k) {
  uint64_t width = std::max<uint64_t>((trans_w ? kRowTileValues : kColumnTileValues) / k, 1);
  if (width >= kTileAlign) width = width / kTileAlign * kTileAlign;
  return std::min(width, n);
}

// The workspace: none for at most kGemvMaxRows rows, which the fused products compute in registers; the
// panel GEMMs' scratch for the rows they take (an input gradient's, a forward product's up to
// kGemm4MaxRows); else one tile as f32 (X's dtype is not known when it is sized; a bf16 tile uses half).
// Where the panels do not apply after all (f32 X, no AVX512_BF16, blocks across rows), the tiles come
// through the ledger for the call: the caller's workspace is only ever what the call touches.
uint64_t workspace_bytes_for(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k) {
  if (m <= kGemvMaxRows) return 0;
  if (!trans_w || m <= kGemm4MaxRows) return gemm4_bf16_scratch_bytes(trans_w, m, n, k);
  return tile_width(trans_w, n, k) * k * sizeof(float);
}

// Values of the stored W per task when a contiguous range is dequantized in parallel.
constexpr uint64_t kDequantChunk = 1ull << 15;

// Tile of trans_w = 1: rows [j0, j0 + rows) of W (n x k), contiguous, into ws (rows x k).
void dequantize_rows(const Quant4& w, uint64_t k, uint64_t j0, uint64_t rows, void* ws, int32_t dtype) {
  const uint64_t begin = j0 * k, count = rows * k, esize = dtype_size(dtype);
  const int64_t chunks = (int64_t)((count + kDequantChunk - 1) / kDequantChunk);
#pragma omp parallel for schedule(static) if (count >= kParallelMin)
  for (int64_t t = 0; t < chunks; t++) {
    const uint64_t off = (uint64_t)t * kDequantChunk;
    dequantize_range(w, begin + off, begin + std::min(count, off + kDequantChunk), (char*)ws + off * esize, dtype);
  }
}

// Tile of trans_w = 0: columns [j0, j0 + cols) of W (k x n), one range per row, into ws (k x cols).
void dequantize_columns(const Quant4& w, uint64_t n, uint64_t k, uint64_t j0, uint64_t cols, void* ws,
                        int32_t dtype) {
  const uint64_t esize = dtype_size(dtype);
#pragma omp parallel for schedule(static) if (k * cols >= kParallelMin)
  for (int64_t r = 0; r < (int64_t)k; r++) {
    const uint64_t begin = (uint64_t)r * n + j0;
    dequantize_range(w, begin, begin + cols, (char*)ws + (uint64_t)r * cols * esize, dtype);
  }
}

}  // namespace

qlora_status library_error(const char* fn) {
  try {
    throw;
  } catch (const WorkspaceError& e) {
    return fail(e.status, "%s", e.message.c_str());
  } catch (const dnnl::error& e) {
    return fail(QLORA_ERR_INTERNAL, "Cannot %s: oneDNN failed: %s (status %d)", fn, e.what(), (int)e.status);
  } catch (const std::bad_alloc&) {
    return fail(QLORA_ERR_OUT_OF_MEMORY, "Cannot %s: out of host memory", fn);
  } catch (const std::exception& e) {
    return fail(QLORA_ERR_INTERNAL, "Cannot %s: %s", fn, e.what());
  } catch (...) {
    return fail(QLORA_ERR_INTERNAL, "Cannot %s: unknown error", fn);
  }
}

void gemm_strided(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* a,
                  uint64_t lda, const void* b, uint64_t ldb, float beta, void* c, uint64_t ldc, int32_t ab_dtype,
                  int32_t c_dtype) {
  gemm_2d(Operands{trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta, ab_dtype, c_dtype}, a, b, c);
}

}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_gemm(int32_t trans_a, int32_t trans_b, uint64_t m, uint64_t n, uint64_t k,
                                  float alpha, const void* a, const void* b, int32_t ab_dtype, float beta,
                                  void* c, int32_t c_dtype, uint64_t batch, uint64_t stride_a,
                                  uint64_t stride_b, uint64_t stride_c) {
  qlora_status s = check_gemm(trans_a, trans_b, m, n, k, a, b, ab_dtype, c, c_dtype, batch);
  if (s != QLORA_OK) return s;
  // A batch of contiguous A (not transposed) and C against one B is one product with batch * m rows.
  if (batch > 1 && stride_b == 0 && trans_a == 0 && stride_a == m * k && stride_c == m * n &&
      batch * m < (1ull << 31)) {
    m *= batch;
    batch = 1;
  }
  const Operands o{trans_a, trans_b, m, n, k, trans_a ? m : k, trans_b ? k : n, n, alpha, beta, ab_dtype, c_dtype};
  const uint64_t ab_size = dtype_size(ab_dtype), c_size = dtype_size(c_dtype);
  try {
    ReservedPad pad;
    if ((s = pad.reserve({o}, "multiply matrices")) != QLORA_OK) return s;
    for (uint64_t i = 0; i < batch; i++)
      gemm_2d(o, (const char*)a + i * stride_a * ab_size, (const char*)b + i * stride_b * ab_size,
              (char*)c + i * stride_c * c_size);
  } catch (...) {
    return library_error("multiply matrices");
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_gemm_4bit_workspace(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k,
                                                 uint64_t* bytes_out) {
  const qlora_status s = check_gemm_4bit_workspace(trans_w, m, n, k, bytes_out);
  if (s != QLORA_OK) return s;
  *bytes_out = workspace_bytes_for(trans_w, m, n, k);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_gemm_4bit(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha,
                                       const void* x, int32_t x_dtype, const qlora_weight4* weight,
                                       const qlora_lora4* lora, float beta, void* c, int32_t c_dtype,
                                       void* workspace, uint64_t workspace_bytes) {
  qlora_status s = check_gemm_4bit(trans_w, m, n, k, x, x_dtype, weight, lora, c, c_dtype);
  if (s != QLORA_OK) return s;
  const char* fn = "multiply by a 4-bit matrix";
  s = check_gemm_4bit_workspace_arg(m, n, k, workspace, workspace_bytes, workspace_bytes_for(trans_w, m, n, k));
  if (s != QLORA_OK) return s;
  const Quant4 w(*weight);
  try {
    if (m <= kGemvMaxRows) {  // decoding: W streamed once, decoded in registers (gemv4.cpp)
      gemv4(w, trans_w, m, n, k, alpha, x, x_dtype, lora, beta, c, c_dtype);
      return QLORA_OK;
    }
    // bf16 rows: panels of W decoded into cache and multiplied there (gemm4.cpp), the bypass as two small
    // products around it.
    if (gemm4_bf16_applies(w, trans_w, m, n, k, x_dtype)) {
      Operands down{}, up{};
      ReservedPad pad;
      if (lora) {
        const uint64_t r = lora->rank;
        down = Operands{0, 1, m, r, k, k, k, r, 1.0f, 0.0f, x_dtype, lora->dtype};
        up = Operands{0, 1, m, n, r, r, r, n, lora->scaling, 1.0f, lora->dtype, c_dtype};
        if ((s = pad.reserve({down, up}, fn)) != QLORA_OK) return s;
        gemm_2d(down, x, lora->a, lora->h);
      }
      gemm4_bf16(w, trans_w, m, n, k, alpha, x, beta, c, c_dtype, workspace, workspace_bytes);
      if (lora) gemm_2d(up, lora->h, lora->b, c);
      return QLORA_OK;
    }
    // Tiles of W in X's dtype, each multiplied into its block of columns of C; the LoRA bypass's two
    // products after them.
    const uint64_t width = tile_width(trans_w, n, k), c_size = dtype_size(c_dtype);
    const auto tile = [&](uint64_t cols) {
      return Operands{0, trans_w, m, cols, k, k, trans_w ? k : cols, n, alpha, beta, x_dtype, c_dtype};
    };
    std::vector<Operands> products = {tile(std::min(width, n)), tile(n % width ? n % width : width)};
    Operands down{}, up{};
    if (lora) {
      const uint64_t r = lora->rank;
      down = Operands{0, 1, m, r, k, k, k, r, 1.0f, 0.0f, x_dtype, lora->dtype};              // h = X A^T
      up = Operands{0, 1, m, n, r, r, r, n, lora->scaling, 1.0f, lora->dtype, c_dtype};  // C += s h B^T
      products.push_back(down);
      products.push_back(up);
    }
    ReservedPad pad;  // the first and the last (narrower) tile's products, and the bypass's
    if ((s = pad.reserve(products, fn)) != QLORA_OK) return s;
    Workspace own;  // the tile, where the caller's workspace was sized for the panels
    void* ws = workspace;
    if (workspace_bytes < width * k * dtype_size(x_dtype)) {
      if ((s = own.alloc(width * k * dtype_size(x_dtype), fn)) != QLORA_OK) return s;
      ws = own.as<void>();
    }
    if (lora) gemm_2d(down, x, lora->a, lora->h);
    for (uint64_t j0 = 0; j0 < n; j0 += width) {
      const uint64_t cols = std::min(width, n - j0);
      const Operands o = tile(cols);
      if (trans_w) dequantize_rows(w, k, j0, cols, ws, x_dtype);
      else dequantize_columns(w, n, k, j0, cols, ws, x_dtype);
      gemm_2d(o, x, ws, (char*)c + j0 * c_size);
    }
    if (lora) gemm_2d(up, lora->h, lora->b, c);
  } catch (...) {
    return library_error(fn);
  }
  return QLORA_OK;
}

}  // extern "C"
