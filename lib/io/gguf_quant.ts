/**
 * The tensor types of GGUF files that this library writes and reads, with llama.cpp's block quantizers
 * written out as plain loops, each beside its dequantizer:
 *
 * - `F32`, `F16`, `BF16`: one little-endian float per element.
 * - `Q8_0`: blocks of 32 elements, an f16 scale `d` then 32 int8 `q`; `x ≈ d · q`, `d = max|x| / 127`.
 * - `Q4_0`: blocks of 32, an f16 scale then 16 bytes of 4-bit codes; `x ≈ d · (q - 8)`. The scale is the
 *   block's largest-magnitude element divided by -8 (so that element is exactly code 0). Byte j holds
 *   element j in its low nibble and element j + 16 in its high nibble.
 * - `IQ4_NL`: blocks of 32 laid out as Q4_0, but a code indexes a fixed non-linear table of 16 int8 values
 *   ({@linkcode IQ4_NL_VALUES}, denser near zero, for bell-shaped weights); `x ≈ d · table[q]`. The scale is
 *   searched as llama.cpp's quantizer does (without an importance matrix): starting from
 *   `max / 127`, 15 candidate scales are tried and the one with the least weighted squared error (weights
 *   `x²`) is kept, by least squares for the codes it gives.
 *
 * Quantizers take the elements of whole rows (a multiple of 32 for the block types) and return the bytes
 * of the GGUF tensor data; dequantizers do the reverse.
 *
 * @module
 */

import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";

/** A GGUF tensor type this library writes and dequantizes. */
export type GGMLType = "F32" | "F16" | "BF16" | "Q8_0" | "Q4_0" | "IQ4_NL";

/** How a {@linkcode GGMLType} is stored: its `ggml_type` number, elements per block and bytes per block. */
export interface GGMLTypeInfo {
  /** The `ggml_type` enum value in the file. */
  id: number;
  /** Elements per block (1 for the float types). */
  blockSize: number;
  /** Bytes per block. */
  blockBytes: number;
}

/** The types this library handles, by name. */
export const GGML_TYPES: Readonly<Record<GGMLType, GGMLTypeInfo>> = {
  F32: { id: 0, blockSize: 1, blockBytes: 4 },
  F16: { id: 1, blockSize: 1, blockBytes: 2 },
  Q4_0: { id: 2, blockSize: 32, blockBytes: 18 },
  Q8_0: { id: 8, blockSize: 32, blockBytes: 34 },
  IQ4_NL: { id: 20, blockSize: 32, blockBytes: 18 },
  BF16: { id: 30, blockSize: 1, blockBytes: 2 },
};

// Every ggml_type name by number (ggml.h), so that a reader can name types it cannot dequantize.
const ALL_TYPE_NAMES = [
  "F32",
  "F16",
  "Q4_0",
  "Q4_1",
  "Q4_2",
  "Q4_3",
  "Q5_0",
  "Q5_1",
  "Q8_0",
  "Q8_1",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
  "Q8_K",
  "IQ2_XXS",
  "IQ2_XS",
  "IQ3_XXS",
  "IQ1_S",
  "IQ4_NL",
  "IQ3_S",
  "IQ2_S",
  "IQ4_XS",
  "I8",
  "I16",
  "I32",
  "I64",
  "F64",
  "IQ1_M",
  "BF16",
  "Q4_0_4_4",
  "Q4_0_4_8",
  "Q4_0_8_8",
  "TQ1_0",
  "TQ2_0",
  "IQ4_NL_4_4",
  "IQ4_NL_4_8",
  "IQ4_NL_8_8",
  "MXFP4",
  "NVFP4",
  "Q1_0",
  "Q2_0",
]; // deno-fmt-ignore

/**
 * The name of a `ggml_type` number (`"Q4_K"` for 12), or `"type N"` for a number ggml does not define.
 *
 * @example
 * ```ts
 * import { ggmlTypeName } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([ggmlTypeName(20), ggmlTypeName(12), ggmlTypeName(999)], ["IQ4_NL", "Q4_K", "type 999"]);
 * ```
 */
export function ggmlTypeName(id: number): string {
  return ALL_TYPE_NAMES[id] ?? `type ${id}`;
}

/**
 * The type this library handles with the `ggml_type` number `id`, or undefined.
 *
 * @example
 * ```ts
 * import { ggmlTypeOf } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([ggmlTypeOf(30), ggmlTypeOf(12)], ["BF16", undefined]);
 * ```
 */
export function ggmlTypeOf(id: number): GGMLType | undefined {
  return (Object.keys(GGML_TYPES) as GGMLType[]).find((t) => GGML_TYPES[t].id === id);
}

