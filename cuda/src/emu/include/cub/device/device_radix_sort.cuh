// cub/device/device_radix_sort.cuh of the CUDA emulator: DeviceRadixSort::SortPairs with CUB's contract
// (a size query with a null temp_storage, then the sort; stable; keys compared on bits [begin_bit,
// end_bit)). Checked at the call; the sort is queued on the stream (cudaLaunchHostFunc), so it runs after
// the stream's earlier work and before its later work, using the caller's temporary storage.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace cub {

struct DeviceRadixSort {
  template <typename Key, typename Value, typename NumItems>
  static cudaError_t SortPairs(void* temp_storage, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, NumItems num_items, int begin_bit = 0,
                               int end_bit = (int)sizeof(Key) * 8, cudaStream_t stream = nullptr) {
    const size_t n = (size_t)num_items;
    const size_t need = n * sizeof(uint32_t) + 256;  // the permutation, as scratch in the caller's storage
    if (temp_storage == nullptr) {
      temp_bytes = need;
      return cudaSuccess;
    }
    if (temp_bytes < need || begin_bit < 0 || end_bit > (int)sizeof(Key) * 8 || begin_bit >= end_bit)
      return cudaErrorInvalidValue;
    cudaError_t e = emu::check_stream(stream);
    if (e != cudaSuccess) return e;
    if (n == 0) return cudaSuccess;
    if (!emu::is_device_range(temp_storage, temp_bytes) || !emu::is_device_range(keys_in, n * sizeof(Key)) ||
        !emu::is_device_range(keys_out, n * sizeof(Key)) || !emu::is_device_range(values_in, n * sizeof(Value)) ||
        !emu::is_device_range(values_out, n * sizeof(Value)))
      return cudaErrorInvalidValue;
    const uint64_t mask = (end_bit - begin_bit >= 64 ? ~0ull : ((1ull << (end_bit - begin_bit)) - 1)) << begin_bit;
    auto* job = new Job<Key, Value>{(uint32_t*)temp_storage, keys_in, keys_out, values_in, values_out, n, mask};
    return cudaLaunchHostFunc(stream, &Job<Key, Value>::run, job);
  }

 private:
  template <typename Key, typename Value>
  struct Job {
    uint32_t* order;
    const Key* keys_in;
    Key* keys_out;
    const Value* values_in;
    Value* values_out;
    size_t n;
    uint64_t mask;
    static void run(void* p) {
      const Job* j = (const Job*)p;
      for (size_t i = 0; i < j->n; i++) j->order[i] = (uint32_t)i;
      std::stable_sort(j->order, j->order + j->n, [&](uint32_t a, uint32_t b) {
        return ((uint64_t)j->keys_in[a] & j->mask) < ((uint64_t)j->keys_in[b] & j->mask);
      });
      for (size_t i = 0; i < j->n; i++) {
        j->keys_out[i] = j->keys_in[j->order[i]];
        j->values_out[i] = j->values_in[j->order[i]];
      }
      delete j;
    }
  };
};

}  // namespace cub
