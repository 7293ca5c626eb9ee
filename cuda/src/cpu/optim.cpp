// cpu/optim.cpp: the fused AdamW step over many segments and the fixed-order sum of squares (global
// norm for clipping), on the CPU. gpu/optim.cu mirrors this file: the same operations in the same
// order, each rounded on its own (this file is compiled with -ffp-contract=off), so that both backends
// agree bit for bit.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "../common/adamw.h"
#include "../common/codes.h"
#include "../common/half.h"
#include "../common/status.h"
#include "../common/validate.h"
#include "cpu.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); the warning is not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace qlora {
namespace {

// Elements [begin, end) of one segment, the header's formula step for step, one value at a time: the
// reference, the path of CPUs without AVX-512, and the tail of the AVX-512 loop. The dtype combination
// is a template argument, so that the loop has no branch on it.
template <bool kParamBf16, bool kGradBf16, bool kMaster>
void adamw_range(const qlora_adamw_segment& seg, uint64_t begin, uint64_t end, const AdamWConstants& c) {
  float* p32 = (float*)seg.param;
  uint16_t* p16 = (uint16_t*)seg.param;
  const float* g32 = (const float*)seg.grad;
  const uint16_t* g16 = (const uint16_t*)seg.grad;
  float* m = seg.m;
  float* v = seg.v;
  float* master = seg.master;
  for (uint64_t i = begin; i < end; i++) {
    float grad = kGradBf16 ? bf16_to_float(g16[i]) : g32[i];
    float g = grad * c.grad_scale;
    float w = kMaster ? master[i] : kParamBf16 ? bf16_to_float(p16[i]) : p32[i];
    w = w * c.decay;
    float mi = c.beta1 * m[i] + c.one_minus_beta1 * g;
    float vi = c.beta2 * v[i] + c.one_minus_beta2 * g * g;
    float denom = std::sqrt(vi) / c.sqrt_bc2 + c.eps;
    w = w - c.step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
    if (kMaster) master[i] = w;
    if (kParamBf16) p16[i] = float_to_bf16(w);
    else p32[i] = w;
  }
}

// The same loop, 16 values per iteration with AVX-512 (IEEE operations, each rounded on its own, so
// the bits equal the scalar loop's); the last (end - begin) mod 16 values go through the scalar loop.
// Written with intrinsics because GCC vectorizes sqrtf only under -fno-math-errno.
__attribute__((target("avx512f"))) inline __m512 load16_bf16(const uint16_t* p) {
  __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

// half.h's float_to_bf16 on 16 lanes: round to nearest even, NaN kept quiet.
__attribute__((target("avx512f"))) inline void store16_bf16(uint16_t* p, __m512 w) {
  const __m512i u = _mm512_castps_si512(w);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  r = _mm512_srli_epi32(r, 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r));
}

template <bool kParamBf16, bool kGradBf16, bool kMaster>
__attribute__((target("avx512f"))) void adamw_range_avx512(const qlora_adamw_segment& seg, uint64_t begin,
                                                           uint64_t end, const AdamWConstants& c) {
  float* p32 = (float*)seg.param;
  uint16_t* p16 = (uint16_t*)seg.param;
  const float* g32 = (const float*)seg.grad;
  const uint16_t* g16 = (const uint16_t*)seg.grad;
  float* m = seg.m;
  float* v = seg.v;
  float* master = seg.master;
  const __m512 grad_scale = _mm512_set1_ps(c.grad_scale), decay = _mm512_set1_ps(c.decay);
  const __m512 beta1 = _mm512_set1_ps(c.beta1), omb1 = _mm512_set1_ps(c.one_minus_beta1);
  const __m512 beta2 = _mm512_set1_ps(c.beta2), omb2 = _mm512_set1_ps(c.one_minus_beta2);
  const __m512 step_size = _mm512_set1_ps(c.step_size), sqrt_bc2 = _mm512_set1_ps(c.sqrt_bc2);
  const __m512 eps = _mm512_set1_ps(c.eps);
  uint64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    __m512 grad = kGradBf16 ? load16_bf16(g16 + i) : _mm512_loadu_ps(g32 + i);
    __m512 g = _mm512_mul_ps(grad, grad_scale);
    __m512 w = kMaster ? _mm512_loadu_ps(master + i) : kParamBf16 ? load16_bf16(p16 + i) : _mm512_loadu_ps(p32 + i);
    w = _mm512_mul_ps(w, decay);
    __m512 mi = _mm512_add_ps(_mm512_mul_ps(beta1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(omb1, g));
    __m512 vi = _mm512_add_ps(_mm512_mul_ps(beta2, _mm512_loadu_ps(v + i)), _mm512_mul_ps(_mm512_mul_ps(omb2, g), g));
    __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), sqrt_bc2), eps);
    w = _mm512_sub_ps(w, _mm512_div_ps(_mm512_mul_ps(step_size, mi), denom));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
    if (kMaster) _mm512_storeu_ps(master + i, w);
    if (kParamBf16) store16_bf16(p16 + i, w);
    else _mm512_storeu_ps(p32 + i, w);
  }
  adamw_range<kParamBf16, kGradBf16, kMaster>(seg, i, end, c);
}

