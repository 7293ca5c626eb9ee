// The key/value cache: its bytes against the formula (kv heads only: grouped-query attention), positions
// with left padding, growth that keeps what was cached, and refusals that leave the cache as it was.
import { assertEquals, assertThrows } from "@std/assert";
import {
  getDevice,
  InvalidArgumentError,
  KVCache,
  kvCacheBytes,
  LLAMA_CONFIGS,
  OutOfMemoryError,
  Tensor,
} from "../mod.ts";

const CONFIG = { ...LLAMA_CONFIGS.tiny, layers: 2, heads: 4, kvHeads: 2, dim: 64 };

Deno.test("kv cache: bytes per the formula, GQA-aware, in the ledger under kv_cache", () => {
  // 70B: 8 kv heads of 128 -> 2 * 80 * 1024 * 2 B = 320 KiB per token in bf16; 7B: 512 KiB.
  assertEquals(kvCacheBytes(LLAMA_CONFIGS["70b"], { rows: 1, dtype: "bf16" }), 320 * 1024);
  assertEquals(kvCacheBytes(LLAMA_CONFIGS["7b"], { rows: 4096, batch: 2, dtype: "bf16" }), 4 * 2 ** 30);
  const device = getDevice(), before = device.memory().current.kv_cache;
  using cache = new KVCache(CONFIG, { batch: 3, capacity: 10, dtype: "bf16" });
  assertEquals(cache.bytes, kvCacheBytes(CONFIG, { rows: 10, batch: 3, dtype: "bf16" }));
  assertEquals(device.memory().current.kv_cache - before, cache.bytes);
  cache.dispose();
  assertEquals(device.memory().current.kv_cache, before);
});

Deno.test("kv cache: positions start at 0 on each sequence's first real token", () => {
  using cache = new KVCache(CONFIG, { batch: 2, capacity: 8, firstKey: [0, 3] });
  assertEquals([...cache.positions(4)], [0, 1, 2, 3, -3, -2, -1, 0]);
  using k = Tensor.zeros([8, 32]), v = Tensor.zeros([8, 32]);
  for (let i = 0; i < CONFIG.layers; i++) cache.append(i, k, v, 4);
  cache.advance(4);
  assertEquals([...cache.positions(1)], [4, 1]);
});

Deno.test("kv cache: growth keeps the cached rows; past maxCapacity, or without growBy, it is refused", () => {
  using cache = new KVCache(CONFIG, { capacity: 4, growBy: 4, maxCapacity: 10 });
  const rows = Float32Array.from({ length: 3 * 32 }, (_, i) => i);
  using k = Tensor.from(rows, { shape: [3, 32] }), v = Tensor.from(rows.map((x) => -x), { shape: [3, 32] });
  for (let i = 0; i < CONFIG.layers; i++) cache.append(i, k, v, 3);
  cache.advance(3);
  cache.reserve(9); // 4 -> 12 capped at 10
  assertEquals(cache.capacity, 10);
  for (let i = 0; i < CONFIG.layers; i++) {
    assertEquals([...cache.keys(i).toFloat32().subarray(0, 96)], [...rows]);
    assertEquals([...cache.values(i).toFloat32().subarray(0, 96)], [...rows.map((x) => -x)]);
  }
  assertThrows(() => cache.reserve(11), InvalidArgumentError, "maxCapacity is 10");
  using fixed = new KVCache(CONFIG, { capacity: 4 });
  assertThrows(() => fixed.reserve(5), InvalidArgumentError, "does not grow");
  assertThrows(() => fixed.advance(5), InvalidArgumentError, "capacity 4");
});

Deno.test("kv cache: a growth refused for memory keeps the cache as it was", () => {
  const device = getDevice();
  using cache = new KVCache(CONFIG, { capacity: 4, growBy: 64, maxCapacity: 256 });
  const before = device.memory().totalCurrent;
  device.setMemoryBudget(before + 1024);
  try {
    assertThrows(() => cache.reserve(5), OutOfMemoryError);
  } finally {
    device.setMemoryBudget(0);
  }
  assertEquals([cache.capacity, device.memory().totalCurrent], [4, before]);
  cache.reserve(5);
  assertEquals(cache.capacity, 64);
});

Deno.test("kv cache: bad options and appends are refused", () => {
  for (
    const [o, m] of [
      [{ batch: 0 }, "batch"],
      [{ capacity: 300 }, "above maxCapacity"],
      [{ growBy: -1 }, "growBy"],
      [{ firstKey: [0, 1] }, "firstKey has 2 rows"],
      [{ firstKey: [-1] }, "firstKey[0]"],
      [{ dtype: "f16" as "f32" }, "dtype"],
    ] as const
  ) {
    assertThrows(() => new KVCache(CONFIG, o), InvalidArgumentError, m);
  }
  using cache = new KVCache(CONFIG, { capacity: 4 });
  using k = Tensor.zeros([2, 32]);
  assertThrows(() => cache.append(0, k, k, 1), InvalidArgumentError, "f32[1, 32]");
});
