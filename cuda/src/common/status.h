// status.h: the thread-local last error and the checks every entry point runs first.
#pragma once
#include "qlora.h"

namespace qlora {

// Records a printf-style message as this thread's last error and returns status.
qlora_status fail(qlora_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// Clears this thread's last error (called on success paths that follow a failure).
void clear_error();

const char* dtype_name(int32_t dtype);
const char* category_name(int32_t category);
const char* quant_type_name(int32_t quant_type);
// Bytes per element of a dtype, 0 for an unknown dtype.
uint64_t dtype_size(int32_t dtype);
bool is_float_dtype(int32_t dtype);
bool valid_blocksize(uint64_t blocksize);
// Formats bytes as "1.50 GiB" into buf (thread-local storage is the caller's).
const char* format_bytes(uint64_t bytes, char* buf, int len);

}  // namespace qlora

// Entry checks: each returns from the calling function with a clear message.
#define QLORA_CHECK_PTR(p, fn)                                                                   \
  do {                                                                                           \
    if ((p) == nullptr) return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s is null", \
                                           fn, #p);                                              \
  } while (0)
#define QLORA_CHECK_FLOAT_DTYPE(d, fn)                                                              \
  do {                                                                                              \
    if (!qlora::is_float_dtype(d))                                                                  \
      return qlora::fail(QLORA_ERR_INVALID_ARGUMENT, "Cannot %s: %s must be f32, bf16 or f16, got %s", \
                         fn, #d, qlora::dtype_name(d));                                             \
  } while (0)
