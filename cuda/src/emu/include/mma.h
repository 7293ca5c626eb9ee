// mma.h of the CUDA emulator: WMMA fragments and their warp-collective operations.
//
// As on a GPU, a fragment is spread over the 32 lanes of a warp, E = rows * cols / 32 elements each
// (num_elements), and which elements of the tile a lane holds is unspecified: here it changes with the
// run's QLORA_EMU_ORDER (forward: lane l holds elements [l E, (l + 1) E) of the row-major tile; reverse:
// the other way round; random: a seeded permutation per fragment kind and shape), so code that reads or
// writes frag.x[e] as if it knew which element that is fails, while element-wise code (scaling, fills)
// works in every order. load/store/mma are collective: every lane of the warp must call them with the same
// pointer and leading dimension (checked), the pointer 32-byte aligned and ldm a multiple of 16 bytes
// (checked, as the CUDA guide requires), and mma_sync reads the other lanes' elements of A and B through
// the warp exchange, so a kernel that lets one lane skip a WMMA call deadlocks here as it would on the
// GPU, and a fragment load into a diverged address is reported. Products are exact in f32 (bf16 x bf16)
// and summed in f32 in k order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct tile_shape;
template <int M, int N, int K>
struct tile_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct tile_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct tile_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using shape = tile_shape<Use, M, N, K>;
  static constexpr int rows = shape::rows, cols = shape::cols;
  static constexpr int num_elements = rows * cols / 32;
  T x[num_elements];
};

namespace detail {
// All lanes of the warp arrive with (pointer, ldm); each must match lane 0's, and the pointer and the
// leading dimension must meet WMMA's rules: a 256-bit aligned pointer, ldm a multiple of 16 bytes.
inline void check_uniform(const char* what, const void* p, unsigned ldm, size_t element_bytes) {
  // An exchange's results stay valid only until the lane's next collective: copy them first.
  void* ptrs[32];
  memcpy(ptrs, emu::warp_exchange_ptr(0xffffffffu, (void*)p), sizeof ptrs);
  const uint64_t* ldms = emu::warp_exchange(0xffffffffu, ldm);
  for (unsigned l = 1; l < 32; l++)
    if (ptrs[l] != ptrs[0] || ldms[l] != ldms[0])
      emu::kernel_error("%s: lane %u passed (%p, ldm %llu) but lane 0 passed (%p, ldm %llu); the arguments must be "
                        "the same on every lane of the warp",
                        what, l, ptrs[l], (unsigned long long)ldms[l], ptrs[0], (unsigned long long)ldms[0]);
  if ((uintptr_t)p % 32 != 0)
    emu::kernel_error("%s: the pointer %p is not 256-bit (32-byte) aligned, as WMMA requires", what, p);
  if (((size_t)ldm * element_bytes) % 16 != 0)
    emu::kernel_error("%s: ldm %u elements of %zu bytes is not a multiple of 16 bytes, as WMMA requires", what, ldm,
                      element_bytes);
}
// Element e of the tile (row-major index) at (row, col), in memory with the given layout.
inline size_t offset(int row, int col, unsigned ldm, bool row_major_layout) {
  return row_major_layout ? (size_t)row * ldm + col : (size_t)col * ldm + row;
}
// Which element of the tile (row-major index) slot s = lane * E + e holds, and the inverse, for one
// fragment kind and shape: the identity, its reverse, or a seeded permutation (fragment_order).
template <typename Use, int Rows, int Cols>
struct Layout {
  static constexpr int kCount = Rows * Cols;
  int element[kCount];  // slot -> element
  int slot[kCount];     // element -> slot
  Layout() {
    uint64_t seed = 0;
    const int order = emu::fragment_order(&seed);
    for (int i = 0; i < kCount; i++) element[i] = order == 1 ? kCount - 1 - i : i;
    if (order == 2) {
      const uint64_t kind = std::is_same<Use, accumulator>::value ? 3 : std::is_same<Use, matrix_a>::value ? 1 : 2;
      uint64_t r = seed * 0x9e3779b97f4a7c15ull + kind * 1000003ull + (uint64_t)Rows * 131 + Cols;
      for (int i = kCount - 1; i > 0; i--) {
        r ^= r >> 33;
        r *= 0xff51afd7ed558ccdull;
        r ^= r >> 29;
        std::swap(element[i], element[r % (uint64_t)(i + 1)]);
      }
    }
    for (int i = 0; i < kCount; i++) slot[element[i]] = i;
  }
  static const Layout& get() {
    static const Layout layout;
    return layout;
  }
};
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (int e = 0; e < f.num_elements; e++) f.x[e] = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  detail::check_uniform("wmma::load_matrix_sync", p, ldm, sizeof(T));
  const auto& slots = detail::Layout<Use, F::rows, F::cols>::get();
  const int first = (int)emu::lane_id() * F::num_elements;
  for (int e = 0; e < F::num_elements; e++) {
    const int i = slots.element[first + e];
    f.x[e] = p[detail::offset(i / F::cols, i % F::cols, ldm, std::is_same<Layout, row_major>::value)];
  }
  emu::warp_exchange(0xffffffffu, 0);  // loads are collective: no lane runs ahead
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::check_uniform("wmma::store_matrix_sync", p, ldm, sizeof(T));
  const auto& slots = detail::Layout<accumulator, F::rows, F::cols>::get();
  const int first = (int)emu::lane_id() * F::num_elements;
  for (int e = 0; e < F::num_elements; e++) {
    const int i = slots.element[first + e];
    p[detail::offset(i / F::cols, i % F::cols, ldm, layout == mem_row_major)] = f.x[e];
  }
  emu::warp_exchange(0xffffffffu, 0);
}

// d = a b + c for the warp: each lane computes its own elements of d from every lane's a and b.
template <int M, int N, int K, typename TA, typename LA, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TA, LB>;
  using FD = fragment<accumulator, M, N, K, TC>;
  void* const* as = emu::warp_exchange_ptr(0xffffffffu, (void*)&a);
  const FA* fa[32];
  for (int l = 0; l < 32; l++) fa[l] = (const FA*)as[l];
  void* const* bs = emu::warp_exchange_ptr(0xffffffffu, (void*)&b);
  const FB* fb[32];
  for (int l = 0; l < 32; l++) fb[l] = (const FB*)bs[l];
  const auto& ld = detail::Layout<accumulator, M, N>::get();
  const auto& la = detail::Layout<matrix_a, M, K>::get();
  const auto& lb = detail::Layout<matrix_b, K, N>::get();
  const int first = (int)emu::lane_id() * FD::num_elements;
  float out[FD::num_elements];
  for (int e = 0; e < FD::num_elements; e++) {
    const int i = ld.element[first + e] / N, j = ld.element[first + e] % N;
    float acc = to_float(c.x[e]);
    for (int p = 0; p < K; p++) {
      // The slots (lane * E + e) that hold a's (i, p) and b's (p, j).
      const int sa = la.slot[i * K + p], sb = lb.slot[p * N + j];
      acc += to_float(fa[sa / FA::num_elements]->x[sa % FA::num_elements]) *
             to_float(fb[sb / FB::num_elements]->x[sb % FB::num_elements]);
    }
    out[e] = acc;
  }
  emu::warp_exchange(0xffffffffu, 0);  // every lane has read a and b before any lane writes d
  for (int e = 0; e < FD::num_elements; e++) d.x[e] = from_float<TC>(out[e]);
}

}  // namespace wmma
}  // namespace nvcuda
