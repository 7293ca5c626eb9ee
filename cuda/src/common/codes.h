// codes.h: the code tables of the 4-bit types and of the 8-bit dynamic map, with the thresholds
// (midpoints) used to quantize. Computed once on the host; the CUDA backend copies them to the device.
#pragma once
#include <cstdint>

#include "qlora.h"

namespace qlora {

struct Quant4Table {
  float code[16];          // value of each 4-bit code, as dequantized (the file's quant_map)
  // Quantization is "count the thresholds below": for a monotone type the code is the number of
  // thresholds t[k] < x (15 thresholds). For a sign-magnitude type (FP4) the magnitude index is the
  // number of thresholds t[k] < |x| (7 thresholds), mapped through magnitude_code, plus 8 if x < 0.
  float threshold[15];
  int32_t num_thresholds;  // 15 (monotone) or 7 (sign-magnitude)
  int32_t sign_magnitude;  // 1 for FP4
  uint8_t magnitude_code[8];
};

// The table of a quant type, nullptr for an unknown type.
const Quant4Table* quant4_table(int32_t quant_type);

struct DynamicMap {
  float code[256];      // sorted ascending
  float midpoint[255];  // (code[k] + code[k+1]) * 0.5f; a value maps to #{k : midpoint[k] < x}
};

// bitsandbytes' signed dynamic map (create_dynamic_map(signed=True)), sorted.
const DynamicMap& dynamic_map();
// bitsandbytes' unsigned dynamic map (create_dynamic_map(signed=False)), sorted: values in [0, 1].
const DynamicMap& dynamic_map_unsigned();

// The code of x (in [-1, 1]) in a dynamic map: the number of midpoints below x (binary search).
inline uint8_t dynamic_code(const DynamicMap& map, float x) {
  int lo = 0, hi = 255;  // the answer lies in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (map.midpoint[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return (uint8_t)lo;
}

// Sum of n floats in double in a fixed order: chunks of kMeanChunk summed one by one, then the
// chunk sums in order. Both backends follow this order, so the mean (the double-quant offset) agrees.
constexpr uint64_t kMeanChunk = 4096;

}  // namespace qlora
