/**
 * Blockwise 4-bit quantization (NF4, FP4 and a symmetric Int4 baseline) with optional double
 * quantization of the constants, as in QLoRA and bitsandbytes.
 *
 * A tensor of n values becomes `packed` (u8, (n+1)/2 bytes: two codes per byte, the first value in
 * the high nibble) plus one f32 absmax per block of `blocksize` values (4 + 32/64 = 4.5 bits per
 * parameter at blocksize 64). Double quantization stores those constants as 8-bit codes of
 * (absmax - mean) with one f32 scale per 256 of them: 4 + 8/64 + 32/(64*256) = 4.127 bits.
 *
 * @module
 */

import type { Device } from "./device.ts";
import { assertFloatDType, type FloatDType } from "./dtype.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import { enumNames, QUANT_TYPE } from "../native/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Category } from "./memory.ts";
import { Tensor } from "./tensor.ts";

/** The 4-bit data types: `"nf4" | "fp4" | "int4"` (`qlora_quant_type`). */
export type QuantType = "nf4" | "fp4" | "int4";

/** Compile-time proof that {@linkcode QuantType} is the header's `enum qlora_quant_type`, no more and no less. */
const _quantTypeIsTheAbis: [QuantType] extends [Lowercase<keyof typeof QUANT_TYPE>]
  ? ([Lowercase<keyof typeof QUANT_TYPE>] extends [QuantType] ? true : never)
  : never = true;

/** Every 4-bit type, in native code order (`qlora_quant_type`). */
export const QUANT_TYPES: readonly QuantType[] = enumNames(QUANT_TYPE);

/** How to quantize. */
export interface QuantizeOptions {
  /** 4-bit data type (default "nf4"). */
  quantType?: QuantType;
  /** Values per absmax constant: a power of two from 32 to 4096 (default 64). */
  blocksize?: number;
  /** Quantize the constants to 8 bits too (default true). */
  doubleQuant?: boolean;
  /** Constants per 8-bit block in double quantization (default 256). */
  nestedBlocksize?: number;
}

/** The double-quantized constants of a {@linkcode QuantizedTensor}. */
export interface NestedConstants {
  /** One u8 code of the dynamic map per block (category quant_constants). */
  readonly codes: Tensor;
  /** One f32 scale per `blocksize` codes (category quant_constants). */
  readonly absmax: Tensor;
  /** The mean subtracted from the constants before quantizing them. */
  readonly offset: number;
  /** Codes per nested block (256 by default). */
  readonly blocksize: number;
}

const CHUNK = 1 << 22; // values per native call in the async variants (a multiple of every blocksize)

function quantTypeCode(quantType: QuantType): number {
  const code = QUANT_TYPES.indexOf(quantType);
  if (code < 0) {
    throw new InvalidArgumentError(
      `Cannot quantize: quant type ${JSON.stringify(quantType)} is not one of ${QUANT_TYPES.join(", ")}`,
    );
  }
  return code;
}

function checkBlocksize(blocksize: number, what: string): void {
  if (
    !Number.isInteger(blocksize) || blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) !== 0
  ) {
    throw new InvalidArgumentError(
      `Cannot quantize: ${what} ${blocksize} is not a power of two from 32 to 4096`,
    );
  }
}

/**
 * A tensor stored in 4 bits per value plus its quantization constants.
 *
 * @example
 * ```ts
 * import { QuantizedTensor, quantize, Tensor } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * using w = Tensor.randn([64, 64]);
 * using q = quantize(w, { quantType: "nf4", blocksize: 64, doubleQuant: false });
 * assert(q instanceof QuantizedTensor && q.nested === null);
 * assertEquals(q.bytes, { packed: 2048, constants: 256, total: 2304 }); // 4096 codes of 4 bits, 64 f32 absmax
 * assertEquals(q.bitsPerParameter, 4.5);
 * ```
 */
export class QuantizedTensor implements Disposable {
  /** Shape of the original tensor. */
  readonly shape: readonly number[];
  /** Float dtype of the original tensor (the default dequantization dtype). */
  readonly dtype: FloatDType;
  /** Number of values. */
  readonly numel: number;
  /** 4-bit data type. */
  readonly quantType: QuantType;
  /** Values per absmax constant. */
  readonly blocksize: number;
  /** Packed codes, u8 [(numel + 1) / 2], category quantized_weights. */
  readonly packed: Tensor;
  /** f32 absmax per block (category quant_constants), or null when double-quantized. */
  readonly absmax: Tensor | null;
  /** The double-quantized constants, or null. */
  readonly nested: NestedConstants | null;

