// cpu/gemm4.cpp: the fused 4-bit GEMMs of a prompt's or a training step's bf16 rows, where the multiply is
// the cost: C = X W^T (the forward pass, W stored n x k) for up to kGemm4MaxRows rows, and C = X W (an
// input gradient, dX = dY W, W stored k x n) for any number. W is read as 4-bit codes once per call,
// decoded panel by panel into the thread's cache, and never written out whole.
//
// Both run one micro-kernel, vdpbf16ps in the outer-product form: its 32-bit lanes hold a pair of values
// along the sum (positions p and p + 1), so one operand is a pair broadcast to every lane and the other V
// vectors of 16 pairs. Per pair: V loads and MR broadcasts for MR * V products into MR * V f32
// accumulators (6 x 4 = 24 of the 32 registers), and no horizontal sums.
//
//   C = X W^T: the vector operand is X, arranged once per call so that each pair of k values holds the
//     pairs of 64 rows of X side by side (4 vectors); the broadcast is a pair of a row of W, from a panel of
//     kRowsT rows of W over kDepthT values of k, decoded with the pairs of each row adjacent. Threads own
//     chunks of rows of W; a chunk's f32 tile (kRowsT x m) adds up over its panels, then is stored
//     transposed into C.
//   C = X W: W's blocks run along n, the output's dimension, and the sum runs down W's rows, so the vector
//     operand is a panel of kChunk columns of W over kDepth of its rows, decoded with rows p and p + 1 of
//     a column in one lane; the broadcast is the pair x[r][p], x[r][p + 1], adjacent in X as stored.
//     Threads own chunks of columns; a chunk's f32 tile (m x kChunk) adds up over its panels.
//
// A block's 16 codes are scaled and rounded to bf16 once (bf16_table, the values dequantize_range gives),
// then looked up by vpermw, 32 values each; the high nibbles of 32 bytes are the block's even values, the
// low nibbles its odd ones, and vpunpck{l,h}wd interleaves them (C = X W^T: the two of a pair; C = X W: the
// same column of two rows). The interleave permutes positions within each 64 values; X is arranged in the
// same order (pair_of), or the store puts columns back (column_of).
//
// The values multiplied are those dequantize-then-multiply uses, summed in f32 in a fixed order (per output,
// pair after pair, panel after panel): the same bits on every run and thread count, equal to the dequantized
// product up to the order of summation. Measured against the bf16 LoRA layer through oneDNN (Zen 5, 2
// threads, 7B's up_proj and down_proj, rank 8, the NF4 base double-quantized): forward 1.0-1.06x at 512
// rows, backward 1.0-1.1x at 512 and 1.15-1.6x at 64.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "../common/half.h"
#include "../common/status.h"
#include "cpu.h"
#include "decode4.h"
#include "dequant4.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qlora {
namespace {

constexpr int kMr = 6;  // broadcast rows per micro-kernel call

// C = X W^T. The panel's depth was measured: 256, 512, 1024, 2048 and 4096 values ran at 0.80, 0.89, 0.92,
// 0.97 and 1.0x the speed of 4096 at 512 rows (longer runs of the micro-kernel per tile load, and longer
// streams for the prefetchers); 4096 x 96 rows is 768 KiB of bf16, in L2.
constexpr uint64_t kRowsT = 96;     // rows of W per chunk (a multiple of kMr)
constexpr uint64_t kDepthT = 4096;  // values of k per panel (a multiple of 64)

// C = X W.
constexpr uint64_t kChunk = 128;  // columns of W per panel: one 64-byte line of codes per row of W
constexpr uint64_t kDepth = 256;  // rows of W per panel (even): 64 KiB of bf16

// Lines to bring into L1 a few at a time, between the micro-kernel's calls: the next panel's codes arrive
// while this one is multiplied, and its decode finds them in cache. (Asked for all at once after a decode,
// they came too late: the decode waited on memory for 68% of its time.)
struct Prefetch {
  const char* at = nullptr;
  uint64_t lines = 0;    // left to ask for
  uint64_t stride = 64;  // bytes from one line to the next
  uint64_t step = 0;     // lines per call
  void next() {
    for (uint64_t i = 0; i < step && lines > 0; i++, lines--, at += stride) _mm_prefetch(at, _MM_HINT_T0);
  }
  void spread_over(uint64_t calls) { step = (lines + calls - 1) / calls; }
};

// Word q of a row's 32 words per 64 values, after vpunpck{l,h}wd of its even and odd values, holds the pair
// (2 * pair_of(q), 2 * pair_of(q) + 1).
constexpr int pair_of(int q) { return 8 * ((q % 16) / 4) + 4 * (q / 16) + q % 4; }

// In C = X W's panels, lane l of vector v (per 64 columns) holds column column_of(v, l).
constexpr int column_of(int v, int l) { return 2 * pair_of(16 * (v & 1) + l) + (v >> 1); }

// The even and odd values of the 64 from `at` (an index into W, within one block), bf16 via the table.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void decode64(const Quant4& w, __m512 codes,
                                                                            uint64_t at, __m512i& even,
                                                                            __m512i& odd) {
  const __m512i table = bf16_table(codes, w.scale(at >> w.block_shift));
  const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(w.d.packed + at / 2)));
  even = lookup_high4(bytes, table);
  odd = lookup_low4(bytes, table);
}