// One piece of work for a thread: elements [begin, end) of segment seg.
struct Chunk {
  const qlora_adamw_segment* seg;
  uint64_t begin, end;
};

// Where each segment's pieces start in one numbering of all pieces (count + 1 entries, in ledger
// workspace): piece `k` belongs to the segment whose range holds it (a binary search), so every piece of
// every segment runs in one parallel loop without a list of them.
template <typename Segment>
qlora_status piece_starts(const Segment* segments, uint64_t count, uint64_t piece, Workspace& ws, const char* fn,
                          uint64_t* total_values) {
  const qlora_status s = ws.alloc((count + 1) * sizeof(uint64_t), fn);
  if (s != QLORA_OK) return s;
  uint64_t* starts = ws.as<uint64_t>();
  starts[0] = 0;
  *total_values = 0;
  for (uint64_t k = 0; k < count; k++) {
    starts[k + 1] = starts[k] + (segments[k].n + piece - 1) / piece;
    *total_values += segments[k].n;
  }
  return QLORA_OK;
}

// The segment of piece k: the last s with starts[s] <= k.
inline uint64_t segment_of(const uint64_t* starts, uint64_t count, uint64_t k) {
  return (uint64_t)(std::upper_bound(starts, starts + count + 1, k) - starts) - 1;
}

// The loop of a chunk's dtype combination (6 of them: an f32 param has no master, see check_adamw).
template <bool kAvx512>
void adamw_chunk(const Chunk& ch, const AdamWConstants& c) {
  const qlora_adamw_segment& s = *ch.seg;
  const bool param_bf16 = s.param_dtype == QLORA_BF16, grad_bf16 = s.grad_dtype == QLORA_BF16;
#define QLORA_ADAMW_RANGE(P, G, M)                                     \
  return kAvx512 ? adamw_range_avx512<P, G, M>(s, ch.begin, ch.end, c) \
                 : adamw_range<P, G, M>(s, ch.begin, ch.end, c)
  if (!param_bf16) {
    if (grad_bf16) QLORA_ADAMW_RANGE(false, true, false);
    QLORA_ADAMW_RANGE(false, false, false);
  }
  if (s.master) {
    if (grad_bf16) QLORA_ADAMW_RANGE(true, true, true);
    QLORA_ADAMW_RANGE(true, false, true);
  }
  if (grad_bf16) QLORA_ADAMW_RANGE(true, true, false);
  QLORA_ADAMW_RANGE(true, false, false);
#undef QLORA_ADAMW_RANGE
}

// Elements per chunk: 64 Ki values (about 2 MiB of traffic), many chunks per thread for balance.
constexpr uint64_t kAdamWChunk = 1ull << 16;

// ---- 8-bit AdamW -----------------------------------------------------------------------------------

// The code of x in a dynamic map without a binary search: floats are cut into 65536 buckets by the top
// 16 bits of an order-preserving key of their bits; first[b] is the code of the smallest float of bucket
// b, and the code of x is first[b] plus the midpoints of the bucket below x (almost always none or one).
// Exactly codes.h's dynamic_code (the number of midpoints below x), a few operations instead of eight
// dependent comparisons.
struct CodeLookup {
  const DynamicMap* map;
  uint8_t first[65536];
  static uint32_t key(float x) {
    const uint32_t u = float_bits(x);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;  // increasing with x
  }
  explicit CodeLookup(const DynamicMap& m) : map(&m) {
    for (uint32_t b = 0; b < 65536; b++) {
      const uint32_t k = b << 16;  // the smallest key of bucket b, back to a float
      const float lowest = bits_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
      first[b] = lowest == lowest ? dynamic_code(m, lowest) : 0;  // NaN buckets: unused
    }
  }
  uint8_t code(float x) const {
    uint32_t c = first[key(x) >> 16];
    while (c < 255 && map->midpoint[c] < x) c++;
    return (uint8_t)c;
  }
};