  /** Assembles a quantized tensor from its parts (they become owned by it). */
  constructor(parts: {
    shape: readonly number[];
    dtype: FloatDType;
    quantType: QuantType;
    blocksize: number;
    packed: Tensor;
    absmax?: Tensor | null;
    nested?: NestedConstants | null;
  }) {
    quantTypeCode(parts.quantType);
    checkBlocksize(parts.blocksize, "blocksize");
    this.shape = Object.freeze([...parts.shape]);
    this.numel = this.shape.reduce((a, b) => a * b, 1);
    this.dtype = parts.dtype;
    this.quantType = parts.quantType;
    this.blocksize = parts.blocksize;
    this.packed = parts.packed;
    this.absmax = parts.absmax ?? null;
    this.nested = parts.nested ?? null;
    const blocks = this.blocks;
    const problems: string[] = [];
    if (this.packed.dtype !== "u8" || this.packed.numel !== Math.ceil(this.numel / 2)) {
      problems.push(`packed must be u8[${Math.ceil(this.numel / 2)}]`);
    }
    if ((this.absmax === null) === (this.nested === null)) {
      problems.push("give exactly one of absmax and nested");
    }
    if (this.absmax && (this.absmax.dtype !== "f32" || this.absmax.numel !== blocks)) {
      problems.push(`absmax must be f32[${blocks}]`);
    }
    if (this.nested) {
      checkBlocksize(this.nested.blocksize, "nested blocksize");
      const nb = Math.ceil(blocks / this.nested.blocksize);
      if (this.nested.codes.dtype !== "u8" || this.nested.codes.numel !== blocks) {
        problems.push(`nested codes must be u8[${blocks}]`);
      }
      if (this.nested.absmax.dtype !== "f32" || this.nested.absmax.numel !== nb) {
        problems.push(`nested absmax must be f32[${nb}]`);
      }
      if (!Number.isFinite(this.nested.offset)) problems.push("nested offset must be finite");
    }
    if (problems.length) {
      throw new InvalidArgumentError(`Cannot assemble a quantized tensor: ${problems.join("; ")}`);
    }
  }

  /** The device holding the parts. */
  get device(): Device {
    return this.packed.device;
  }

  /** Number of quantization blocks (absmax constants). */
  get blocks(): number {
    return Math.ceil(this.numel / this.blocksize);
  }

  /** Bytes of the packed codes and of the constants. */
  get bytes(): { packed: number; constants: number; total: number } {
    const constants = this.nested
      ? this.nested.codes.byteLength + this.nested.absmax.byteLength + 4 // + the f32 offset
      : this.absmax!.byteLength;
    return { packed: this.packed.byteLength, constants, total: this.packed.byteLength + constants };
  }

  /**
   * Storage per value, codes and constants together: 4.5 at blocksize 64, 4.127 with double
   * quantization (4 + 8/64 + 32/(64*256)).
   */
  get bitsPerParameter(): number {
    return (this.bytes.total * 8) / this.numel;
  }

  /**
   * The f32 absmax constants (double-dequantized when nested) in a new tensor.
   *
   * @example
   * ```ts
   * import { quantize, Tensor } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * using w = Tensor.randn([256, 64]);
   * using q = quantize(w);
   * using c = q.constants();
   * assert(c.numel === 256);
   * ```
   */
  constants(options: { category?: Category } = {}): Tensor {
    if (this.absmax) return this.absmax.clone({ category: options.category ?? "workspace" });
    const n = this.nested!;
    const [out] = ffi.withOutputs(
      [() => Tensor.empty([this.blocks], { category: options.category ?? "workspace", device: this.device })],
      (out) => ffi.doubleDequantize(this.device, n.codes, n.absmax, n.offset, this.blocks, n.blocksize, out),
    );
    return out;
  }

