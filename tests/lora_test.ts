import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import { getDevice, InvalidArgumentError, Linear, LoRALinear, matmul, Tensor } from "../mod.ts";
import { assertClose } from "./_assert_close.ts";
import { normalValues } from "./_reference.ts";

const device = getDevice();

/** L(x) = Σ y ⊙ g: dL/dy = g, so backward(g) is dL/dx; parameters are checked by central differences. */
function lossOf(y: Tensor, g: Float32Array): number {
  const v = y.toFloat32();
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * g[i];
  return s;
}

function finiteDifference(param: Tensor, index: number, eps: number, loss: () => number): number {
  const v = param.toFloat32();
  const orig = v[index];
  v[index] = orig + eps;
  param.copyFrom(v);
  const up = loss();
  v[index] = orig - eps;
  param.copyFrom(v);
  const down = loss();
  v[index] = orig;
  param.copyFrom(v);
  return (up - down) / (2 * eps);
}

Deno.test("Linear: dW and dx match finite differences (f32)", () => {
  const [m, inp, out] = [6, 20, 12];
  using layer = new Linear(inp, out, { seed: 1, std: 0.3, device });
  using x = Tensor.randn([m, inp], { seed: 2, device });
  const g = normalValues(m * out, 3);
  using gt = Tensor.from(g, { shape: [m, out], device });
  using _y = layer.forward(x);
  using dx = layer.backward(gt);
  const loss = () => {
    using y = layer.forward(x);
    return lossOf(y, g);
  };
  const dW = layer.grad!.toFloat32(), dxv = dx.toFloat32();
  for (const i of [0, 7, 100, out * inp - 1]) {
    assertAlmostEquals(dW[i], finiteDifference(layer.weight, i, 1e-2, loss), 2e-3, `dW[${i}]`);
  }
  for (const i of [0, 33, m * inp - 1]) {
    assertAlmostEquals(dxv[i], finiteDifference(x, i, 1e-2, loss), 2e-3, `dx[${i}]`);
  }
  // gradients accumulate until zeroGrad
  const before = layer.grad!.toFloat32();
  using _y2 = layer.forward(x);
  layer.backward(gt).dispose();
  assertClose(layer.grad!.toFloat32(), before.map((v) => 2 * v), 1e-5, "accumulated");
  layer.zeroGrad();
  using _y3 = layer.forward(x);
  layer.backward(gt).dispose();
  assertClose(layer.grad!.toFloat32(), before, 1e-5, "overwritten after zeroGrad");
});

for (const base of ["f32", "nf4"] as const) {
  for (const p of [0, 0.3]) {
    Deno.test(`LoRALinear (${base} base, dropout ${p}): dA, dB, dx match finite differences`, () => {
      const [m, inp, out, rank] = [5, 64, 48, 4];
      using w = Tensor.randn([out, inp], { std: 0.05, seed: 4, device });
      using layer = LoRALinear.fromWeight(w, {
        rank,
        alpha: 8,
        dropout: p,
        base,
        computeDtype: "f32",
        seed: 5,
      });
      layer.loraB.copyFrom(normalValues(out * rank, 6, 0.1)); // B = 0 would make dA vanish
      using x = Tensor.randn([m, inp], { seed: 7, device });
      const g = normalValues(m * out, 8);
      using gt = Tensor.from(g, { shape: [m, out], device });
      const seed = 1234;
      using _y = layer.forward(x, { dropoutSeed: seed });
      using dx = layer.backward(gt);
      const loss = () => {
        using y = layer.forward(x, { dropoutSeed: seed });
        return lossOf(y, g);
      };
      const dA = layer.gradA!.toFloat32(), dB = layer.gradB!.toFloat32(), dxv = dx.toFloat32();
      for (const i of [0, 17, rank * inp - 1]) {
        assertAlmostEquals(dA[i], finiteDifference(layer.loraA, i, 1e-2, loss), 2e-3, `dA[${i}]`);
      }
      for (const i of [0, 50, out * rank - 1]) {
        assertAlmostEquals(dB[i], finiteDifference(layer.loraB, i, 1e-2, loss), 2e-3, `dB[${i}]`);
      }
      for (const i of [0, 99, m * inp - 1]) {
        assertAlmostEquals(dxv[i], finiteDifference(x, i, 1e-2, loss), 2e-3, `dx[${i}]`);
      }
    });
  }
}

Deno.test("backward with inputGrad: false gives null and the same parameter gradients, allocating no dx", () => {
  const [m, inp, out] = [6, 64, 48];
  using x = Tensor.randn([m, inp], { seed: 2, device });
  using dy = Tensor.randn([m, out], { seed: 3, device });
  using w = Tensor.randn([out, inp], { std: 0.05, seed: 4, device });
  using linear = new Linear(inp, out, { seed: 1, device });
  using lora = LoRALinear.fromWeight(w, { rank: 4, alpha: 8, dropout: 0.3, base: "f32", seed: 5 });
  lora.loraB.copyFrom(normalValues(out * 4, 6, 0.1));
  const grads = () => [linear.grad!, lora.gradA!, lora.gradB!].map((g) => g.toFloat32());
  const run = (inputGrad: boolean) => {
    linear.zeroGrad(), lora.zeroGrad();
    using _a = linear.forward(x);
    using _b = lora.forward(x, { dropoutSeed: 9 });
    const before = device.memory().totalCurrent;
    const dx = [linear.backward(dy, { inputGrad }), lora.backward(dy, { inputGrad })];
    const grown = device.memory().totalCurrent - before;
    for (const d of dx) d?.dispose();
    return { dx, grown, grads: grads() };
  };
  run(true); // the first backward allocates the gradients
  const full = run(true), skipped = run(false);
  assert(full.dx.every((d) => d !== null), "dx by default");
  assertEquals(skipped.dx, [null, null]);
  for (let i = 0; i < full.grads.length; i++) assertEquals(skipped.grads[i], full.grads[i], `gradient ${i}`);
  assertEquals(full.grown - skipped.grown, 2 * m * inp * 4, "the only difference in memory: the two f32 dx");
});

