import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  dynamicMap,
  getDevice,
  InvalidArgumentError,
  matmul4bit,
  NonFiniteError,
  quantizationError,
  quantize,
  quantizeAsync,
  quantMap,
  type QuantType,
  Tensor,
} from "../mod.ts";
import {
  assertBitEqual,
  FP4,
  FP4_THRESHOLDS,
  INT4,
  NF4,
  normalValues,
  referenceDequantize,
  referenceDoubleQuantize,
  referenceQuantize,
} from "./_reference.ts";

const device = getDevice();
const TYPES: QuantType[] = ["nf4", "fp4", "int4"];

function roundTrip(x: Float32Array, quantType: QuantType, blocksize = 64, doubleQuant = false) {
  using t = Tensor.from(x, { device });
  using q = quantize(t, { quantType, blocksize, doubleQuant });
  using r = q.dequantize({ dtype: "f32" });
  return {
    packed: q.packed.toArray() as Uint8Array,
    absmax: q.absmax ? (q.absmax.toArray() as Float32Array) : null,
    restored: r.toFloat32(),
    bits: q.bitsPerParameter,
  };
}

Deno.test("quant maps: NF4 is the QLoRA table, FP4 and Int4 as documented", () => {
  assertEquals([...quantMap("nf4", device)], NF4);
  assertEquals([...quantMap("fp4", device)], [...FP4, ...FP4.map((v) => -v)]);
  assertEquals([...quantMap("int4", device)], INT4);
  const nf4 = quantMap("nf4", device);
  for (let i = 1; i < 16; i++) assert(nf4[i] > nf4[i - 1], "NF4 codes are sorted");
  assertEquals(nf4[7], 0, "NF4 has an exact zero");
});

Deno.test("quantize: codes and absmax match the reference bit for bit (every type, odd sizes, blocksizes)", () => {
  for (const quantType of TYPES) {
    for (const [n, blocksize] of [[1000, 64], [4097, 32], [333, 128], [5000, 4096], [63, 64]]) {
      const x = normalValues(n, n + blocksize, 0.5);
      const got = roundTrip(x, quantType, blocksize);
      const want = referenceQuantize(x, quantType, blocksize);
      assertBitEqual(got.absmax!, want.absmax, `${quantType} n=${n} bs=${blocksize} absmax`);
      assertBitEqual(got.packed, want.packed, `${quantType} n=${n} bs=${blocksize} packed`);
      const table = quantMap(quantType, device);
      assertEquals(got.restored, referenceDequantize(want.packed, want.absmax, n, table, blocksize));
    }
  }
});

Deno.test("quantize: first value of a pair in the high nibble, odd tail padded with 0", () => {
  // Block [1, -1, 0]: absmax 1; NF4 codes 15, 0, 7 -> bytes 0xF0, 0x70.
  const got = roundTrip(new Float32Array([1, -1, 0]), "nf4");
  assertEquals([...got.packed], [0xf0, 0x70]);
  assertEquals([...got.restored], [1, -1, 0]);
});

Deno.test("quantize: a value exactly on a midpoint goes to the lower code", () => {
  const nf4Mid = Math.fround((NF4[10] + NF4[11]) / 2);
  const int4Mid = Math.fround((INT4[12] + INT4[13]) / 2);
  // absmax 1 makes the normalised value the value itself.
  assertEquals(roundTrip(new Float32Array([1, nf4Mid]), "nf4").packed[0] & 15, 10);
  assertEquals(roundTrip(new Float32Array([1, int4Mid]), "int4").packed[0] & 15, 12);
  // FP4 thresholds are bitsandbytes' constants: exactly on 0.4166667 -> magnitude 1/3 (code 4).
  assertEquals(roundTrip(new Float32Array([1, FP4_THRESHOLDS[4]]), "fp4").packed[0] & 15, 4);
  assertEquals(roundTrip(new Float32Array([1, -FP4_THRESHOLDS[4]]), "fp4").packed[0] & 15, 4 | 8);
  // Just above the midpoint goes up.
  const above = new Float32Array([1, nf4Mid + 1e-6]);
  assertEquals(roundTrip(above, "nf4").packed[0] & 15, 11);
});