  /**
   * Restores the values as a float tensor (default: the original dtype).
   *
   * @example
   * ```ts
   * import { quantize, Tensor } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * using w = Tensor.randn([64, 64], { seed: 3 });
   * using q = quantize(w, { quantType: "nf4" });
   * using r = q.dequantize({ dtype: "f32" });
   * assert(r.shape[0] === 64);
   * ```
   */
  dequantize(options: { dtype?: FloatDType; category?: Category } = {}): Tensor {
    const [out] = ffi.withOutputs([() => this.#dequantizeTarget(options)], (out) => this.dequantizeInto(out));
    return out;
  }

  /**
   * Restores the values into an existing float tensor of the same size (a reused workspace: nothing is
   * allocated; double-quantized constants are decoded on the fly).
   *
   * @example
   * ```ts
   * import { quantize, Tensor } from "../../mod.ts";
   * using w = Tensor.randn([64, 64]);
   * using q = quantize(w);
   * using out = Tensor.empty([64, 64], { dtype: "bf16", category: "workspace" });
   * q.dequantizeInto(out);
   * ```
   */
  dequantizeInto(out: Tensor): void {
    assertFloatDType(out.dtype, "dequantize");
    if (out.numel !== this.numel || out.device !== this.device) {
      throw new InvalidArgumentError(
        `Cannot dequantize ${this.numel} values into a tensor of ${out.numel} values` +
          (out.device !== this.device ? " on another device" : ""),
      );
    }
    this.#dequantizeRange(out, 0, this.numel);
  }

  /**
   * Like {@linkcode QuantizedTensor.dequantize}, in chunks of 4M values that yield to the event loop,
   * so that a notebook kernel stays responsive on large tensors.
   *
   * @example
   * ```ts
   * import { quantize, Tensor } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * using w = Tensor.randn([128, 64]);
   * using q = quantize(w);
   * using r = await q.dequantizeAsync();
   * assert(r.numel === w.numel);
   * ```
   */
  async dequantizeAsync(options: { dtype?: FloatDType; category?: Category } = {}): Promise<Tensor> {
    // Chunks start on a nested block's boundary, so that each chunk's constants are a suffix of the arrays.
    const chunk = Math.max(CHUNK, this.blocksize * (this.nested?.blocksize ?? 1));
    const [out] = await ffi.withOutputsAsync([() => this.#dequantizeTarget(options)], async (out) => {
      for (let start = 0; start < this.numel; start += chunk) {
        this.#dequantizeRange(out, start, Math.min(chunk, this.numel - start));
        await yieldToEventLoop();
      }
    });
    return out;
  }

  #dequantizeTarget(options: { dtype?: FloatDType; category?: Category }): Tensor {
    const dtype = options.dtype ?? this.dtype;
    assertFloatDType(dtype, "dequantize");
    return Tensor.empty(this.shape, {
      dtype,
      category: options.category ?? "activations",
      device: this.device,
    });
  }

  #dequantizeRange(out: Tensor, start: number, count: number): void {
    const esize = out.byteLength / out.numel;
    ffi.dequantize4bit(this.device, this.weight4(start), count, ffi.offset(out, start * esize), out.dtype);
  }

  /**
   * The tensor as the native functions read it (`qlora_weight4`): codes and plain or double-quantized
   * scales, from value `start` on (a multiple of the blocksize, and with double quantization of the
   * blocksize times the nested blocksize).
   *
   * @example
   * ```ts
   * import { quantize, Tensor } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * using w = Tensor.randn([64, 64]);
   * using q = quantize(w);
   * assert(q.weight4().nested?.blocksize === 256);
   * ```
   *
   * @internal
   */
  weight4(start = 0): ffi.Weight4 {
    const block = start / this.blocksize, n = this.nested;
    if (!Number.isInteger(block) || (n && !Number.isInteger(block / n.blocksize))) {
      throw new InvalidArgumentError(
        `Cannot describe a 4-bit tensor from value ${start}: not a block's start`,
      );
    }
    return {
      packed: ffi.offset(this.packed, start / 2),
      absmax: this.absmax ? ffi.offset(this.absmax, block * 4) : null,
      nested: n
        ? {
          codes: ffi.offset(n.codes, block),
          absmax: ffi.offset(n.absmax, (block / n.blocksize) * 4),
          offset: n.offset,
          blocksize: n.blocksize,
        }
        : null,
      quantType: this.quantType,
      blocksize: this.blocksize,
    };
  }

