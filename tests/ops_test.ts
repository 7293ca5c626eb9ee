import { assert, assertAlmostEquals, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  axpby,
  dropout,
  fillUniform,
  getDevice,
  InvalidArgumentError,
  matmul,
  matmul4bit,
  OutOfMemoryError,
  quantize,
  Tensor,
} from "../mod.ts";
import { assertClose } from "./_assert_close.ts";
import { normalValues } from "./_reference.ts";

const device = getDevice();

/** Naive f64 reference of C = alpha * op(A) op(B) + beta * C (row-major). */
function refGemm(
  a: Float32Array,
  b: Float32Array,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  alpha = 1,
  beta = 0,
  c0?: Float32Array,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        s += a[transA ? p * m + i : i * k + p] * b[transB ? j * k + p : p * n + j];
      }
      c[i * n + j] = alpha * s + (beta ? beta * c0![i * n + j] : 0);
    }
  }
  return c;
}

/** One product of random operands, C = 0.5 op(A) op(B) + beta C, checked against {@linkcode refGemm}. */
function checkMatmul(
  [m, n, k]: readonly number[],
  o: {
    transA?: boolean;
    transB?: boolean;
    ab: "f32" | "bf16";
    out: "f32" | "bf16";
    beta?: number;
    seed?: number;
  },
  rel: number,
): void {
  const { transA = false, transB = false, ab, out, beta = -2, seed = 0 } = o;
  const a = normalValues(m * k, seed + m + k), b = normalValues(k * n, seed + n + 3 * k);
  const c0 = normalValues(m * n, seed + 5);
  using ta = Tensor.from(a, { shape: transA ? [k, m] : [m, k], dtype: ab, device });
  using tb = Tensor.from(b, { shape: transB ? [n, k] : [k, n], dtype: ab, device });
  using tc = Tensor.from(c0, { shape: [m, n], dtype: out, device });
  using c0t = Tensor.from(c0, { dtype: out, device });
  matmul(ta, tb, { transA, transB, alpha: 0.5, beta, out: tc });
  const want = refGemm(ta.toFloat32(), tb.toFloat32(), m, n, k, transA, transB, 0.5, beta, c0t.toFloat32());
  assertClose(
    tc.toFloat32(),
    want,
    rel,
    `${ab} -> ${out} ${m}x${n}x${k} tA=${transA} tB=${transB} beta=${beta}`,
  );
}

const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]] as const;

Deno.test("matmul: every transpose, alpha/beta, f32 and bf16, against a float64 reference", () => {
  for (const shape of [[1, 1, 1], [7, 5, 3], [33, 65, 17], [64, 8, 300], [3, 200, 8]]) {
    for (const [transA, transB] of TRANSPOSES) {
      for (const dtype of ["f32", "bf16"] as const) {
        checkMatmul(shape, { transA, transB, ab: dtype, out: dtype }, dtype === "f32" ? 1e-5 : 2e-2);
      }
    }
  }
});

Deno.test("matmul: a decode step's bf16 product (1-4 rows of x against W stored n x k), f32 and bf16 out", () => {
  // On CPUs with AVX512_BF16 these products run in cuda/src/cpu/gemv16.cpp (not oneDNN): rows of W in groups
  // of 4 (n not a multiple: a short last group), k in steps of 32 (the rest masked, odd k included).
  for (const shape of [[1, 4099, 40], [2, 37, 4101], [3, 1000, 35], [4, 513, 64], [1, 262, 127]]) {
    for (const out of ["bf16", "f32"] as const) {
      for (const beta of [0, -2]) {
        checkMatmul(shape, { transB: true, ab: "bf16", out, beta }, out === "f32" ? 1e-5 : 1e-2);
      }
    }
  }
});