Deno.test("quantize: each value gets its nearest code", () => {
  for (const quantType of TYPES) {
    const x = normalValues(4096, 7);
    const { restored, absmax } = roundTrip(x, quantType);
    const table = [...quantMap(quantType, device)];
    for (let i = 0; i < x.length; i++) {
      const a = absmax![Math.floor(i / 64)];
      const v = x[i] / a;
      const best = Math.min(...table.map((c) => Math.abs(c - v)));
      assert(Math.abs(restored[i] / a - v) <= best + 1e-6, `${quantType}[${i}]: not the nearest code`);
    }
  }
});

Deno.test("quantize: partial and all-zero blocks", () => {
  const x = new Float32Array(64 + 64 + 10);
  x.fill(0, 0, 64); // zero block
  for (let i = 64; i < 128; i++) x[i] = (i - 96) / 32;
  for (let i = 128; i < x.length; i++) x[i] = 100 * (i - 133); // partial block with its own absmax
  for (const quantType of TYPES) {
    const got = roundTrip(x, quantType);
    assertEquals(got.absmax![0], 0);
    assertEquals(got.absmax![2], 500);
    for (let i = 0; i < 64; i++) assert(got.restored[i] === 0 && !Number.isNaN(got.restored[i]));
    assert(got.restored.every(Number.isFinite));
  }
});

Deno.test("quantize: round-trip error on N(0,1) at blocksize 64 matches bitsandbytes' figures", () => {
  const x = normalValues(1 << 20, 42);
  const nf4 = quantizationError(x, roundTrip(x, "nf4").restored).meanAbsolute;
  const fp4 = quantizationError(x, roundTrip(x, "fp4").restored).meanAbsolute;
  const int4 = quantizationError(x, roundTrip(x, "int4").restored).meanAbsolute;
  assertAlmostEquals(nf4, 0.073, 0.002);
  assertAlmostEquals(fp4, 0.097, 0.002);
  assert(nf4 < int4 && nf4 < fp4, `NF4 (${nf4}) beats Int4 (${int4}) and FP4 (${fp4}) on normal data`);
});

Deno.test("quantize: bf16 and f16 inputs and outputs agree with f32", () => {
  const x32 = normalValues(3000, 9);
  using a = Tensor.from(x32, { device });
  using b16 = a.cast("bf16");
  using h16 = a.cast("f16");
  using b32 = b16.cast("f32");
  using qb = quantize(b16, { doubleQuant: false });
  using qref = quantize(b32, { doubleQuant: false });
  assertEquals(qb.packed.toArray(), qref.packed.toArray(), "bf16 input = its f32 values");
  using qh = quantize(h16, { doubleQuant: false });
  using h32 = h16.cast("f32");
  using qhref = quantize(h32, { doubleQuant: false });
  assertEquals(qh.packed.toArray(), qhref.packed.toArray(), "f16 input = its f32 values");
  using rf = qref.dequantize({ dtype: "f32" });
  for (const dtype of ["bf16", "f16"] as const) {
    using r = qref.dequantize({ dtype });
    using back = rf.cast(dtype);
    assertEquals(r.toArray(), back.toArray(), `${dtype} output = rounded f32 output`);
  }
  assertEquals(qb.dtype, "bf16", "remembers the original dtype");
});

Deno.test("double quantization: 4.127 bits per parameter and codes match the reference", () => {
  using x = Tensor.randn([4096, 1024], { seed: 5, std: 0.02, device });
  using plain = quantize(x, { doubleQuant: false });
  using dq = quantize(x);
  assertAlmostEquals(plain.bitsPerParameter, 4.5, 1e-9);
  assertAlmostEquals(dq.bitsPerParameter, 4 + 8 / 64 + 32 / (64 * 256), 1e-5);
  assertAlmostEquals(dq.bitsPerParameter, 4.127, 5e-4);
  const absmax = plain.absmax!.toArray() as Float32Array;
  const want = referenceDoubleQuantize(absmax, dynamicMap(device), 256);
  assertEquals(dq.nested!.offset, want.offset);
  assertEquals(dq.nested!.codes.toArray(), want.codes);
  assertEquals(dq.nested!.absmax.toArray(), want.nested);
  // The restored constants are close to the originals, and so are the restored weights.
  using c = dq.constants();
  const restored = c.toFloat32();
  const rel = quantizationError(absmax, restored).relativeRms;
  assert(rel < 0.01, `constants restored within 1% RMS (got ${rel})`);
  using r1 = plain.dequantize({ dtype: "f32" });
  using r2 = dq.dequantize({ dtype: "f32" });
  const xs = x.toFloat32();
  const e1 = quantizationError(xs, r1.toFloat32()).meanAbsolute;
  const e2 = quantizationError(xs, r2.toFloat32()).meanAbsolute;
  assert(e2 < e1 * 1.01, `double quantization costs < 1% error (${e1} -> ${e2})`);
});