Deno.test("LoRALinear: a new layer computes its base exactly (B = 0), and A is Kaiming-uniform", () => {
  using w = Tensor.randn([32, 100], { std: 0.02, seed: 1, device });
  using layer = LoRALinear.fromWeight(w, { rank: 8, base: "f32" });
  using x = Tensor.randn([3, 100], { seed: 2, device });
  using y = layer.forward(x);
  using yBase = matmul(x, w, { transB: true });
  assertEquals(y.toArray(), yBase.toArray());
  const a = layer.loraA.toFloat32();
  const bound = 1 / Math.sqrt(100);
  assert(a.every((v) => Math.abs(v) <= bound) && a.some((v) => Math.abs(v) > 0.9 * bound));
  assert(layer.loraB.toFloat32().every((v) => v === 0));
});

for (const base of ["f32", "bf16", "nf4"] as const) {
  Deno.test(`LoRALinear (${base}): merged forward equals the unmerged forward; unmerge restores`, () => {
    using w = Tensor.randn([64, 96], { std: 0.02, seed: 3, device });
    using layer = LoRALinear.fromWeight(w, { rank: 8, alpha: 16, base });
    const dtype = layer.dtype;
    using b = Tensor.randn([64, 8], { std: 0.05, seed: 4, dtype, device });
    layer.loraB.copyFrom(b);
    const before = layer.base?.toFloat32();
    using x = Tensor.randn([7, 96], { seed: 5, dtype, device });
    using y = layer.forward(x);
    layer.merge();
    assert(layer.merged);
    using ym = layer.forward(x);
    assertClose(ym.toFloat32(), y.toFloat32(), dtype === "f32" ? 1e-5 : 2e-2, "merged");
    assertThrows(() => layer.backward(ym), InvalidArgumentError, "merged");
    layer.unmerge();
    assert(!layer.merged);
    if (before) assertClose(layer.base!.toFloat32(), before, dtype === "f32" ? 1e-6 : 1e-2, "unmerged base");
    using yu = layer.forward(x);
    assertClose(yu.toFloat32(), y.toFloat32(), dtype === "f32" ? 1e-6 : 2e-2, "after unmerge");
  });
}

Deno.test("the seed's example: 4096 x 4096 at rank 8 trains 65,536 of 16,777,216 weights (0.39%)", () => {
  using layer = new LoRALinear(4096, 4096, { rank: 8, base: "nf4", device });
  assertEquals(layer.trainableParameters, 65_536);
  assertEquals(layer.parameters - layer.trainableParameters, 16_777_216);
  assertAlmostEquals((100 * layer.trainableParameters) / 16_777_216, 0.390625, 1e-9);
});

Deno.test("ledger: LoRA keeps no gradient for W, QLoRA keeps W in 4 bits", () => {
  const [m, inp, out, rank] = [16, 512, 256, 8];
  for (const base of ["bf16", "nf4"] as const) {
    const start = device.memory();
    const delta = (c: keyof typeof start.current) => device.memory().current[c] - start.current[c];
    using w = Tensor.randn([out, inp], { std: 0.02, seed: 9, dtype: "bf16", device });
    using layer = LoRALinear.fromWeight(w, { rank, base });
    using x = Tensor.randn([m, inp], { dtype: "bf16", device });
    using y = layer.forward(x);
    using dy = Tensor.randn([m, out], { dtype: "bf16", device });
    using dx = layer.backward(dy);
    assertEquals(delta("gradients"), 2 * rank * (inp + out), `${base}: gradients are dA and dB only`);
    assertEquals(delta("adapters"), 2 * rank * (inp + out));
    if (base === "nf4") {
      assertEquals(delta("quantized_weights"), (out * inp) / 2, "4 bits per weight");
      assertEquals(delta("weights"), 0, "no 16-bit copy of W");
    } else {
      assertEquals(delta("weights"), 2 * out * inp, "the frozen 16-bit base");
    }
    assert(y.category === "activations" && dx.numel === m * inp);
  }
});

Deno.test("layers refuse bad shapes, dtypes and options before any native call", () => {
  using layer = new LoRALinear(64, 32, { rank: 4, base: "f32", device });
  using bad = Tensor.randn([3, 63], { device });
  assertThrows(() => layer.forward(bad), InvalidArgumentError, "[tokens, 64]");
  using bf = Tensor.randn([3, 64], { dtype: "bf16", device });
  assertThrows(() => layer.forward(bf), InvalidArgumentError, "computes in f32");
  assertThrows(() => layer.backward(bf), InvalidArgumentError, "call forward first");
  assertThrows(() => new LoRALinear(64, 32, { rank: 0 }), InvalidArgumentError, "rank");
  assertThrows(() => new LoRALinear(64, 32, { rank: 4, dropout: 1 }), InvalidArgumentError, "dropout");
  assertThrows(
    () => new LoRALinear(64, 32, { rank: 4, base: "int8" as "nf4" }),
    InvalidArgumentError,
    "base",
  );
  assertThrows(() => new Linear(0, 3), InvalidArgumentError, "inFeatures");
  using a = Tensor.randn([3, 4], { device });
  using b = Tensor.randn([5, 6], { device });
  assertThrows(() => matmul(a, b), InvalidArgumentError, "inner dimensions");
  using c = Tensor.randn([4, 5], { dtype: "bf16", device });
  assertThrows(() => matmul(a, c), InvalidArgumentError, "f32 but B is bf16");
});
