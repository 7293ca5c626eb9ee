// codes.cpp: NF4, FP4 and Int4 code values and thresholds; the 8-bit dynamic map.
#include "codes.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "status.h"

namespace qlora {

namespace {

// NF4 (QLoRA paper, appendix E; bitsandbytes): quantiles of N(0,1) normalised to [-1, 1], with an
// exact zero. These are float32 values.
const float kNF4[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// FP4 (E2M1 with bitsandbytes' scaling): code = sign bit (8) | 3-bit magnitude code. Magnitudes by
// code: 0 -> 0, 1 -> 1/192, 2 -> 2/3, 3 -> 1, 4 -> 1/3, 5 -> 1/2, 6 -> 1/6, 7 -> 1/4.
const float kFP4Magnitude[8] = {0.0f,        0.0052083333f, 0.6666667f, 1.0f,
                                0.33333333f, 0.5f,          0.16666667f, 0.25f};
// Sorted magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 and their codes.
const uint8_t kFP4SortedCodes[8] = {0, 1, 6, 7, 4, 5, 2, 3};
// bitsandbytes' decision thresholds on |x| between the sorted magnitudes (kept as it writes them,
// so that codes match bit for bit).
const float kFP4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                 0.4166667f,  0.583333f,  0.8333333f};

Quant4Table make_monotone(const float* code) {
  Quant4Table t{};
  memcpy(t.code, code, sizeof t.code);
  // Midpoints computed in double from the float codes, then rounded once to float.
  for (int k = 0; k < 15; k++) t.threshold[k] = (float)(((double)code[k] + (double)code[k + 1]) / 2.0);
  t.num_thresholds = 15;
  t.sign_magnitude = 0;
  return t;
}

Quant4Table make_nf4() { return make_monotone(kNF4); }

Quant4Table make_int4() {
  // Symmetric Int4: code i stands for (i - 8) / 7; code 0 (-8/7) is never chosen for |x| <= 1.
  float code[16];
  for (int i = 0; i < 16; i++) code[i] = (float)((i - 8) / 7.0);
  return make_monotone(code);
}

Quant4Table make_fp4() {
  Quant4Table t{};
  for (int i = 0; i < 8; i++) {
    t.code[i] = kFP4Magnitude[i];
    t.code[i + 8] = -kFP4Magnitude[i];
  }
  memcpy(t.threshold, kFP4Thresholds, sizeof kFP4Thresholds);
  t.num_thresholds = 7;
  t.sign_magnitude = 1;
  memcpy(t.magnitude_code, kFP4SortedCodes, sizeof kFP4SortedCodes);
  return t;
}

// torch.linspace(start, end, steps) in float32: the first half counts up from start, the second
// half down from end, with step = (end - start) / (steps - 1). This is torch's portable CPU kernel
// (ATEN_CPU_CAPABILITY=default), the product rounded before the sum; its AVX2/AVX-512 kernels round
// start + step * i once (a fused multiply-add), which moves 42 signed and 31 unsigned map entries by
// 1-2 ulps. tests/dynamic_map_test.ts checks both maps against bitsandbytes' values of both kernels.
void linspace_f32(float start, float end, int steps, float* out) {
  float step = (end - start) / (float)(steps - 1);
  int half = steps / 2;
  for (int i = 0; i < steps; i++) {
    out[i] = i < half ? start + step * (float)i : end - step * (float)(steps - 1 - i);
  }
}

DynamicMap make_dynamic_map(bool is_signed) {
  // create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for exponent i in 0..6, the means of
  // linspace(0.1, 1, 2^i + 1) (signed: 2^i means, with both signs) or of linspace(0.1, 1, 2^(i+1) + 1)
  // (unsigned: 2^(i+1) means, the sign bit spent on the fraction), scaled by 10^(i-6); then 0 and 1.
  // 2 * 127 + 2 = 254 + 2 = 256 values either way.
  float values[256];
  int n = 0;
  for (int i = 0; i < 7; i++) {
    int items = (1 << (is_signed ? i : i + 1)) + 1;
    float bounds[129];
    linspace_f32(0.1f, 1.0f, items, bounds);
    float scale = (float)std::pow(10.0, (double)(i - 6));
    for (int j = 0; j + 1 < items; j++) {
      float mean = (bounds[j] + bounds[j + 1]) / 2.0f;
      values[n++] = mean * scale;
      if (is_signed) values[n++] = -(mean * scale);
    }
  }
  values[n++] = 0.0f;
  values[n++] = 1.0f;
  DynamicMap m{};
  std::sort(values, values + 256);
  memcpy(m.code, values, sizeof m.code);
  for (int k = 0; k < 255; k++) m.midpoint[k] = (m.code[k] + m.code[k + 1]) * 0.5f;
  return m;
}

}  // namespace

const Quant4Table* quant4_table(int32_t quant_type) {
  static const Quant4Table nf4 = make_nf4();
  static const Quant4Table fp4 = make_fp4();
  static const Quant4Table int4 = make_int4();
  switch (quant_type) {
    case QLORA_NF4: return &nf4;
    case QLORA_FP4: return &fp4;
    case QLORA_INT4: return &int4;
    default: return nullptr;
  }
}

const DynamicMap& dynamic_map() {
  static const DynamicMap m = make_dynamic_map(true);
  return m;
}

const DynamicMap& dynamic_map_unsigned() {
  static const DynamicMap m = make_dynamic_map(false);
  return m;
}

}  // namespace qlora

extern "C" {

QLORA_API qlora_status qlora_quant_map(int32_t quant_type, float* out16) {
  QLORA_CHECK_PTR(out16, "read a quant map");
  const qlora::Quant4Table* t = qlora::quant4_table(quant_type);
  if (!t) return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot read a quant map: quant type %d is not nf4 (0), fp4 (1) or int4 (2)", quant_type);
  memcpy(out16, t->code, sizeof t->code);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_dynamic_map(float* out256) {
  QLORA_CHECK_PTR(out256, "read the dynamic map");
  memcpy(out256, qlora::dynamic_map().code, sizeof(float) * 256);
  return QLORA_OK;
}

QLORA_API qlora_status qlora_dynamic_map_unsigned(float* out256) {
  QLORA_CHECK_PTR(out256, "read the unsigned dynamic map");
  memcpy(out256, qlora::dynamic_map_unsigned().code, sizeof(float) * 256);
  return QLORA_OK;
}

}  // extern "C"
