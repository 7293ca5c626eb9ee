import { assert, assertEquals, assertInstanceOf, assertNotEquals, assertThrows } from "@std/assert";
import {
  DisposedError,
  fillOrDispose,
  getDevice,
  InvalidArgumentError,
  quantize,
  shapeSize,
  Tensor,
} from "../mod.ts";

const device = getDevice();

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

Deno.test("tensor: zeros, shapes and sizes of every dtype", () => {
  for (const [dtype, size] of [["f32", 4], ["bf16", 2], ["f16", 2], ["u8", 1], ["i32", 4]] as const) {
    using t = Tensor.zeros([3, 5], { dtype, device });
    assertEquals([t.numel, t.byteLength, t.shape], [15, 15 * size, [3, 5]]);
    assert(Array.from(t.toArray()).every((v) => v === 0), dtype);
  }
  assertEquals(shapeSize([]), 1);
  assertThrows(() => shapeSize([2 ** 30, 2 ** 30]), InvalidArgumentError, "too large");
  using s = Tensor.from([7], { shape: [], device });
  assertEquals([s.numel, s.shape.length], [1, 0]);
});

Deno.test("tensor: copies between tensors check dtype, size and device", () => {
  using a = Tensor.from([1, 2, 3], { device });
  using b = Tensor.zeros([3], { device });
  b.copyFrom(a);
  assertEquals([...b.toFloat32()], [1, 2, 3]);
  using c = Tensor.zeros([3], { dtype: "bf16", device });
  assertThrows(() => c.copyFrom(a), InvalidArgumentError, "bf16[3]");
  using d = Tensor.zeros([4], { device });
  assertThrows(() => d.copyFrom(a), InvalidArgumentError, "f32[4]");
  using i = Tensor.from(new Int32Array([5, -6]), { device });
  assertEquals([...i.toArray()], [5, -6]);
  assertThrows(() => i.cast("f32"), InvalidArgumentError);
});

Deno.test("tensor: randn seeds differ, and fillOrDispose frees only what it owns", () => {
  using a = Tensor.randn([256], { seed: 1, device });
  using b = Tensor.randn([256], { seed: 2, device });
  assertNotEquals(a.toArray(), b.toArray());
  assertThrows(() => Tensor.randn([4], { dtype: "u8", device }), InvalidArgumentError);
  const before = device.memory().totalCurrent;
  const owned = Tensor.zeros([8], { device });
  assertThrows(() =>
    fillOrDispose(owned, () => {
      throw new Error("fill failed");
    })
  );
  assert(owned.disposed);
  using kept = Tensor.zeros([8], { device });
  assertThrows(() =>
    fillOrDispose(kept, () => {
      throw new Error("fill failed");
    }, false)
  );
  assert(!kept.disposed, "a caller's output is the caller's to free");
  assertEquals(device.memory().totalCurrent, before + kept.byteLength);
  assertEquals(String(kept), `Tensor(f32[8], activations, ${device.backend})`);
  kept.dispose();
  assertEquals(String(kept), `Tensor(f32[8], activations, ${device.backend}, disposed)`);
});
