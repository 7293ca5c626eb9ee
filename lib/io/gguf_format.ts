/**
 * The GGUF container's building blocks, shared by `GGUFWriter` (`gguf_writer.ts`) and `GGUFReader`
 * (`gguf_reader.ts`): the magic and version, the typed metadata values, and the
 * tensor entries.
 *
 * A GGUF v3 file (little-endian) is: `"GGUF"`, version (u32 3), tensor count (u64), metadata count (u64);
 * the metadata (key string, value type u32, value); one info per tensor (name string, dimension count
 * u32, dimensions u64 innermost first, `ggml_type` u32, data offset u64 relative to the data section);
 * zero padding to `general.alignment` (default 32); the data section, each tensor at an aligned offset.
 * Strings are a u64 byte length and UTF-8 bytes; arrays an item type u32, a u64 count and the items.
 *
 * This library's tensor shapes are row-major, outermost first, as everywhere else here (`[rows, cols]`);
 * the file stores them reversed (`ne0 = cols` first), as ggml counts them.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import type { GGMLType } from "./gguf_quant.ts";

/** `"GGUF"` read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
/** The version written. */
export const GGUF_VERSION = 3;
/** Alignment of the data section and of every tensor when `general.alignment` is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** The types of scalar metadata values, by the names used here. */
export type GGUFScalarType =
  | "u8"
  | "i8"
  | "u16"
  | "i16"
  | "u32"
  | "i32"
  | "f32"
  | "bool"
  | "string"
  | "u64"
  | "i64"
  | "f64";

/** A scalar's JavaScript value: numbers (bigint or number for the 64-bit integers), booleans, strings. */
export type GGUFScalar = number | bigint | boolean | string;

/** A typed metadata value: a scalar, or an array of scalars of one type. */
export type GGUFValue =
  | { readonly type: GGUFScalarType; readonly value: GGUFScalar }
  | { readonly type: "array"; readonly itemType: GGUFScalarType; readonly values: readonly GGUFScalar[] };

/** The metadata of a file, in file order. */
export type GGUFMetadata = Map<string, GGUFValue>;

/** A tensor to store: name, `ggml_type` and row-major shape (outermost first). */
export interface GGUFTensorEntry {
  /** Tensor name (at most 64 bytes, as llama.cpp requires). */
  readonly name: string;
  /** Storage type. */
  readonly type: GGMLType;
  /** Row-major shape, outermost first (the file stores it reversed). */
  readonly shape: readonly number[];
}

/** A tensor of a file: where its data is. */
export interface GGUFTensorInfo extends GGUFTensorEntry {
  /** Offset of the data from the start of the file. */
  readonly offset: number;
  /** Bytes of data. */
  readonly byteLength: number;
}

/** The value type numbers of the file, by name (`array` is 9). */
export const GGUF_VALUE_TYPES: Readonly<Record<GGUFScalarType | "array", number>> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
};

const RANGES: Partial<Record<GGUFScalarType, [number, number]>> = {
  u8: [0, 0xff],
  i8: [-0x80, 0x7f],
  u16: [0, 0xffff],
  i16: [-0x8000, 0x7fff],
  u32: [0, 0xffffffff],
  i32: [-0x80000000, 0x7fffffff],
};

function checkScalar(type: GGUFScalarType, v: GGUFScalar, what: string): void {
  const bad = (expected: string) =>
    new InvalidArgumentError(`Cannot make a GGUF ${type} value of ${what}: expected ${expected}`);
  if (type === "string") {
    if (typeof v !== "string") throw bad("a string");
  } else if (type === "bool") {
    if (typeof v !== "boolean") throw bad("true or false");
  } else if (type === "f32" || type === "f64") {
    if (typeof v !== "number") throw bad("a number");
  } else if (type === "u64" || type === "i64") {
    const big = typeof v === "bigint"
      ? v
      : typeof v === "number" && Number.isSafeInteger(v)
      ? BigInt(v)
      : null;
    if (big === null) throw bad("an integer");
    if (type === "u64" ? big < 0n || big >= 1n << 64n : big < -(1n << 63n) || big >= 1n << 63n) {
      throw bad(`an integer in the range of ${type}`);
    }
  } else {
    const [lo, hi] = RANGES[type]!;
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
      throw bad(`an integer in [${lo}, ${hi}]`);
    }
  }
}

/**
 * A typed scalar metadata value, checked (an integer in range, a boolean, a string).
 *
 * @throws {InvalidArgumentError} when `value` does not fit `type`.
 *
 * @example
 * ```ts
 * import { ggufValue } from "./gguf_format.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(ggufValue("u32", 4096), { type: "u32", value: 4096 });
 * assertThrows(() => ggufValue("u8", 300), Error, "in [0, 255]");
 * ```
 */
export function ggufValue(type: GGUFScalarType, value: GGUFScalar): GGUFValue {
  checkScalar(type, value, JSON.stringify(String(value)));
  return { type, value };
}

/**
 * A typed array metadata value, every item checked.
 *
 * @throws {InvalidArgumentError} naming the first item that does not fit `itemType`.
 *
 * @example
 * ```ts
 * import { ggufArray } from "./gguf_format.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ggufArray("string", ["<s>", "</s>"]).type, "array");
 * ```
 */
export function ggufArray(itemType: GGUFScalarType, values: readonly GGUFScalar[]): GGUFValue {
  values.forEach((v, i) => checkScalar(itemType, v, `item ${i}`));
  return { type: "array", itemType, values };
}

/**
 * The JavaScript value of a metadata value (an array's items as an array), or undefined.
 *
 * @example
 * ```ts
 * import { ggufArray, ggufPlain, ggufValue } from "./gguf_format.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ggufPlain(ggufValue("f32", 0.5)), 0.5);
 * assertEquals(ggufPlain(ggufArray("i32", [1, 2])), [1, 2]);
 * assertEquals(ggufPlain(undefined), undefined);
 * ```
 */
export function ggufPlain(value: GGUFValue | undefined): GGUFScalar | readonly GGUFScalar[] | undefined {
  if (value === undefined) return undefined;
  return value.type === "array" ? value.values : value.value;
}