/**
 * Bytes of a tensor of `type` and row-major `shape` (the last dimension is the row, which block types
 * split into blocks of 32: it must be a multiple of 32).
 *
 * @throws {InvalidArgumentError} when the row is not a whole number of blocks.
 *
 * @example
 * ```ts
 * import { ggmlTensorBytes } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ggmlTensorBytes("Q4_0", [4096, 4096]), 4096 * 128 * 18); // 4.5 bits per weight
 * assertEquals(ggmlTensorBytes("F32", [8]), 32);
 * ```
 */
export function ggmlTensorBytes(type: GGMLType, shape: readonly number[]): number {
  const { blockSize, blockBytes } = GGML_TYPES[type];
  const row = shape.at(-1) ?? 1;
  if (row % blockSize !== 0) {
    throw new InvalidArgumentError(
      `Cannot store [${shape.join(", ")}] as ${type}: rows of ${row} are not a multiple of ${blockSize}`,
    );
  }
  return (shape.reduce((a, b) => a * b, 1) / blockSize) * blockBytes;
}

/** The 16 values of IQ4_NL's codes (ggml's `kvalues_iq4nl`), scaled by each block's `d`. */
export const IQ4_NL_VALUES: readonly number[] = Object.freeze([
  -127,
  -104,
  -83,
  -65,
  -49,
  -35,
  -22,
  -10,
  1,
  13,
  25,
  38,
  53,
  69,
  89,
  113,
]);

const QK = 32;
const fr = Math.fround;

function checkBlocks(values: ArrayLike<number>, type: string): number {
  if (values.length % QK !== 0) {
    throw new InvalidArgumentError(
      `Cannot quantize to ${type}: ${values.length} elements are not a whole number of blocks of ${QK}`,
    );
  }
  return values.length / QK;
}

function checkBytes(bytes: Uint8Array, type: GGMLType): number {
  const { blockBytes, blockSize } = GGML_TYPES[type];
  if (bytes.length % blockBytes !== 0) {
    throw new InvalidArgumentError(
      `Cannot dequantize ${type}: ${bytes.length} bytes are not a whole number of ${blockBytes}-byte blocks`,
    );
  }
  return (bytes.length / blockBytes) * blockSize;
}

/** Writes each block's f16 scale (little-endian) at the start of its block. */
function putScales(out: Uint8Array, scales: Float32Array, blockBytes: number): void {
  const half = f32ToF16(scales);
  for (let b = 0; b < half.length; b++) {
    out[b * blockBytes] = half[b] & 0xff;
    out[b * blockBytes + 1] = half[b] >> 8;
  }
}

/** Each block's f16 scale, widened. */
function getScales(bytes: Uint8Array, blockBytes: number): Float32Array {
  const n = bytes.length / blockBytes;
  const half = new Uint16Array(n);
  for (let b = 0; b < n; b++) half[b] = bytes[b * blockBytes] | (bytes[b * blockBytes + 1] << 8);
  return f16ToF32(half);
}

/** C's `roundf`: halves away from zero. */
function roundHalfAway(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/**
 * Q8_0 blocks of `values` (a multiple of 32 elements): per block `d = max|x| / 127` (as f16) and
 * `q = round(x / d)` as int8.
 *
 * @example
 * ```ts
 * import { dequantizeQ8_0, quantizeQ8_0 } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const x = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 8);
 * const bytes = quantizeQ8_0(x);
 * assertEquals(bytes.length, 34);
 * assertEquals(dequantizeQ8_0(bytes).length, 32);
 * ```
 */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  const nb = checkBlocks(values, "Q8_0");
  const out = new Uint8Array(nb * 34);
  const q = new Int8Array(out.buffer);
  const scales = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(values[b * QK + j]));
    const d = fr(amax / 127);
    const id = d ? fr(1 / d) : 0;
    scales[b] = d;
    for (let j = 0; j < QK; j++) q[b * 34 + 2 + j] = roundHalfAway(fr(values[b * QK + j] * id));
  }
  putScales(out, scales, 34);
  return out;
}

/**
 * The elements of Q8_0 blocks: `d · q`.
 *
 * @example
 * ```ts
 * import { dequantizeQ8_0 } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const block = new Uint8Array(34);
 * block.set([0x00, 0x38]); // d = 0.5 as f16
 * block[2] = 3;
 * block[3] = 0xfe; // -2
 * assertEquals([...dequantizeQ8_0(block).slice(0, 3)], [1.5, -1, 0]);
 * ```
 */