  /** Frees every part. */
  dispose(): void {
    this.packed.dispose();
    this.absmax?.dispose();
    this.nested?.codes.dispose();
    this.nested?.absmax.dispose();
  }

  /** Same as {@linkcode QuantizedTensor.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** "QuantizedTensor(nf4[4096, 4096], blocksize 64, double-quant, 4.127 bits)" */
  toString(): string {
    return `QuantizedTensor(${this.quantType}[${this.shape.join(", ")}], blocksize ${this.blocksize}${
      this.nested ? ", double-quant" : ""
    }, ${this.bitsPerParameter.toFixed(3)} bits)`;
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

interface Plan {
  quantType: QuantType;
  blocksize: number;
  doubleQuant: boolean;
  nestedBlocksize: number;
}

function plan(x: Tensor, options: QuantizeOptions): Plan {
  assertFloatDType(x.dtype, "quantize");
  const p = {
    quantType: options.quantType ?? "nf4",
    blocksize: options.blocksize ?? 64,
    doubleQuant: options.doubleQuant ?? true,
    nestedBlocksize: options.nestedBlocksize ?? 256,
  };
  quantTypeCode(p.quantType);
  checkBlocksize(p.blocksize, "blocksize");
  checkBlocksize(p.nestedBlocksize, "nested blocksize");
  x.ptr; // throws if disposed
  return p;
}

function quantizeRange(
  x: Tensor,
  p: Plan,
  packed: Tensor,
  absmax: Tensor,
  start: number,
  count: number,
): void {
  const esize = x.byteLength / x.numel;
  ffi.quantize4bit(
    x.device,
    ffi.offset(x, start * esize),
    x.dtype,
    count,
    p.quantType,
    p.blocksize,
    ffi.offset(packed, start / 2),
    ffi.offset(absmax, (start / p.blocksize) * 4),
  );
}

function finish(x: Tensor, p: Plan, packed: Tensor, absmax: Tensor): QuantizedTensor {
  const base = {
    shape: x.shape,
    dtype: x.dtype as FloatDType,
    quantType: p.quantType,
    blocksize: p.blocksize,
    packed,
  };
  if (!p.doubleQuant) return new QuantizedTensor({ ...base, absmax });
  const blocks = absmax.numel;
  let offset = 0;
  const [codes, nestedAbsmax] = ffi.withOutputs(
    [
      () => Tensor.empty([blocks], { dtype: "u8", category: "quant_constants", device: x.device }),
      () =>
        Tensor.empty([Math.ceil(blocks / p.nestedBlocksize)], {
          category: "quant_constants",
          device: x.device,
        }),
    ],
    (codes, nestedAbsmax) => {
      offset = ffi.doubleQuantize(x.device, absmax, blocks, p.nestedBlocksize, codes, nestedAbsmax);
    },
  );
  absmax.dispose();
  return new QuantizedTensor({
    ...base,
    nested: { codes, absmax: nestedAbsmax, offset, blocksize: p.nestedBlocksize },
  });
}

/** Makers of the codes and the constants of a quantization (see `withOutputs`). */
function outputs(x: Tensor, p: Plan): [() => Tensor, () => Tensor] {
  return [
    () =>
      Tensor.empty([Math.ceil(x.numel / 2)], {
        dtype: "u8",
        category: "quantized_weights",
        device: x.device,
      }),
    () => Tensor.empty([Math.ceil(x.numel / p.blocksize)], { category: "quant_constants", device: x.device }),
  ];
}

/**
 * Quantizes a float tensor to 4 bits (default NF4, blocksize 64, double quantization on). The input
 * is left as it is; NaN or Inf in it throws {@linkcode NonFiniteError}.
 *
 * @example
 * ```ts
 * import { quantize, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using w = Tensor.randn([4096, 64], { std: 0.02, dtype: "bf16" });
 * using q = quantize(w);
 * assert(Math.abs(q.bitsPerParameter - 4.127) < 0.001);
 * ```
 */
export function quantize(x: Tensor, options: QuantizeOptions = {}): QuantizedTensor {
  const p = plan(x, options);
  let q: QuantizedTensor | undefined;
  ffi.withOutputs(outputs(x, p), (packed, absmax) => {
    quantizeRange(x, p, packed, absmax, 0, x.numel);
    q = finish(x, p, packed, absmax);
  });
  return q!;
}

/**
 * Like {@linkcode quantize}, in chunks of 4M values that yield to the event loop between native
 * calls (for notebooks and progress bars). `onProgress` gets the fraction done.
 *
 * @example
 * ```ts
 * import { quantizeAsync, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using w = Tensor.randn([256, 256]);
 * using q = await quantizeAsync(w, { quantType: "fp4" });
 * assert(q.quantType === "fp4");
 * ```
 */
export async function quantizeAsync(
  x: Tensor,
  options: QuantizeOptions & { onProgress?: (fraction: number) => void } = {},
): Promise<QuantizedTensor> {
  const p = plan(x, options);
  let q: QuantizedTensor | undefined;
  await ffi.withOutputsAsync(outputs(x, p), async (packed, absmax) => {
    for (let start = 0; start < x.numel; start += CHUNK) {
      const count = Math.min(CHUNK, x.numel - start);
      quantizeRange(x, p, packed, absmax, start, count);
      options.onProgress?.((start + count) / x.numel);
      await yieldToEventLoop();
    }
    q = finish(x, p, packed, absmax);
  });
  return q!;
}

/**
 * The 16 code values of a 4-bit type, indexed by code (a file's `quant_map`).
 *
 * @example
 * ```ts
 * import { getDevice, quantMap } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const nf4 = quantMap("nf4", getDevice("cpu"));
 * assert(nf4[7] === 0 && nf4[15] === 1);
 * ```
 */
export function quantMap(quantType: QuantType, device: Device): Float32Array {
  quantTypeCode(quantType);
  return ffi.quantMap(device, quantType);
}

/**
 * The 256 sorted values of the signed 8-bit dynamic map used by double quantization.
 *
 * @example
 * ```ts
 * import { dynamicMap, getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const map = dynamicMap(getDevice("cpu"));
 * assert(map.length === 256 && map[255] === 1);
 * ```
 */
export function dynamicMap(device: Device): Float32Array {
  return ffi.dynamicMap(device);
}

/**
 * The 256 sorted values of the unsigned 8-bit dynamic map (in [0, 1]) that {@linkcode AdamW8bit} uses
 * for its second moment.
 *
 * @example
 * ```ts
 * import { dynamicMapUnsigned, getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const map = dynamicMapUnsigned(getDevice("cpu"));
 * assert(map.length === 256 && map[0] === 0 && map[255] === 1 && map.every((x, i) => i === 0 || x > map[i - 1]));
 * ```
 */
export function dynamicMapUnsigned(device: Device): Float32Array {
  return ffi.dynamicMapUnsigned(device);
}

/** Error figures of a quantization round trip. */
export interface QuantizationError {
  /** Mean absolute error. */
  meanAbsolute: number;
  /** Root mean square error. */
  rms: number;
  /** RMS error divided by the RMS of the original (0 for an all-zero original with no error). */
  relativeRms: number;
  /** Largest absolute error. */
  maxAbsolute: number;
}

/**
 * Compares original and restored values.
 *
 * @example
 * ```ts
 * import { quantizationError } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const e = quantizationError(new Float32Array([1, -1]), new Float32Array([1, -0.5]));
 * assert(e.meanAbsolute === 0.25 && e.maxAbsolute === 0.5);
 * ```
 */
export function quantizationError(original: Float32Array, restored: Float32Array): QuantizationError {
  if (original.length !== restored.length || original.length === 0) {
    throw new InvalidArgumentError(
      `Cannot compare ${original.length} original values with ${restored.length} restored values`,
    );
  }
  let abs = 0, sq = 0, ref = 0, max = 0;
  for (let i = 0; i < original.length; i++) {
    const d = Math.abs(original[i] - restored[i]);
    abs += d;
    sq += d * d;
    ref += original[i] * original[i];
    if (d > max) max = d;
  }
  const n = original.length;
  return {
    meanAbsolute: abs / n,
    rms: Math.sqrt(sq / n),
    relativeRms: ref > 0 ? Math.sqrt(sq / ref) : (sq > 0 ? Infinity : 0),
    maxAbsolute: max,
  };
}
