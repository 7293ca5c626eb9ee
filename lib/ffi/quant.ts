/**
 * Typed wrappers of the 4-bit blockwise quantization functions of `qlora.h` and of the double
 * quantization of their constants (8-bit dynamic map).
 *
 * @module
 */

import { DTYPE, QUANT_TYPE } from "./abi.ts";
import {
  call,
  code,
  type DeviceBuffer,
  type DTypeName,
  type Native,
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

/**
 * `qlora_dequantize_4bit`: `out[i] = code[nibble(i)] * absmax[i / blocksize]` for `n` values, written
 * as `outDtype`.
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
 * dequantize4bit(getDevice(), packed, absmax, 64, "nf4", 64, out, "f32");
 * assert(out.toFloat32().every((v) => v === -2));
 * ```
 */
export function dequantize4bit(
  on: Native,
  packed: DeviceBuffer,
  absmax: DeviceBuffer,
  n: number,
  quantType: QuantTypeName,
  blocksize: number,
  out: DeviceBuffer,
  outDtype: DTypeName,
): void {
  call(
    on,
    () =>
      on.native.symbols.qlora_dequantize_4bit(
        packed.ptr,
        absmax.ptr,
        u64(n),
        code(QUANT_TYPE, quantType),
        u64(blocksize),
        out.ptr,
        code(DTYPE, outDtype),
      ),
  );
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