const CodeLookup& signed_lookup() {
  static const CodeLookup* t = new CodeLookup(dynamic_map());
  return *t;
}
const CodeLookup& unsigned_lookup() {
  static const CodeLookup* t = new CodeLookup(dynamic_map_unsigned());
  return *t;
}

// The decode-and-update half of a block for values [begin, begin + 16k), 16 at a time: the operations of
// the scalar loop below, each rounded on its own, so the bits are the same. m_new and v_new get the new
// states (indexed from block_begin), m_max and v_max their largest |m| and v so far. Returns where the
// scalar loop takes over.
__attribute__((target("avx512f"))) uint64_t adamw8_update_avx512(const qlora_adamw8_segment& seg, uint64_t begin,
                                                                  uint64_t end, uint64_t block_begin,
                                                                  const AdamWConstants& c, const float* scode,
                                                                  const float* ucode, float m_scale, float v_scale,
                                                                  float* m_new, float* v_new, float& m_max,
                                                                  float& v_max) {
  const __m512 grad_scale = _mm512_set1_ps(c.grad_scale), decay = _mm512_set1_ps(c.decay);
  const __m512 beta1 = _mm512_set1_ps(c.beta1), omb1 = _mm512_set1_ps(c.one_minus_beta1);
  const __m512 beta2 = _mm512_set1_ps(c.beta2), omb2 = _mm512_set1_ps(c.one_minus_beta2);
  const __m512 step_size = _mm512_set1_ps(c.step_size), sqrt_bc2 = _mm512_set1_ps(c.sqrt_bc2);
  const __m512 eps = _mm512_set1_ps(c.eps), ms = _mm512_set1_ps(m_scale), vs = _mm512_set1_ps(v_scale);
  const bool param_bf16 = seg.param_dtype == QLORA_BF16, grad_bf16 = seg.grad_dtype == QLORA_BF16;
  __m512 mmax = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
  uint64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512i mc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(seg.m_codes + i)));
    const __m512i vc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(seg.v_codes + i)));
    const __m512 m_old = _mm512_mul_ps(_mm512_i32gather_ps(mc, scode, 4), ms);
    const __m512 v_old = _mm512_mul_ps(_mm512_i32gather_ps(vc, ucode, 4), vs);
    const __m512 grad = grad_bf16 ? load16_bf16((const uint16_t*)seg.grad + i) : _mm512_loadu_ps((const float*)seg.grad + i);
    const __m512 g = _mm512_mul_ps(grad, grad_scale);
    __m512 w = seg.master ? _mm512_loadu_ps(seg.master + i)
               : param_bf16 ? load16_bf16((const uint16_t*)seg.param + i)
                            : _mm512_loadu_ps((const float*)seg.param + i);
    w = _mm512_mul_ps(w, decay);
    const __m512 mi = _mm512_add_ps(_mm512_mul_ps(beta1, m_old), _mm512_mul_ps(omb1, g));
    const __m512 vi = _mm512_add_ps(_mm512_mul_ps(beta2, v_old), _mm512_mul_ps(_mm512_mul_ps(omb2, g), g));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), sqrt_bc2), eps);
    w = _mm512_sub_ps(w, _mm512_div_ps(_mm512_mul_ps(step_size, mi), denom));
    if (seg.master) _mm512_storeu_ps(seg.master + i, w);
    if (param_bf16) store16_bf16((uint16_t*)seg.param + i, w);
    else _mm512_storeu_ps((float*)seg.param + i, w);
    _mm512_storeu_ps(m_new + (i - block_begin), mi);
    _mm512_storeu_ps(v_new + (i - block_begin), vi);
    mmax = _mm512_max_ps(mmax, _mm512_abs_ps(mi));
    vmax = _mm512_max_ps(vmax, vi);
  }
  m_max = std::max(m_max, _mm512_reduce_max_ps(mmax));
  v_max = std::max(v_max, _mm512_reduce_max_ps(vmax));
  return i;
}