export function dequantizeQ8_0(bytes: Uint8Array): Float32Array {
  const n = checkBytes(bytes, "Q8_0");
  const d = getScales(bytes, 34);
  const q = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  const out = new Float32Array(n);
  for (let b = 0; b < d.length; b++) {
    for (let j = 0; j < QK; j++) out[b * QK + j] = q[b * 34 + 2 + j] * d[b];
  }
  return out;
}

/**
 * Q4_0 blocks of `values`: per block `d = m / -8` where `m` is the element of largest magnitude, codes
 * `q = min(15, trunc(x / d + 8.5))`; byte j of a block holds element j (low nibble) and j + 16 (high).
 *
 * @example
 * ```ts
 * import { dequantizeQ4_0, quantizeQ4_0 } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const x = Float32Array.from({ length: 32 }, (_, i) => (i % 16) - 8); // multiples of d = 1
 * assertEquals(dequantizeQ4_0(quantizeQ4_0(x)), x);
 * ```
 */
export function quantizeQ4_0(values: Float32Array): Uint8Array {
  const nb = checkBlocks(values, "Q4_0");
  const out = new Uint8Array(nb * 18);
  const scales = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    let amax = 0, max = 0;
    for (let j = 0; j < QK; j++) {
      const v = values[b * QK + j];
      if (amax < Math.abs(v)) amax = Math.abs(v), max = v;
    }
    const d = fr(max / -8);
    const id = d ? fr(1 / d) : 0;
    scales[b] = d;
    for (let j = 0; j < QK / 2; j++) {
      const lo = Math.min(15, Math.trunc(fr(fr(values[b * QK + j] * id) + 8.5)));
      const hi = Math.min(15, Math.trunc(fr(fr(values[b * QK + 16 + j] * id) + 8.5)));
      out[b * 18 + 2 + j] = lo | (hi << 4);
    }
  }
  putScales(out, scales, 18);
  return out;
}

/**
 * The elements of Q4_0 blocks: `d · (q - 8)`.
 *
 * @example
 * ```ts
 * import { dequantizeQ4_0 } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const block = new Uint8Array(18);
 * block.set([0x00, 0x3c]); // d = 1
 * block[2] = 0xf0; // element 0: 0 - 8, element 16: 15 - 8
 * const x = dequantizeQ4_0(block);
 * assertEquals([x[0], x[16]], [-8, 7]);
 * ```
 */
export function dequantizeQ4_0(bytes: Uint8Array): Float32Array {
  return dequantize4(bytes, "Q4_0", (q) => q - 8);
}

function dequantize4(bytes: Uint8Array, type: GGMLType, value: (q: number) => number): Float32Array {
  const n = checkBytes(bytes, type);
  const d = getScales(bytes, 18);
  const out = new Float32Array(n);
  for (let b = 0; b < d.length; b++) {
    for (let j = 0; j < QK / 2; j++) {
      const byte = bytes[b * 18 + 2 + j];
      out[b * QK + j] = value(byte & 15) * d[b];
      out[b * QK + 16 + j] = value(byte >> 4) * d[b];
    }
  }
  return out;
}

const TABLE = Int8Array.from(IQ4_NL_VALUES);

/** ggml's `best_index_int8`: the index of the table value nearest x (ties to the upper one). */
function nearestIndex(x: number): number {
  const v = TABLE;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  let lo = 0, hi = 15;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (x < v[mid]) hi = mid;
    else lo = mid;
  }
  return x - v[hi - 1] < v[hi] - x ? hi - 1 : hi;
}

/** Σ w·q·x and Σ w·q² of a fit, as `fit` leaves them. */
const sums = new Float64Array(2);

/** Σ w·q·x and Σ w·q² (f32 sums, as ggml) of the codes `1/d` gives one block (into `sums`), the codes into `codes`. */
function fit(x: Float32Array, w: Float32Array, id: number, codes?: Uint8Array): void {
  let sumqx = 0, sumq2 = 0;
  for (let j = 0; j < QK; j++) {
    const l = nearestIndex(fr(id * x[j]));
    if (codes) codes[j] = l;
    const q = TABLE[l], wq = fr(w[j] * q);
    sumqx = fr(sumqx + fr(wq * x[j]));
    sumq2 = fr(sumq2 + fr(wq * q));
  }
  sums[0] = sumqx;
  sums[1] = sumq2;
}

/**
 * IQ4_NL blocks of `values`: codes index {@linkcode IQ4_NL_VALUES}; the scale is searched as llama.cpp's
 * `quantize_iq4_nl` does without an importance matrix (15 candidates around `max / 127`, each fitted by
 * weighted least squares with weights `x²`, the best kept), then every code is the table value nearest
 * `x / d`. Same nibble layout as Q4_0.
 *
 * @example
 * ```ts
 * import { dequantizeIQ4_NL, IQ4_NL_VALUES, quantizeIQ4_NL } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const x = Float32Array.from({ length: 32 }, (_, i) => IQ4_NL_VALUES[i % 16] / 64); // d = 1/64 fits exactly
 * assertEquals(dequantizeIQ4_NL(quantizeIQ4_NL(x)), x);
 * ```
 */
