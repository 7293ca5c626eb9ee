import { assert, assertEquals, assertGreater, assertInstanceOf, assertThrows } from "@std/assert";
import {
  CATEGORIES,
  DisposedError,
  formatBytes,
  getDevice,
  InvalidArgumentError,
  JUPYTER_DISPLAY,
  OutOfMemoryError,
  parseBytes,
  quantize,
  Tensor,
} from "../mod.ts";

const device = getDevice();

Deno.test("ledger: every category counts exactly the bytes allocated, and returns to zero", () => {
  const start = device.memory();
  const tensors = CATEGORIES.map((category, i) => Tensor.empty([1000 + i], { category, device }));
  const mid = device.memory();
  CATEGORIES.forEach((c, i) => assertEquals(mid.current[c] - start.current[c], 4 * (1000 + i), c));
  assertEquals(mid.liveAllocations - start.liveAllocations, CATEGORIES.length);
  for (const t of tensors) t.dispose();
  const end = device.memory();
  assertEquals(end.totalCurrent, start.totalCurrent);
  assertEquals(end.liveAllocations, start.liveAllocations);
});

Deno.test("ledger: a quantized tensor is counted as quantized_weights and quant_constants", () => {
  const before = device.memory();
  using w = Tensor.randn([1024, 512], { category: "weights", dtype: "bf16", device });
  using q = quantize(w);
  const snap = device.memory();
  assertEquals(snap.current.quantized_weights - before.current.quantized_weights, 1024 * 512 / 2);
  const blocks = 1024 * 512 / 64;
  assertEquals(snap.current.quant_constants - before.current.quant_constants, blocks + 4 * (blocks / 256));
  assertEquals(q.bytes.constants, blocks + 4 * (blocks / 256) + 4);
});

Deno.test("ledger: peak follows the high-water mark and resets on demand", () => {
  device.resetPeak();
  const base = device.memory().totalCurrent;
  {
    using _big = Tensor.empty([1 << 20], { category: "workspace", device });
  }
  const after = device.memory();
  assertEquals(after.totalPeak - base, 4 << 20);
  assertGreater(after.peak.workspace, 0);
  device.resetPeak();
  assertEquals(device.memory().totalPeak, base);
});

Deno.test("budget: an allocation past it is an OutOfMemoryError naming request, budget and ledger", () => {
  using keep = Tensor.empty([1 << 18], { category: "weights", device }); // 1 MiB
  const inUse = device.memory().totalCurrent;
  device.setMemoryBudget(inUse + (2 << 20));
  try {
    using ok = Tensor.empty([1 << 18], { category: "activations", device });
    assert(!ok.disposed);
    const e = assertThrows(
      () => Tensor.empty([1 << 20], { category: "activations", device }),
      OutOfMemoryError,
    );
    assertEquals(e.details.requested, 4 << 20);
    assertEquals(e.details.category, "activations");
    assertEquals(e.details.budget, inUse + (2 << 20));
    assertGreater(e.details.current.weights, 0);
    for (const part of ["4.00 MiB", "activations", "budget", "weights"]) {
      assert(e.message.includes(part), e.message);
    }
    assertEquals(device.memory().totalCurrent, inUse + (1 << 20), "the failed request left nothing behind");
  } finally {
    device.setMemoryBudget(0);
  }
  assert(!keep.disposed);
  using fine = Tensor.empty([1 << 20], { device });
  assertEquals(fine.byteLength, 4 << 20);
});

Deno.test("budget: parses human sizes and rejects nonsense", () => {
  assertEquals(parseBytes("6GiB"), 6 * 2 ** 30);
  assertEquals(parseBytes("512 MiB"), 512 * 2 ** 20);
  assertEquals(parseBytes("1.5GB"), 1.5e9);
  assertThrows(() => parseBytes("six gigs"), InvalidArgumentError);
  assertThrows(() => device.setMemoryBudget(-1), InvalidArgumentError);
  assertEquals(formatBytes(6 * 2 ** 30), "6.00 GiB");
});

Deno.test("tensor: use after dispose throws, dispose twice is harmless", () => {
  const t = Tensor.from([1, 2, 3], { device });
  t.dispose();
  t.dispose();
  assert(t.disposed);
  assertThrows(() => t.toArray(), DisposedError);
  assertThrows(() => quantize(t), DisposedError);
  assertThrows(() => t.cast("bf16"), DisposedError);
});

Deno.test("tensor: shapes, dtypes and host copies are checked", () => {
  assertThrows(() => Tensor.empty([2, 0], { device }), InvalidArgumentError, "positive");
  assertThrows(() => Tensor.empty([2.5], { device }), InvalidArgumentError);
  assertThrows(() => Tensor.empty([4], { dtype: "f64" as "f32", device }), InvalidArgumentError, "f64");
  assertThrows(
    () => Tensor.empty([4], { category: "cache" as "weights", device }),
    InvalidArgumentError,
    "cache",
  );
  assertThrows(() => Tensor.from([1, 2, 3], { shape: [2, 2], device }), InvalidArgumentError, "3 values");
  assertThrows(() => Tensor.from(new Uint16Array(2), { device }), InvalidArgumentError, "bf16 or f16");
  using t = Tensor.empty([4], { device });
  assertThrows(() => t.copyFrom(new Float32Array(3)), InvalidArgumentError, "Float32Array(4)");
  assertThrows(() => t.copyFrom(new Int32Array(4)), InvalidArgumentError);
  assertThrows(() => Tensor.randn([4], { seed: -1, device }), InvalidArgumentError);
});

Deno.test("tensor: from/to host, clone, cast and randn", () => {
  using a = Tensor.from([1, -2.5, 3.25, 0], { shape: [2, 2], device });
  assertEquals([...a.toFloat32()], [1, -2.5, 3.25, 0]);
  using b = a.clone({ category: "weights" });
  assertEquals(b.category, "weights");
  assertEquals(b.toArray(), a.toArray());
  using h = a.cast("f16");
  assertEquals([...h.toFloat32()], [1, -2.5, 3.25, 0]);
  using r = Tensor.randn([1 << 16], { std: 2, mean: 1, seed: 3, device });
  const v = r.toFloat32();
  const mean = v.reduce((s, x) => s + x, 0) / v.length;
  const sd = Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
  assert(Math.abs(mean - 1) < 0.03 && Math.abs(sd - 2) < 0.03, `mean ${mean} sd ${sd}`);
  using r2 = Tensor.randn([1 << 16], { std: 2, mean: 1, seed: 3, device });
  assertEquals(r2.toArray(), r.toArray(), "same seed, same values");
  assertInstanceOf(a.toArray(), Float32Array);
});

Deno.test("ledger snapshot renders in Jupyter and as text", () => {
  const snap = device.memory();
  const bundle = snap[JUPYTER_DISPLAY]();
  assert(bundle["text/html"].includes("<table>"));
  assert(snap.toString().includes("total"));
});