Deno.test("dynamic map: 256 sorted values in [-1, 1] with 0 and 1", () => {
  const map = dynamicMap(device);
  assertEquals(map.length, 256);
  for (let i = 1; i < 256; i++) assert(map[i] > map[i - 1]);
  assert(map.includes(0));
  assertEquals(map[255], 1);
  assert(map[0] > -1 && map[0] < -0.99);
});

Deno.test("quantizeAsync and dequantizeAsync equal the synchronous calls", async () => {
  using x = Tensor.randn([(1 << 22) + 4096 + 10], { seed: 11, device });
  using a = quantize(x);
  let calls = 0;
  using b = await quantizeAsync(x, { onProgress: () => calls++ });
  assertEquals(calls, 2);
  assertEquals(a.packed.toArray(), b.packed.toArray());
  assertEquals(a.nested!.codes.toArray(), b.nested!.codes.toArray());
  using r1 = a.dequantize();
  using r2 = await b.dequantizeAsync();
  assertEquals(r1.toArray(), r2.toArray());
});

Deno.test("quantize: NaN or Inf is a clear error, never silent garbage", () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    const x = normalValues(300, 3);
    x[130] = bad;
    using t = Tensor.from(x, { device });
    const before = device.memory().totalCurrent;
    const e = assertThrows(() => quantize(t), NonFiniteError);
    assert(e.message.includes("x[130]"), e.message);
    assertEquals(device.memory().totalCurrent, before, "nothing leaks on failure");
  }
});

Deno.test("quantize: bad options are refused before any native call", () => {
  using x = Tensor.randn([128], { device });
  assertThrows(() => quantize(x, { blocksize: 48 }), InvalidArgumentError, "power of two");
  assertThrows(() => quantize(x, { blocksize: 8192 }), InvalidArgumentError);
  assertThrows(() => quantize(x, { quantType: "nf5" as QuantType }), InvalidArgumentError, "nf5");
  assertThrows(() => quantize(x, { nestedBlocksize: 100 }), InvalidArgumentError);
  using u = Tensor.from(new Uint8Array(64), { device });
  assertThrows(() => quantize(u), InvalidArgumentError, "f32, bf16 or f16");
  using q = quantize(x);
  assertThrows(() => q.dequantize({ dtype: "i32" as "f32" }), InvalidArgumentError);
});

// ---- the vector kernels (AVX-512, AVX2 with QLORA_CPU_ISA=avx2) against the plain reference ----------------

/** Dequantized values of q in `dtype` against the reference (f32 bit for bit; 16-bit = the f32 result rounded). */
function checkDequantize(q: ReturnType<typeof quantize>, n: number, what: string, halves = true) {
  using c = q.constants();
  const want = referenceDequantize(
    q.packed.toArray() as Uint8Array,
    c.toFloat32(),
    n,
    quantMap(q.quantType, device),
    q.blocksize,
  );
  using got = q.dequantize({ dtype: "f32" });
  assertBitEqual(got.toFloat32(), want, `${what} -> f32`);
  if (!halves) return;
  using want32 = Tensor.from(want, { device });
  for (const dtype of ["bf16", "f16"] as const) {
    using got16 = q.dequantize({ dtype });
    using want16 = want32.cast(dtype);
    assertBitEqual(got16.toArray() as Uint16Array, want16.toArray() as Uint16Array, `${what} -> ${dtype}`);
  }
}

Deno.test("dequantize: every type, plain and double-quantized, to f32/bf16/f16, ragged sizes, bit for bit", () => {
  const shapes = [[1, 64], [33, 32], [95, 32], [4097, 32], [333, 128], [5000, 4096], [70001, 64], [
    65536 + 3,
    256,
  ]];
  for (const quantType of TYPES) {
    for (const doubleQuant of [false, true]) {
      for (const [n, blocksize] of shapes) {
        using x = Tensor.from(normalValues(n, n + blocksize, 0.5), { device });
        using q = quantize(x, { quantType, blocksize, doubleQuant });
        checkDequantize(q, n, `${quantType}${doubleQuant ? "+dq" : ""} n=${n} bs=${blocksize}`);
      }
    }
  }
});