// One block of up to QLORA_ADAMW8_BLOCK values: decode m and v, the f32 update of adamw_range (same
// operations, same order), then encode m and v with the block's new absmax.
void adamw8_block(const qlora_adamw8_segment& seg, uint64_t block, const AdamWConstants& c, const DynamicMap& smap,
                  const DynamicMap& umap, const CodeLookup& slook, const CodeLookup& ulook, bool avx512) {
  const uint64_t begin = block * QLORA_ADAMW8_BLOCK;
  const uint64_t end = std::min(seg.n, begin + QLORA_ADAMW8_BLOCK);
  const bool param_bf16 = seg.param_dtype == QLORA_BF16;
  float m_new[QLORA_ADAMW8_BLOCK], v_new[QLORA_ADAMW8_BLOCK];
  const float m_scale = seg.m_absmax[block], v_scale = seg.v_absmax[block];
  float m_max = 0.0f, v_max = 0.0f;
  uint64_t first = begin;
  if (avx512)
    first = adamw8_update_avx512(seg, begin, end, begin, c, smap.code, umap.code, m_scale, v_scale, m_new, v_new,
                                 m_max, v_max);
  for (uint64_t i = first; i < end; i++) {
    const float g = load_float(seg.grad, seg.grad_dtype, i) * c.grad_scale;
    float w = seg.master ? seg.master[i] : load_float(seg.param, seg.param_dtype, i);
    w = w * c.decay;
    const float mi = c.beta1 * (smap.code[seg.m_codes[i]] * m_scale) + c.one_minus_beta1 * g;
    const float vi = c.beta2 * (umap.code[seg.v_codes[i]] * v_scale) + c.one_minus_beta2 * g * g;
    const float denom = std::sqrt(vi) / c.sqrt_bc2 + c.eps;
    w = w - c.step_size * mi / denom;
    if (seg.master) seg.master[i] = w;
    if (param_bf16) ((uint16_t*)seg.param)[i] = float_to_bf16(w);
    else ((float*)seg.param)[i] = w;
    m_new[i - begin] = mi;
    v_new[i - begin] = vi;
    m_max = std::max(m_max, std::fabs(mi));
    v_max = std::max(v_max, vi);
  }
  const float m_inv = m_max > 0.0f ? 1.0f / m_max : 0.0f, v_inv = v_max > 0.0f ? 1.0f / v_max : 0.0f;
  for (uint64_t i = begin; i < end; i++) {
    seg.m_codes[i] = slook.code(m_new[i - begin] * m_inv);
    seg.v_codes[i] = ulook.code(v_new[i - begin] * v_inv);
  }
  seg.m_absmax[block] = m_max;
  seg.v_absmax[block] = v_max;
}

// Sum of x[begin, end)^2 in double, value by value (the fixed order of codes.h). Squares of floats
// are exact in double, so only the additions round.
template <int32_t kDtype>
double chunk_sum_squares(const void* x, uint64_t begin, uint64_t end) {
  double s = 0.0;
  for (uint64_t i = begin; i < end; i++) {
    double v = (double)load_float(x, kDtype, i);
    s += v * v;
  }
  return s;
}

// The same sums for kInterleave whole chunks side by side: each chunk still adds its values one by
// one in order (the same bits), but the independent chains hide the latency of the additions.
constexpr uint64_t kInterleave = 8;
template <int32_t kDtype>
void interleaved_sum_squares(const void* x, uint64_t first_chunk, double* partial) {
  double s[kInterleave] = {};
  const uint64_t base = first_chunk * kMeanChunk;
  for (uint64_t i = 0; i < kMeanChunk; i++) {
    for (uint64_t k = 0; k < kInterleave; k++) {
      double v = (double)load_float(x, kDtype, base + k * kMeanChunk + i);
      s[k] += v * v;
    }
  }
  for (uint64_t k = 0; k < kInterleave; k++) partial[first_chunk + k] = s[k];
}

