/**
 * Data types of tensors, their native codes, sizes, and host-side conversions of 16-bit floats
 * (round to nearest even, the same rounding as the native library).
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import { DTYPE, enumNames } from "../native/mod.ts";

/** Element types a {@linkcode Tensor} can hold: `"f32" | "bf16" | "f16" | "u8" | "i32"` (`qlora_dtype`). */
export type DType = "f32" | "bf16" | "f16" | "u8" | "i32";

/** Compile-time proof that {@linkcode DType} is the header's `enum qlora_dtype`, no more and no less. */
const _dtypeIsTheAbis: Same<DType, Lowercase<keyof typeof DTYPE>> = true;

/** `true` when A and B are the same union, else `never`. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;

/** Floating-point element types. */
export type FloatDType = "f32" | "bf16" | "f16";

/** Every dtype, in native code order (`qlora_dtype`). */
export const DTYPES: readonly DType[] = enumNames(DTYPE);

const SIZES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, u8: 1, i32: 4 };

/**
 * Bytes per element of a dtype.
 *
 * @example
 * ```ts
 * import { dtypeSize } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(dtypeSize("bf16") === 2);
 * ```
 */
export function dtypeSize(dtype: DType): number {
  return SIZES[dtype];
}

/**
 * The native `qlora_dtype` code of a dtype; throws on an unknown name.
 *
 * @example
 * ```ts
 * import { dtypeCode } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(dtypeCode("f16") === 2);
 * ```
 */
export function dtypeCode(dtype: DType): number {
  const code = DTYPES.indexOf(dtype);
  if (code < 0) {
    throw new InvalidArgumentError(
      `Cannot use dtype ${JSON.stringify(dtype)}: expected one of ${DTYPES.join(", ")}`,
    );
  }
  return code;
}

/**
 * Throws unless dtype is f32, bf16 or f16.
 *
 * @example
 * ```ts
 * import { assertFloatDType } from "./dtype.ts";
 * assertFloatDType("bf16", "quantize");
 * ```
 */
export function assertFloatDType(dtype: string, what: string): asserts dtype is FloatDType {
  if (dtype !== "f32" && dtype !== "bf16" && dtype !== "f16") {
    throw new InvalidArgumentError(
      `Cannot ${what}: dtype must be f32, bf16 or f16, got ${JSON.stringify(dtype)}`,
    );
  }
}

/** The host array type that holds a dtype's raw elements. */
export type HostArray = Float32Array | Uint16Array | Uint8Array | Int32Array;

/**
 * Allocates a host array for n elements of dtype (bf16 and f16 as raw `Uint16Array` bits).
 *
 * @example
 * ```ts
 * import { hostArray } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(hostArray("bf16", 4) instanceof Uint16Array);
 * ```
 */
export function hostArray(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(n);
    case "bf16":
    case "f16":
      return new Uint16Array(n);
    case "u8":
      return new Uint8Array(n);
    case "i32":
      return new Int32Array(n);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Converts f32 values to bf16 bits, rounding to nearest even (NaN stays NaN).
 *
 * @example
 * ```ts
 * import { bf16ToF32, f32ToBf16 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(bf16ToF32(f32ToBf16(new Float32Array([1.5])))[0] === 1.5);
 * ```
 */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) {
    const u = bits[i];
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x40;
    else out[i] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/**
 * Converts bf16 bits to f32 values (exact).
 *
 * @example
 * ```ts
 * import { bf16ToF32 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(bf16ToF32(new Uint16Array([0x3f80]))[0] === 1);
 * ```
 */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) o[i] = bits[i] << 16;
  return out;
}

/**
 * Converts f16 bits to f32 values (exact, subnormals included).
 *
 * @example
 * ```ts
 * import { f16ToF32 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(f16ToF32(new Uint16Array([0x3c00]))[0] === 1);
 * ```
 */
export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) out[i] = sign * man * 2 ** -24;
    else if (exp === 31) out[i] = man ? NaN : sign * Infinity;
    else out[i] = sign * (1 + man / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/**
 * Converts f32 values to f16 bits, rounding to nearest even (overflow to Inf).
 *
 * @example
 * ```ts
 * import { f16ToF32, f32ToF16 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(f16ToF32(f32ToF16(new Float32Array([0.5])))[0] === 0.5);
 * ```
 */
export function f32ToF16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    f32[0] = values[i];
    const u = u32[0];
    const sign = (u >>> 16) & 0x8000;
    const a = u & 0x7fffffff;
    let h: number;
    if (a > 0x7f800000) h = sign | 0x7e00;
    else if (a >= 0x477ff000) h = sign | 0x7c00;
    else if (a < 0x38800000) {
      if (a < 0x33000000) h = sign;
      else {
        const e = a >>> 23;
        const m = (a & 0x7fffff) | 0x800000;
        const shift = 126 - e;
        let q = m >>> shift;
        const rem = m & ((1 << shift) - 1);
        const half = 1 << (shift - 1);
        if (rem > half || (rem === half && (q & 1))) q++;
        h = sign | q;
      }
    } else {
      let q = (a - 0x38000000) >>> 13;
      const rem = a & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (q & 1))) q++;
      h = sign | q;
    }
    out[i] = h;
  }
  return out;
}

/**
 * Converts raw elements of a float dtype to f32 (a copy for f32).
 *
 * @example
 * ```ts
 * import { toFloat32 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(toFloat32(new Uint16Array([0x4000]), "bf16")[0] === 2);
 * ```
 */
export function toFloat32(raw: HostArray, dtype: FloatDType): Float32Array {
  if (dtype === "f32") return Float32Array.from(raw as Float32Array);
  return dtype === "bf16" ? bf16ToF32(raw as Uint16Array) : f16ToF32(raw as Uint16Array);
}

/**
 * Converts f32 values to the raw elements of a float dtype (a copy for f32).
 *
 * @example
 * ```ts
 * import { fromFloat32 } from "./dtype.ts";
 * import { assert } from "@std/assert";
 * assert(fromFloat32(new Float32Array([2]), "bf16")[0] === 0x4000);
 * ```
 */
export function fromFloat32(values: Float32Array, dtype: FloatDType): Float32Array | Uint16Array {
  if (dtype === "f32") return Float32Array.from(values);
  return dtype === "bf16" ? f32ToBf16(values) : f32ToF16(values);
}