Deno.test("dequantize: f32 outputs over 32 MiB (streamed, many tasks) equal the reference", () => {
  const n = (8 << 20) + 37; // 32 MiB of f32 and a ragged tail
  using x = Tensor.randn([n], { seed: 11, std: 0.02, device });
  for (const [quantType, doubleQuant] of [["nf4", true], ["fp4", false]] as const) {
    using q = quantize(x, { quantType, doubleQuant });
    checkDequantize(q, n, `${quantType}${doubleQuant ? "+dq" : ""} n=${n}`, false);
  }
});

Deno.test("quantize: values on, just below and just above every threshold, f32 and bf16 inputs, bit for bit", () => {
  const bits = new Uint32Array(1), f = new Float32Array(bits.buffer);
  const step = (v: number, d: number) => { // the next f32 after v towards +inf (d = 1) or -inf (d = -1)
    f[0] = v;
    if (v === 0) return d * 1e-45;
    bits[0] += (v > 0) === (d > 0) ? 1 : -1;
    return f[0];
  };
  for (const quantType of TYPES) {
    const table = quantMap(quantType, device);
    const thresholds = quantType === "fp4"
      ? FP4_THRESHOLDS.flatMap((t) => [t, -t])
      : Array.from({ length: 15 }, (_, k) => Math.fround((table[k] + table[k + 1]) / 2));
    const values = thresholds.flatMap((t) => [t, step(t, 1), step(t, -1)]);
    values.push(0, -0, 1e-45, -1e-45, 1, -1, step(1, -1), step(-1, 1), ...table);
    for (const [blocksize, scale] of [[32, 1], [64, 3.7], [256, 1e-3]]) {
      // Blocks of blocksize values, absmax 1 (first value), then the values: x * (1 / absmax) is the value.
      const x: number[] = [];
      for (let i = 0; i < values.length; i += blocksize - 1) {
        const block = [1, ...values.slice(i, i + blocksize - 1)];
        while (block.length < blocksize) block.push(0.5);
        x.push(...block.map((v) => v * scale));
      }
      x.push(0.25, -0.75, 0.125); // a ragged last block
      const x32 = new Float32Array(x);
      using t32 = Tensor.from(x32, { device });
      using t16 = t32.cast("bf16");
      using back = t16.cast("f32");
      for (const [input, values32] of [[t32, x32], [t16, back.toFloat32()]] as const) {
        using q = quantize(input, { quantType, blocksize, doubleQuant: false });
        const want = referenceQuantize(values32, quantType, blocksize);
        const what = `${quantType} ${input.dtype} bs=${blocksize} scale=${scale}`;
        assertBitEqual(q.absmax!.toArray() as Float32Array, want.absmax, `${what} absmax`);
        assertBitEqual(q.packed.toArray() as Uint8Array, want.packed, `${what} packed`);
      }
    }
  }
});

Deno.test("4-bit GEMM tiles (more than 8 rows) decode odd starts and ragged rows as dequantize does", () => {
  // One-hot rows of X pick rows (transW false: W is k x n, C = X W) or columns (transW true: W is n x k,
  // C = X W^T) of W exactly, so C holds the values the tiles decoded, row ranges starting at odd values.
  const [n, k, m] = [33, 65, 12];
  for (const [quantType, doubleQuant] of [["nf4", false], ["fp4", true], ["int4", true]] as const) {
    for (const transW of [false, true]) {
      const shape = transW ? [n, k] : [k, n];
      using w = Tensor.randn(shape, { seed: 5, std: 0.5, device });
      using q = quantize(w, { quantType, doubleQuant, blocksize: 32 });
      for (const dtype of ["f32", "bf16"] as const) {
        using wd = q.dequantize({ dtype });
        const wv = wd.toFloat32();
        const pick = Array.from({ length: m }, (_, r) => (r * 7 + 3) % k);
        const xs = new Float32Array(m * k);
        pick.forEach((p, r) => xs[r * k + p] = 1);
        using x32 = Tensor.from(xs, { device, shape: [m, k] });
        using x = x32.cast(dtype);
        using c = matmul4bit(x, q, { transW });
        const got = c.toFloat32();
        for (let r = 0; r < m; r++) {
          for (let j = 0; j < n; j++) {
            const want = transW ? wv[j * k + pick[r]] : wv[pick[r] * n + j];
            if (got[r * n + j] !== want) {
              throw new Error(
                `${quantType} transW ${transW} ${dtype}: C[${r}, ${j}] = ${got[r * n + j]}, W gives ${want}`,
              );
            }
          }
        }
      }
    }
  }
});