export function quantizeIQ4_NL(values: Float32Array): Uint8Array {
  const nb = checkBlocks(values, "IQ4_NL");
  const out = new Uint8Array(nb * 18);
  const scales = new Float32Array(nb);
  const w = new Float32Array(QK), codes = new Uint8Array(QK);
  const v0 = IQ4_NL_VALUES[0];
  for (let b = 0; b < nb; b++) {
    const x = values.subarray(b * QK, (b + 1) * QK);
    let amax = 0, max = 0;
    for (let j = 0; j < QK; j++) {
      w[j] = fr(x[j] * x[j]);
      if (Math.abs(x[j]) > amax) amax = Math.abs(x[j]), max = x[j];
    }
    let d = 0;
    if (amax >= 1e-15) {
      d = fr(-max / v0);
      fit(x, w, fr(1 / d));
      d = sums[1] > 0 ? fr(sums[0] / sums[1]) : 0;
      let best = fr(d * sums[0]);
      for (let itry = -7; itry <= 7; itry++) {
        fit(x, w, fr((itry + v0) / max));
        const sumqx = sums[0], sumq2 = sums[1];
        if (sumq2 > 0 && fr(sumqx * sumqx) > fr(best * sumq2)) {
          d = fr(sumqx / sumq2);
          best = fr(d * sumqx);
        }
      }
    }
    scales[b] = d;
    fit(x, w, d ? fr(1 / d) : 0, codes);
    for (let j = 0; j < QK / 2; j++) out[b * 18 + 2 + j] = codes[j] | (codes[j + 16] << 4);
  }
  putScales(out, scales, 18);
  return out;
}

/**
 * The elements of IQ4_NL blocks: `d · IQ4_NL_VALUES[q]`.
 *
 * @example
 * ```ts
 * import { dequantizeIQ4_NL } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const block = new Uint8Array(18);
 * block.set([0x00, 0x3c]); // d = 1
 * block[2] = 0xf0; // element 0: code 0, element 16: code 15
 * const x = dequantizeIQ4_NL(block);
 * assertEquals([x[0], x[16]], [-127, 113]);
 * ```
 */
export function dequantizeIQ4_NL(bytes: Uint8Array): Float32Array {
  return dequantize4(bytes, "IQ4_NL", (q) => IQ4_NL_VALUES[q]);
}

function asBytes(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The tensor data of `values` stored as `type` (floats rounded to nearest even, blocks quantized).
 *
 * @example
 * ```ts
 * import { decodeTensor, encodeTensor } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * const x = new Float32Array([1, -2.5, 0.1]);
 * assertEquals(encodeTensor("BF16", x).length, 6);
 * assertEquals(decodeTensor("F32", encodeTensor("F32", x)), x);
 * ```
 */
export function encodeTensor(type: GGMLType, values: Float32Array): Uint8Array {
  switch (type) {
    case "F32":
      return asBytes(Float32Array.from(values));
    case "F16":
      return asBytes(f32ToF16(values));
    case "BF16":
      return asBytes(f32ToBf16(values));
    case "Q8_0":
      return quantizeQ8_0(values);
    case "Q4_0":
      return quantizeQ4_0(values);
    case "IQ4_NL":
      return quantizeIQ4_NL(values);
  }
}

/**
 * The f32 elements of tensor data stored as `type` (a copy; floats widened exactly, blocks dequantized).
 *
 * @example
 * ```ts
 * import { decodeTensor } from "./gguf_quant.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(decodeTensor("BF16", new Uint8Array([0x80, 0x3f])), new Float32Array([1]));
 * ```
 */
export function decodeTensor(type: GGMLType, bytes: Uint8Array): Float32Array {
  const { blockBytes } = GGML_TYPES[type];
  if (bytes.length % blockBytes !== 0) {
    throw new InvalidArgumentError(`Cannot decode ${type}: ${bytes.length} bytes are not whole elements`);
  }
  const copy = bytes.slice();
  switch (type) {
    case "F32":
      return new Float32Array(copy.buffer);
    case "F16":
      return f16ToF32(new Uint16Array(copy.buffer));
    case "BF16":
      return bf16ToF32(new Uint16Array(copy.buffer));
    case "Q8_0":
      return dequantizeQ8_0(copy);
    case "Q4_0":
      return dequantizeQ4_0(copy);
    case "IQ4_NL":
      return dequantizeIQ4_NL(copy);
  }
}