Deno.test("matmul: a bf16 product whose f32 copies pass 16 MiB, every transpose (tiles of columns without AVX-512)", () => {
  // Under QLORA_CPU_ISA=avx2 (deno task test:avx2) oneDNN has no bf16 product: it runs as f32 products on f32
  // copies, and a B this large (2,100 x 2,048: 17 MB as f32) in tiles of columns of C, each with its own
  // copies (cuda/src/cpu/gemm.cpp, f32_tile_columns). With AVX-512 the same calls run in bf16.
  for (const [transA, transB] of TRANSPOSES) {
    for (const out of ["bf16", "f32"] as const) {
      checkMatmul([8, 2100, 2048], { transA, transB, ab: "bf16", out }, out === "f32" ? 1e-5 : 1e-2);
    }
  }
});

Deno.test("matmul: f32 inputs into a bf16 output and bf16 into f32, every transpose, small and large", () => {
  // oneDNN has no f32 x f32 -> bf16 product: the CPU computes it itself (a dot-product loop when B is
  // transposed), above and below the size where it hands products to oneDNN.
  for (const shape of [[7, 5, 3], [33, 65, 17], [96, 80, 72], [2, 300, 64], [1, 400, 64]]) {
    for (const [transA, transB] of TRANSPOSES) {
      for (const [ab, out] of [["f32", "bf16"], ["bf16", "f32"]] as const) {
        checkMatmul(shape, { transA, transB, ab, out }, out === "f32" ? 1e-5 : 1e-2);
      }
    }
  }
});

Deno.test({
  name:
    "matmul (CPU): what oneDNN refuses runs on f32 copies counted as workspace; no room is an error that writes nothing",
  ignore: device.backend !== "cpu",
  fn() {
    // f32 x f32 -> bf16 has no oneDNN product: the f32 one runs into an f32 temporary of C, rounded after.
    const [m, n, k] = [96, 80, 72];
    using a = Tensor.from(normalValues(m * k, 11), { shape: [m, k], device });
    using b = Tensor.from(normalValues(k * n, 12), { shape: [n, k], device });
    using c = Tensor.from(normalValues(m * n, 13), { shape: [m, n], dtype: "bf16", device });
    const before = c.toFloat32();
    const start = device.memory();
    device.setMemoryBudget(start.totalCurrent + 4096); // less than the 30 KiB temporary
    try {
      const e = assertThrows(() => matmul(a, b, { transB: true, beta: 1, out: c }), OutOfMemoryError);
      assertStringIncludes(e.message, "no room for its scratch");
      assertEquals(e.details.category, "workspace");
    } finally {
      device.setMemoryBudget(0);
    }
    assertEquals(c.toFloat32(), before, "a refused product wrote nothing");
    assertEquals(device.memory().totalCurrent, start.totalCurrent);
    device.resetPeak();
    matmul(a, b, { transB: true, beta: 1, out: c });
    assert(
      device.memory().peak.workspace - start.current.workspace >= m * n * 4,
      "the f32 temporary is counted",
    );
    const want = refGemm(a.toFloat32(), b.toFloat32(), m, n, k, false, true, 1, 1, before);
    assertClose(c.toFloat32(), want, 1e-2, "after the refusal, with room");
  },
});
if (device.backend !== "cpu") console.log("matmul (CPU) f32 copies: skipped, oneDNN is the CPU backend's");

Deno.test({
  name: "matmul4bit (CPU) at batch 1: a bf16 x is rearranged or widened in workspace the ledger counts",
  ignore: device.backend !== "cpu",
  fn() {
    const [n, k] = [64, 4096];
    using w = Tensor.randn([n, k], { std: 0.02, device });
    using q = quantize(w, { quantType: "nf4", doubleQuant: false });
    const grown = (dtype: "f32" | "bf16") => {
      using x = Tensor.randn([1, k], { dtype, device });
      device.resetPeak();
      const start = device.memory().current.workspace;
      using y = matmul4bit(x, q, { transW: true });
      assertEquals(y.shape, [1, n]);
      return device.memory().peak.workspace - start;
    };
    // A copy of x, 4 bytes a value whatever the CPU: widened to f32 where the f32 kernels run, rearranged
    // (in half of it) for the bf16 dot-product kernel with AVX512_BF16.
    assertEquals(grown("bf16") - grown("f32"), 4 * k);
  },
});

