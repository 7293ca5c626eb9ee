// status.cpp: thread-local error messages and the names of enum values.
#include "status.h"

#include <cstdarg>
#include <cstdio>

namespace qlora {

static thread_local char g_last_error[1024] = "";

qlora_status fail(qlora_status status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, args);
  va_end(args);
  return status;
}

void clear_error() { g_last_error[0] = '\0'; }

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case QLORA_F32: return "f32";
    case QLORA_BF16: return "bf16";
    case QLORA_F16: return "f16";
    case QLORA_U8: return "u8";
    case QLORA_I32: return "i32";
    default: return "an unknown dtype";
  }
}

const char* category_name(int32_t category) {
  static const char* names[QLORA_NUM_CATEGORIES] = {
      "weights",   "quantized_weights", "quant_constants", "adapters",
      "gradients", "optimizer_states",  "activations",     "workspace", "kv_cache"};
  if (category < 0 || category >= QLORA_NUM_CATEGORIES) return "an unknown category";
  return names[category];
}

const char* quant_type_name(int32_t quant_type) {
  switch (quant_type) {
    case QLORA_NF4: return "nf4";
    case QLORA_FP4: return "fp4";
    case QLORA_INT4: return "int4";
    default: return "an unknown quant type";
  }
}

uint64_t dtype_size(int32_t dtype) {
  switch (dtype) {
    case QLORA_F32: return 4;
    case QLORA_BF16: return 2;
    case QLORA_F16: return 2;
    case QLORA_U8: return 1;
    case QLORA_I32: return 4;
    default: return 0;
  }
}

bool is_float_dtype(int32_t dtype) {
  return dtype == QLORA_F32 || dtype == QLORA_BF16 || dtype == QLORA_F16;
}

bool valid_blocksize(uint64_t blocksize) {
  return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

const char* format_bytes(uint64_t bytes, char* buf, int len) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    u++;
  }
  if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)bytes);
  else snprintf(buf, len, "%.2f %s", v, units[u]);
  return buf;
}

}  // namespace qlora

extern "C" {

QLORA_API uint32_t qlora_abi_version(void) { return QLORA_ABI_VERSION; }

QLORA_API const char* qlora_last_error(void) { return qlora::g_last_error; }

}  // extern "C"
