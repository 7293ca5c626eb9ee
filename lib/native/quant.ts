/**
 * Typed wrappers of the 4-bit blockwise quantization functions of `qlora.h` and of the double
 * quantization of their constants (8-bit dynamic map).
 *
 * @module
 */

import { DTYPE, QUANT_TYPE, WEIGHT4 } from "./abi.ts";
import {
  call,
  code,
  type DeviceBuffer,
  type DTypeName,
  type Native,
  pointerBits,
  type QuantTypeName,
  u64,
} from "./call.ts";

/**
 * `qlora_quant_map`: the 16 code values of a 4-bit type, indexed by code.
 *
 * @example
 * ```ts
 * import { quantMap } from "./quant.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(quantMap(getDevice("cpu"), "nf4")[15] === 1);
 * ```
 */
export function quantMap(on: Native, quantType: QuantTypeName): Float32Array<ArrayBuffer> {
  const out = new Float32Array(16);
  call(on, () => on.native.symbols.qlora_quant_map(code(QUANT_TYPE, quantType), out));
  return out;
}

/**
 * `qlora_quantize_4bit`: `n` values of `x` into `packed` ((n+1)/2 bytes) and `absmax`
 * (ceil(n / blocksize) f32). NaN or Inf throws `NonFiniteError`.
 *
 * @example
 * ```ts
 * import { quantize4bit } from "./quant.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from(new Array(64).fill(0.5));
 * using packed = Tensor.empty([32], { dtype: "u8" });
 * using absmax = Tensor.empty([1]);
 * quantize4bit(getDevice(), x, "f32", 64, "nf4", 64, packed, absmax);
 * assert(absmax.toFloat32()[0] === 0.5);
 * ```
 */
export function quantize4bit(
  on: Native,
  x: DeviceBuffer,
  xDtype: DTypeName,
  n: number,
  quantType: QuantTypeName,
  blocksize: number,
  packed: DeviceBuffer,
  absmax: DeviceBuffer,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_quantize_4bit(
        x.ptr,
        code(DTYPE, xDtype),
        u64(n),
        code(QUANT_TYPE, quantType),
        u64(blocksize),
        packed.ptr,
        absmax.ptr,
      ),
  );
}

/** A stored 4-bit tensor as `qlora_weight4` describes it: packed codes and plain or double-quantized scales. */
export interface Weight4 {
  /** Packed codes, two a byte. */
  packed: DeviceBuffer;
  /** One f32 absmax per block, or null when double-quantized. */
  absmax: DeviceBuffer | null;
  /** Double-quantized scales: u8 codes of the signed dynamic map, f32 nested absmax, the offset, the nested blocksize. */
  nested: { codes: DeviceBuffer; absmax: DeviceBuffer; offset: number; blocksize: number } | null;
  /** The 4-bit type. */
  quantType: QuantTypeName;
  /** Values per block. */
  blocksize: number;
}

/**
 * The bytes of a `qlora_weight4` (the layout abi.ts generates), for a native call that reads the weight.
 *
 * @example
 * ```ts
 * import { encodeWeight4 } from "./quant.ts";
 * import { WEIGHT4 } from "./abi.ts";
 * import { Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using packed = Tensor.zeros([32], { dtype: "u8" }), absmax = Tensor.zeros([1]);
 * const bytes = encodeWeight4({ packed, absmax, nested: null, quantType: "nf4", blocksize: 64 });
 * assert(bytes.length === WEIGHT4.size && new DataView(bytes.buffer).getBigUint64(WEIGHT4.offsets.blocksize, true) === 64n);
 * ```
 */
export function encodeWeight4(w: Weight4): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(WEIGHT4.size);
  const view = new DataView(bytes.buffer), at = WEIGHT4.offsets;
  view.setBigUint64(at.packed, pointerBits(w.packed), true);
  view.setBigUint64(at.absmax, pointerBits(w.absmax), true);
  view.setBigUint64(at.absmax_codes, pointerBits(w.nested?.codes ?? null), true);
  view.setBigUint64(at.nested_absmax, pointerBits(w.nested?.absmax ?? null), true);
  view.setFloat32(at.offset, w.nested?.offset ?? 0, true);
  view.setInt32(at.quant_type, code(QUANT_TYPE, w.quantType), true);
  view.setBigUint64(at.blocksize, u64(w.blocksize), true);
  view.setBigUint64(at.nested_blocksize, u64(w.nested?.blocksize ?? 0), true);
  return bytes;
}

