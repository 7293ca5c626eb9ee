/**
 * Plain TypeScript references for the native quantization kernels, written from the definitions
 * (bitsandbytes semantics) rather than from the C code: tests compare the native results with these
 * bit for bit.
 *
 * @module
 */

/** NF4 code values (QLoRA paper, appendix E), as float32. */
export const NF4 = [
  -1.0,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0.0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1.0,
].map(Math.fround);

/** FP4 code values by code: sign bit 8, magnitudes 0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4 (bitsandbytes). */
export const FP4 = [0, 0.0625, 8, 12, 4, 6, 2, 3].map((v) => Math.fround(v / 12));

/** bitsandbytes' FP4 decision thresholds on |x| (sorted magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1). */
export const FP4_THRESHOLDS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333]
  .map(
    Math.fround,
  );
const FP4_SORTED_CODES = [0, 1, 6, 7, 4, 5, 2, 3];

/** Int4 code values: (i - 8) / 7. */
export const INT4 = Array.from({ length: 16 }, (_, i) => Math.fround((i - 8) / 7));

function midpoints(codes: number[]): number[] {
  return codes.slice(0, -1).map((c, k) => Math.fround((c + codes[k + 1]) / 2));
}

/** The code of one normalised value: count of thresholds strictly below it (ties go down). */
export function referenceCode(quantType: "nf4" | "fp4" | "int4", v: number, x: number): number {
  if (quantType === "fp4") {
    const a = Math.abs(v);
    const idx = FP4_THRESHOLDS.filter((t) => a > t).length;
    return FP4_SORTED_CODES[idx] | (x < 0 ? 8 : 0);
  }
  const t = midpoints(quantType === "nf4" ? NF4 : INT4);
  return t.filter((m) => v > m).length;
}

/** Reference blockwise 4-bit quantization of f32 values. */
export function referenceQuantize(
  x: Float32Array,
  quantType: "nf4" | "fp4" | "int4",
  blocksize: number,
): { packed: Uint8Array; absmax: Float32Array } {
  const blocks = Math.ceil(x.length / blocksize);
  const absmax = new Float32Array(blocks);
  const codes = new Uint8Array(x.length + 1);
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize, end = Math.min(x.length, start + blocksize);
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(x[i]));
    absmax[b] = m;
    const inv = m > 0 ? Math.fround(1 / m) : 0;
    for (let i = start; i < end; i++) codes[i] = referenceCode(quantType, Math.fround(x[i] * inv), x[i]);
  }
  const packed = new Uint8Array(Math.ceil(x.length / 2));
  for (let j = 0; j < packed.length; j++) packed[j] = (codes[2 * j] << 4) | codes[2 * j + 1];
  return { packed, absmax };
}

/** Reference dequantization to f32. */
export function referenceDequantize(
  packed: Uint8Array,
  absmax: Float32Array,
  n: number,
  table: ArrayLike<number>,
  blocksize: number,
): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const byte = packed[i >> 1];
    const code = i % 2 === 0 ? byte >> 4 : byte & 15;
    out[i] = Math.fround(table[code] * absmax[Math.floor(i / blocksize)]);
  }
  return out;
}

/** Reference double quantization with a given sorted 8-bit map. */
export function referenceDoubleQuantize(
  absmax: Float32Array,
  map: Float32Array,
  blocksize: number,
): { codes: Uint8Array; nested: Float32Array; offset: number } {
  // The mean in the library's fixed order: chunks of 4096 summed in double, then the chunk sums.
  let sum = 0;
  for (let c = 0; c < absmax.length; c += 4096) {
    let part = 0;
    for (let i = c; i < Math.min(absmax.length, c + 4096); i++) part += absmax[i];
    sum += part;
  }
  const offset = Math.fround(sum / absmax.length);
  const mids = Array.from({ length: 255 }, (_, k) => Math.fround((map[k] + map[k + 1]) * 0.5));
  const blocks = Math.ceil(absmax.length / blocksize);
  const codes = new Uint8Array(absmax.length);
  const nested = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize, end = Math.min(absmax.length, start + blocksize);
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(Math.fround(absmax[i] - offset)));
    nested[b] = m;
    const inv = m > 0 ? Math.fround(1 / m) : 0;
    for (let i = start; i < end; i++) {
      const v = Math.fround(Math.fround(absmax[i] - offset) * inv);
      let lo = 0, hi = 255; // first k with mids[k] >= v
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (mids[mid] < v) lo = mid + 1;
        else hi = mid;
      }
      codes[i] = lo;
    }
  }
  return { codes, nested, offset };
}

/** Deterministic pseudo-random normal values (Box-Muller on a seeded xorshift). */
export function normalValues(n: number, seed = 1, std = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 1) / 4294967297;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next())), a = 2 * Math.PI * next();
    out[i] = std * r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = std * r * Math.sin(a);
  }
  return out;
}

/**
 * Asserts two typed arrays hold the same bits: unlike `assertEquals`, which compares values (0 equals -0,
 * and one NaN equals another whatever its payload), this compares the raw bytes, as "bit for bit" means.
 */
export function assertBitEqual(actual: ArrayBufferView, expected: ArrayBufferView, msg = ""): void {
  const a = new Uint8Array(actual.buffer, actual.byteOffset, actual.byteLength);
  const e = new Uint8Array(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.length !== e.length) throw new Error(`${msg}: ${a.length} bytes, expected ${e.length}`);
  const i = a.findIndex((v, k) => v !== e[k]);
  if (i < 0) return;
  const bpe = (actual as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
  const k = Math.floor(i / bpe);
  const show = (v: ArrayBufferView) => String((v as unknown as ArrayLike<number>)[k]);
  throw new Error(`${msg}: element ${k} differs in its bits (${show(actual)} vs ${show(expected)})`);
}