// tile (MR rows, ldt floats apart; V * 16 columns) += the broadcast rows' pairs (ldb words apart) times the
// vector operand's (V vectors per pair, ldv words from one pair's to the next), over `pairs` pairs.
template <int MR, int V>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void outer_kernel(const uint32_t* bcast, uint64_t ldb,
                                                                          const uint32_t* vec, uint64_t ldv,
                                                                          uint64_t pairs, float* tile,
                                                                          uint64_t ldt) {
  __m512 acc[MR][V];
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) acc[r][v] = _mm512_loadu_ps(tile + r * ldt + 16 * v);
  for (uint64_t h = 0; h < pairs; h++) {
    __m512bh b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) b[v] = (__m512bh)_mm512_loadu_si512((const void*)(vec + h * ldv + 16 * v));
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      int32_t word;
      memcpy(&word, bcast + r * ldb + h, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(word);
#pragma GCC unroll 4
      for (int v = 0; v < V; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], b[v], a);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) _mm512_storeu_ps(tile + r * ldt + 16 * v, acc[r][v]);
}

template <int MR>
void outer_v(int v, const uint32_t* bcast, uint64_t ldb, const uint32_t* vec, uint64_t ldv, uint64_t pairs,
             float* tile, uint64_t ldt) {
  switch (v) {
    case 1: outer_kernel<MR, 1>(bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 2: outer_kernel<MR, 2>(bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 3: outer_kernel<MR, 3>(bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    default: outer_kernel<MR, 4>(bcast, ldb, vec, ldv, pairs, tile, ldt); break;
  }
}

// The micro-kernel for mr (1..kMr) broadcast rows and v (1..4) vectors.
void outer(int mr, int v, const uint32_t* bcast, uint64_t ldb, const uint32_t* vec, uint64_t ldv, uint64_t pairs,
           float* tile, uint64_t ldt) {
  switch (mr) {
    case 1: outer_v<1>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 2: outer_v<2>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 3: outer_v<3>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 4: outer_v<4>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    case 5: outer_v<5>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
    default: outer_v<6>(v, bcast, ldb, vec, ldv, pairs, tile, ldt); break;
  }
}

// C = alpha * v + beta * C at one place, rounded once to C's dtype.
inline void store_one(void* c, int32_t c_dtype, uint64_t at, float v, float alpha, float beta) {
  v *= alpha;
  if (c_dtype == QLORA_BF16) {
    uint16_t* p = (uint16_t*)c + at;
    if (beta != 0.0f) v += beta * bf16_to_float(*p);
    *p = float_to_bf16(v);
  } else {
    float* p = (float*)c + at;
    if (beta != 0.0f) v += beta * *p;
    *p = v;
  }
}

// ---- C = X W^T ---------------------------------------------------------------------------------------------

// Rows [j0, j0 + rows) of W (n x k) over values [p0, p0 + depth) into panel: row j's pairs at j * depth / 2.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void decode_row_pairs(const Quant4& w, uint64_t k,
                                                                             uint64_t j0, uint64_t rows,
                                                                             uint64_t p0, uint64_t depth,
                                                                             uint32_t* panel) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  for (uint64_t j = 0; j < rows; j++)
    for (uint64_t g = 0; g < depth; g += 64) {
      __m512i even, odd;
      decode64(w, codes, (j0 + j) * k + p0 + g, even, odd);
      uint32_t* out = panel + j * (depth / 2) + g / 2;
      _mm512_storeu_si512((void*)out, _mm512_unpacklo_epi16(even, odd));
      _mm512_storeu_si512((void*)(out + 16), _mm512_unpackhi_epi16(even, odd));
    }
}

// X (m x k) into xa by blocks of 64 rows, each block's pairs contiguous (the micro-kernel streams them):
// word (b * k / 2 + c / 64 * 32 + q) * 64 + i is row 64 b + i's pair pair_of(q) of the 64 values from c;
// rows past m zero.
void arrange_columns(const uint16_t* x, uint64_t m, uint64_t k, uint32_t* xa) {
  const uint64_t groups = k / 64;
  const int64_t tasks = (int64_t)((m + 63) / 64 * groups);
#pragma omp parallel for schedule(static) if (m * k >= kParallelMin)
  for (int64_t t = 0; t < tasks; t++) {
    const uint64_t b = (uint64_t)t / groups, g = (uint64_t)t % groups;
    for (int q = 0; q < 32; q++) {
      uint32_t* out = xa + (b * (k / 2) + g * 32 + q) * 64;
      const uint64_t c = g * 64 + 2 * pair_of(q);
      for (uint64_t i = 0; i < 64; i++) {
        const uint64_t r = 64 * b + i;
        out[i] = r < m ? (uint32_t)x[r * k + c] | (uint32_t)x[r * k + c + 1] << 16 : 0;
      }
    }
  }
}

// ---- C = X W -----------------------------------------------------------------------------------------------

// Rows [p0, p0 + depth) (depth even) of W (k x n), columns [c0, c0 + cols) (a multiple of 64, one block per
// row each 64) into panel: per 64 columns, per pair of rows, 4 vectors (64 words).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void decode_column_pairs(const Quant4& w, uint64_t n,
                                                                                uint64_t p0, uint64_t depth,
                                                                                uint64_t c0, uint64_t cols,
                                                                                uint32_t* panel) {
  const __m512 codes = _mm512_loadu_ps(w.table);
  for (uint64_t h = 0; h < depth / 2; h++)
    for (uint64_t q = 0; q < cols / 64; q++) {
      __m512i even[2], odd[2];
      for (int i = 0; i < 2; i++) decode64(w, codes, (p0 + 2 * h + i) * n + c0 + 64 * q, even[i], odd[i]);
      uint32_t* out = panel + (q * (depth / 2) + h) * 64;
      _mm512_storeu_si512((void*)out, _mm512_unpacklo_epi16(even[0], even[1]));
      _mm512_storeu_si512((void*)(out + 16), _mm512_unpackhi_epi16(even[0], even[1]));
      _mm512_storeu_si512((void*)(out + 32), _mm512_unpacklo_epi16(odd[0], odd[1]));
      _mm512_storeu_si512((void*)(out + 48), _mm512_unpackhi_epi16(odd[0], odd[1]));
    }
}

}  // namespace