template <int32_t kDtype>
void sum_squares_chunks(const void* x, uint64_t n, double* partial) {
  const uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  const uint64_t groups = (n / kMeanChunk) / kInterleave;  // groups of whole chunks
  const uint64_t rest = chunks - groups * kInterleave;      // chunks summed one at a time
  const int64_t tasks = (int64_t)(groups + rest);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t t = 0; t < tasks; t++) {
    if ((uint64_t)t < groups) {
      interleaved_sum_squares<kDtype>(x, (uint64_t)t * kInterleave, partial);
    } else {
      uint64_t c = groups * kInterleave + ((uint64_t)t - groups);
      uint64_t begin = c * kMeanChunk, end = std::min(n, begin + kMeanChunk);
      partial[c] = chunk_sum_squares<kDtype>(x, begin, end);
    }
  }
}

}  // namespace
}  // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_status qlora_adamw_step(const qlora_adamw_segment* segments, uint64_t count, float lr, float beta1,
                                        float beta2, float eps, float weight_decay, float bias_correction1,
                                        float bias_correction2, float grad_scale) {
  qlora_status s = check_adamw(segments, count, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                               bias_correction2, grad_scale);
  if (s != QLORA_OK) return s;
  const AdamWConstants c =
      adamw_constants(lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  // Every segment cut into chunks: one parallel loop over all of them (one fused step, not a call per tensor).
  Workspace ws;
  uint64_t total = 0;
  if ((s = piece_starts(segments, count, kAdamWChunk, ws, "take an AdamW step", &total)) != QLORA_OK) return s;
  const uint64_t* starts = ws.as<uint64_t>();
  const int64_t num = (int64_t)starts[count];
  const bool avx512 = has_avx512();
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
  for (int64_t k = 0; k < num; k++) {
    const uint64_t seg = segment_of(starts, count, (uint64_t)k);
    const uint64_t begin = ((uint64_t)k - starts[seg]) * kAdamWChunk;
    const Chunk chunk{&segments[seg], begin, std::min(segments[seg].n, begin + kAdamWChunk)};
    if (avx512) adamw_chunk<true>(chunk, c);
    else adamw_chunk<false>(chunk, c);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_adamw8_step(const qlora_adamw8_segment* segments, uint64_t count, float lr,
                                         float beta1, float beta2, float eps, float weight_decay,
                                         float bias_correction1, float bias_correction2, float grad_scale) {
  qlora_status s = check_adamw(segments, count, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                                bias_correction2, grad_scale);
  if (s != QLORA_OK) return s;
  const AdamWConstants c =
      adamw_constants(lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  Workspace ws;  // every block of every segment, numbered
  uint64_t total = 0;
  if ((s = piece_starts(segments, count, QLORA_ADAMW8_BLOCK, ws, "take an 8-bit AdamW step", &total)) != QLORA_OK)
    return s;
  const uint64_t* starts = ws.as<uint64_t>();
  const int64_t num = (int64_t)starts[count];
  const DynamicMap& smap = dynamic_map();
  const DynamicMap& umap = dynamic_map_unsigned();
  const CodeLookup& slook = signed_lookup();
  const CodeLookup& ulook = unsigned_lookup();
  const bool avx512 = has_avx512();
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
  for (int64_t k = 0; k < num; k++) {
    const uint64_t seg = segment_of(starts, count, (uint64_t)k);
    adamw8_block(segments[seg], (uint64_t)k - starts[seg], c, smap, umap, slook, ulook, avx512);
  }
  return QLORA_OK;
}

QLORA_API qlora_status qlora_sum_squares(const void* x, int32_t dtype, uint64_t n, double* out) {
  qlora_status s = check_sum_squares(x, dtype, out);
  if (s != QLORA_OK) return s;
  const uint64_t chunks = (n + kMeanChunk - 1) / kMeanChunk;
  Workspace ws;  // the chunks' sums, in ledger workspace
  if ((s = ws.alloc(chunks * sizeof(double), "sum squares")) != QLORA_OK) return s;
  double* partial = ws.as<double>();
  if (dtype == QLORA_F32) sum_squares_chunks<QLORA_F32>(x, n, partial);
  else if (dtype == QLORA_BF16) sum_squares_chunks<QLORA_BF16>(x, n, partial);
  else sum_squares_chunks<QLORA_F16>(x, n, partial);
  double total = 0.0;
  for (uint64_t c = 0; c < chunks; c++) total += partial[c];
  *out = total;
  return QLORA_OK;
}

}  // extern "C"