/**
 * `qlora_dequantize_4bit`: `out[i] = code[nibble(i)] * scale(i / blocksize)` for `n` values of `w`, written
 * as `outDtype` (a double-quantized scale decoded on the fly).
 *
 * @example
 * ```ts
 * import { dequantize4bit, quantize4bit } from "./quant.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using x = Tensor.from(new Array(64).fill(-2));
 * using packed = Tensor.empty([32], { dtype: "u8" });
 * using absmax = Tensor.empty([1]);
 * quantize4bit(getDevice(), x, "f32", 64, "nf4", 64, packed, absmax);
 * using out = Tensor.empty([64]);
 * dequantize4bit(getDevice(), { packed, absmax, nested: null, quantType: "nf4", blocksize: 64 }, 64, out, "f32");
 * assert(out.toFloat32().every((v) => v === -2));
 * ```
 */
export function dequantize4bit(
  on: Native,
  w: Weight4,
  n: number,
  out: DeviceBuffer,
  outDtype: DTypeName,
): void {
  const desc = encodeWeight4(w);
  call(on, () => on.native.symbols.qlora_dequantize_4bit(desc, u64(n), out.ptr, code(DTYPE, outDtype)));
}

/**
 * `qlora_dynamic_map`: the 256 sorted values of the signed 8-bit dynamic map.
 *
 * @example
 * ```ts
 * import { dynamicMap } from "./quant.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(dynamicMap(getDevice("cpu"))[255] === 1);
 * ```
 */
export function dynamicMap(on: Native): Float32Array<ArrayBuffer> {
  const out = new Float32Array(256);
  call(on, () => on.native.symbols.qlora_dynamic_map(out));
  return out;
}

/**
 * `qlora_double_quantize`: `n` absmax values as u8 `codes` of (absmax - mean) with one f32 in
 * `nestedAbsmax` per `nestedBlocksize` of them; returns the mean (the offset).
 *
 * @example
 * ```ts
 * import { doubleQuantize } from "./quant.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using absmax = Tensor.from([1, 3]);
 * using codes = Tensor.empty([2], { dtype: "u8" });
 * using nested = Tensor.empty([1]);
 * assert(doubleQuantize(getDevice(), absmax, 2, 256, codes, nested) === 2);
 * ```
 */
export function doubleQuantize(
  on: Native,
  absmax: DeviceBuffer,
  n: number,
  nestedBlocksize: number,
  codes: DeviceBuffer,
  nestedAbsmax: DeviceBuffer,
): number {
  const offset = new Float32Array(1);
  call(
    on,
    () =>
      on.native.symbols.qlora_double_quantize(
        absmax.ptr,
        u64(n),
        u64(nestedBlocksize),
        codes.ptr,
        nestedAbsmax.ptr,
        offset,
      ),
  );
  return offset[0];
}

/**
 * `qlora_double_dequantize`: `absmax[i] = map[codes[i]] * nestedAbsmax[i / nestedBlocksize] + offset`.
 *
 * @example
 * ```ts
 * import { doubleDequantize, doubleQuantize } from "./quant.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using absmax = Tensor.from([1, 3]);
 * using codes = Tensor.empty([2], { dtype: "u8" });
 * using nested = Tensor.empty([1]);
 * const offset = doubleQuantize(getDevice(), absmax, 2, 256, codes, nested);
 * using back = Tensor.empty([2]);
 * doubleDequantize(getDevice(), codes, nested, offset, 2, 256, back);
 * const [a, b] = back.toFloat32();
 * assert(Math.abs(a - 1) < 0.02 && Math.abs(b - 3) < 0.02); // to 8-bit precision
 * ```
 */
export function doubleDequantize(
  on: Native,
  codes: DeviceBuffer,
  nestedAbsmax: DeviceBuffer,
  offset: number,
  n: number,
  nestedBlocksize: number,
  absmax: DeviceBuffer,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_double_dequantize(
        codes.ptr,
        nestedAbsmax.ptr,
        offset,
        u64(n),
        u64(nestedBlocksize),
        absmax.ptr,
      ),
  );
}