bool gemm4_bf16_applies(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, int32_t x_dtype) {
  if (x_dtype != QLORA_BF16 || !has_avx512_bf16() || w.d.blocksize < 64) return false;
  if (trans_w) return m <= kGemm4MaxRows && k % w.d.blocksize == 0;
  return n % w.d.blocksize == 0 && k % 2 == 0;
}

namespace {

// Per thread: C = X W^T's panel (rows x depth bf16) and tile (rows x mp f32); C = X W's panel (depth x
// width bf16) and tile (m x width f32). mp: m rounded up to 64.
struct Sizes {
  uint64_t mp, rows, depth, width, per_thread, shared;
  Sizes(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k) {
    mp = (m + 63) / 64 * 64;
    if (trans_w) {
      rows = std::min(kRowsT, n), depth = std::min(kDepthT, k), width = 0;
      per_thread = rows * depth * 2 + rows * mp * 4;
      shared = mp * k * 2;  // X arranged
    } else {
      rows = 0, depth = std::min(kDepth, k), width = std::min(kChunk, (n + 63) / 64 * 64);
      per_thread = depth * width * 2 + m * width * 4;
      shared = 0;
    }
  }
};

}  // namespace

uint64_t gemm4_bf16_scratch_bytes(int32_t trans_w, uint64_t m, uint64_t n, uint64_t k) {
  const Sizes z(trans_w, m, n, k);
  return z.shared + (uint64_t)omp_get_max_threads() * z.per_thread;
}