Deno.test({
  name:
    "matmul (CPU): a refused product whose f32 copies would pass 16 MiB runs in tiles of columns, each within 16 MiB",
  ignore: device.backend !== "cpu",
  fn() {
    // oneDNN has no f32 x f32 -> bf16 product; the f32 temporary of this C alone would be 17.2 MB.
    const [m, n, k] = [2100, 2048, 16];
    using a = Tensor.from(normalValues(m * k, 21), { shape: [m, k], device });
    using b = Tensor.from(normalValues(k * n, 22), { shape: [k, n], device });
    using c = Tensor.empty([m, n], { dtype: "bf16", device });
    device.resetPeak();
    const start = device.memory().current.workspace;
    matmul(a, b, { out: c });
    const grew = device.memory().peak.workspace - start;
    assert(grew > 2 ** 20 && grew <= 2 ** 24, `a tile of C in f32, not all of it: ${grew} bytes`);
    assertClose(c.toFloat32(), refGemm(a.toFloat32(), b.toFloat32(), m, n, k, false, false), 1e-2, "tiles");
  },
});

Deno.test("matmul: batches with a shared operand, and beta = 0 ignores NaN in out", () => {
  const [batch, m, n, k] = [3, 4, 5, 6];
  const a = normalValues(batch * m * k, 1), b = normalValues(k * n, 2);
  using ta = Tensor.from(a, { shape: [batch, m, k], device });
  using tb = Tensor.from(b, { shape: [k, n], device });
  using out = Tensor.from(new Float32Array(batch * m * n).fill(NaN), { shape: [batch, m, n], device });
  matmul(ta, tb, { out });
  const got = out.toFloat32();
  for (let i = 0; i < batch; i++) {
    const want = refGemm(a.subarray(i * m * k, (i + 1) * m * k), b, m, n, k, false, false);
    assertClose(got.subarray(i * m * n, (i + 1) * m * n), want, 1e-5, `batch ${i}`);
  }
});

Deno.test("matmul4bit equals dequantize-then-matmul (NF4, FP4, Int4; both directions; f32 and bf16)", () => {
  for (const quantType of ["nf4", "fp4", "int4"] as const) {
    // Rows of x: the fused GEMV (5, 1), the panel GEMM (40 bf16 rows over whole blocks, where the CPU has
    // AVX512_BF16), dequantized tiles (33 rows; k not a multiple of 64).
    for (const [out, inp, m] of [[96, 64, 5], [130, 256, 1], [70, 256, 40], [64, 96, 33]]) {
      using w = Tensor.randn([out, inp], { std: 0.02, seed: out + inp, device });
      using q = quantize(w, { quantType, doubleQuant: quantType === "nf4" });
      using wd = q.dequantize({ dtype: "f32" });
      for (const dtype of ["f32", "bf16"] as const) {
        using x = Tensor.randn([m, inp], { seed: m, dtype, device });
        using x32 = x.cast("f32");
        using y = matmul4bit(x, q, { transW: true });
        using yRef = matmul(x32, wd, { transB: true });
        assertClose(
          y.toFloat32(),
          yRef.toFloat32(),
          dtype === "f32" ? 1e-5 : 2e-2,
          `${quantType} ${dtype} forward`,
        );
        using g = Tensor.randn([m, out], { seed: m + 1, dtype, device });
        using g32 = g.cast("f32");
        using dx = matmul4bit(g, q, { transW: false });
        using dxRef = matmul(g32, wd);
        assertClose(
          dx.toFloat32(),
          dxRef.toFloat32(),
          dtype === "f32" ? 1e-5 : 2e-2,
          `${quantType} ${dtype} backward`,
        );
      }
    }
  }
});