void gemm4_bf16(const Quant4& w, int32_t trans_w, uint64_t m, uint64_t n, uint64_t k, float alpha, const void* x,
                float beta, void* c, int32_t c_dtype, void* scratch, uint64_t scratch_bytes) {
  Workspace own;
  const Sizes z(trans_w, m, n, k);
  const uint64_t need = gemm4_bf16_scratch_bytes(trans_w, m, n, k);
  if (scratch_bytes < need) {
    const qlora_status s = own.alloc(need, "multiply by a 4-bit matrix");
    if (s != QLORA_OK) throw WorkspaceError(s, qlora_last_error());
    scratch = own.as<void>();
  }
  const int threads = omp_get_max_threads();
  if (trans_w) {
    const uint64_t mp = z.mp;
    uint32_t* const xa = (uint32_t*)scratch;
    arrange_columns((const uint16_t*)x, m, k, xa);
    const int64_t chunks = (int64_t)((n + kRowsT - 1) / kRowsT);
#pragma omp parallel num_threads(threads)
    {
      uint32_t* const panel = (uint32_t*)((char*)scratch + z.shared + (uint64_t)omp_get_thread_num() * z.per_thread);
      float* const tile = (float*)(panel + z.rows * z.depth / 2);  // rows x mp
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < chunks; ch++) {
        const uint64_t j0 = (uint64_t)ch * kRowsT, rows = std::min(kRowsT, n - j0);
        std::fill(tile, tile + rows * mp, 0.0f);
        for (uint64_t p0 = 0; p0 < k; p0 += kDepthT) {
          const uint64_t depth = std::min(kDepthT, k - p0), pairs = depth / 2;
          decode_row_pairs(w, k, j0, rows, p0, depth, panel);
          Prefetch pf;  // the next panel's codes: the first line of each of its rows (the rest streams)
          const bool last = p0 + depth >= k;
          const uint64_t pj = last ? j0 + kRowsT : j0, pp = last ? 0 : p0 + depth;
          if (pj < n) {
            pf.at = (const char*)(w.d.packed + (pj * k + pp) / 2);
            pf.lines = std::min(kRowsT, n - pj);
            pf.stride = k / 2;
          }
          pf.spread_over((rows + kMr - 1) / kMr * (mp / 64));
          for (uint64_t r0 = 0; r0 < mp; r0 += 64) {
            const uint32_t* xs = xa + (r0 / 64 * (k / 2) + p0 / 2) * 64;
            const int v = (int)std::min<uint64_t>(4, (m - r0 + 15) / 16);
            for (uint64_t j = 0; j < rows; j += kMr) {
              outer((int)std::min<uint64_t>(kMr, rows - j), v, panel + j * pairs, pairs, xs, 64, pairs,
                    tile + j * mp + r0, mp);
              pf.next();
            }
          }
        }
        for (uint64_t r = 0; r < m; r++)
          for (uint64_t j = 0; j < rows; j++) store_one(c, c_dtype, r * n + j0 + j, tile[j * mp + r], alpha, beta);
      }
    }
    return;
  }
  const uint32_t* const xw = (const uint32_t*)x;  // pairs of X's rows (k even)
  const uint64_t width = z.width;                  // columns per chunk (the tile's row length)
  const int64_t chunks = (int64_t)((n + width - 1) / width);
#pragma omp parallel num_threads(threads)
  {
    uint32_t* const panel = (uint32_t*)((char*)scratch + (uint64_t)omp_get_thread_num() * z.per_thread);
    float* const tile = (float*)(panel + z.depth * width / 2);  // m x width
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
      const uint64_t c0 = (uint64_t)ch * width, cols = std::min(width, n - c0);
      std::fill(tile, tile + m * width, 0.0f);
      for (uint64_t p0 = 0; p0 < k; p0 += kDepth) {
        const uint64_t depth = std::min(kDepth, k - p0), pairs = depth / 2;
        decode_column_pairs(w, n, p0, depth, c0, cols, panel);
        Prefetch pf;  // the next panel's codes: a line per row of W, the rows n / 2 bytes apart
        const bool last = p0 + depth >= k;
        const uint64_t pp = last ? 0 : p0 + depth, pc = last ? c0 + width : c0;
        if (pc < n) {
          pf.at = (const char*)(w.d.packed + (pp * n + pc) / 2);
          pf.lines = std::min(kDepth, k - pp);
          pf.stride = n / 2;
        }
        pf.spread_over((cols / 64) * ((m + kMr - 1) / kMr));
        for (uint64_t q = 0; q < cols / 64; q++)
          for (uint64_t r = 0; r < m; r += kMr) {
            outer((int)std::min<uint64_t>(kMr, m - r), 4, xw + (r * k + p0) / 2, k / 2, panel + q * pairs * 64, 64,
                  pairs, tile + r * width + 64 * q, width);
            pf.next();
          }
      }
      for (uint64_t r = 0; r < m; r++)
        for (uint64_t q = 0; q < cols / 64; q++)
          for (int v = 0; v < 4; v++)
            for (int l = 0; l < 16; l++)
              store_one(c, c_dtype, r * n + c0 + 64 * q + column_of(v, l), tile[r * width + 64 * q + 16 * v + l],
                        alpha, beta);
    }
  }
}

}  // namespace qlora