Deno.test("axpby and dropout", () => {
  using x = Tensor.from([1, 2, 3, 4], { device });
  using y = Tensor.from([1, 1, 1, 1], { device });
  axpby(2, x, 3, y);
  assertEquals([...y.toFloat32()], [5, 7, 9, 11]);
  using ones = Tensor.from(new Float32Array(100_000).fill(1), { device });
  using d = dropout(ones, 0.25, 11);
  const v = d.toFloat32();
  const kept = v.filter((e) => e !== 0);
  assert(kept.every((e) => Math.abs(e - 1 / 0.75) < 1e-6));
  assertAlmostEquals(kept.length / v.length, 0.75, 0.01);
  using again = dropout(ones, 0.25, 11);
  assertEquals(again.toArray(), d.toArray(), "same seed, same mask");
  assertThrows(() => dropout(ones, 1, 0), InvalidArgumentError);
});

Deno.test("dropout: the backward pass is the same call on the gradient (same mask), in place allowed", () => {
  using x = Tensor.from(normalValues(4096, 9), { device });
  using y = dropout(x, 0.3, 5);
  using g = Tensor.from(new Float32Array(4096).fill(1), { device });
  dropout(g, 0.3, 5, g); // in place: out is the input
  const yv = y.toFloat32(), gv = g.toFloat32(), xv = x.toFloat32();
  let dropped = 0;
  for (let i = 0; i < yv.length; i++) {
    if (gv[i] === 0) {
      dropped++;
      assertEquals(yv[i], 0, `index ${i} is dropped in both passes`);
    } else {
      assertAlmostEquals(yv[i], xv[i] * gv[i], 1e-5 * (1 + Math.abs(xv[i])), `index ${i}`);
    }
  }
  assertAlmostEquals(dropped / yv.length, 0.3, 0.03);
  using z = dropout(x, 0.3, 6);
  assert(z.toFloat32().some((v, i) => (v === 0) !== (yv[i] === 0)), "another seed, another mask");
  using other = Tensor.empty([4096], { dtype: "bf16", device });
  assertThrows(() => dropout(x, 0.3, 5, other), InvalidArgumentError, "bf16");
});

Deno.test("fillUniform: values in [low, high) with the expected mean, deterministic per seed", () => {
  using t = Tensor.empty([1 << 16], { device });
  fillUniform(t, -3, 1, 4);
  const v = t.toFloat32();
  assert(v.every((x) => x >= -3 && x < 1));
  assertAlmostEquals(v.reduce((s, x) => s + x, 0) / v.length, -1, 0.03);
  using u = Tensor.empty([1 << 16], { device });
  fillUniform(u, -3, 1, 4);
  assertEquals(u.toArray(), t.toArray());
  fillUniform(u, -3, 1, 5);
  assert(u.toFloat32().some((x, i) => x !== v[i]));
  using bf = Tensor.empty([64], { dtype: "bf16", device });
  fillUniform(bf, 0, 0.5, 1);
  assert(bf.toFloat32().every((x) => x >= 0 && x <= 0.5));
  assertThrows(() => fillUniform(t, 1, -1, 0), InvalidArgumentError);
  assertThrows(() => fillUniform(t, 0, 1, -1), InvalidArgumentError);
  using i = Tensor.empty([4], { dtype: "i32", device });
  assertThrows(() => fillUniform(i, 0, 1, 0), InvalidArgumentError);
});

Deno.test("matmul and matmul4bit refuse mismatched shapes, dtypes and devices before any native call", () => {
  using a = Tensor.zeros([2, 3], { device }), b = Tensor.zeros([4, 5], { device });
  assertThrows(() => matmul(a, b), InvalidArgumentError, "inner dimensions");
  using c = Tensor.zeros([3, 2], { dtype: "bf16", device });
  assertThrows(() => matmul(a, c), InvalidArgumentError, "bf16");
  using w = Tensor.randn([64, 64], { device });
  using q = quantize(w);
  using x = Tensor.zeros([2, 32], { device });
  assertThrows(() => matmul4bit(x, q, { transW: true }), InvalidArgumentError, "op(W)");
  const before = device.memory().totalCurrent;
  using y = Tensor.zeros([2, 3], { device });
  using z = Tensor.zeros([2, 4], { device });
  assertThrows(() => axpby(1, y, 1, z), InvalidArgumentError);
  assertEquals(device.memory().totalCurrent, before + y.byteLength + z.byteLength);
});
