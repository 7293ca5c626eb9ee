/**
 * The safetensors header, both ways: the element types ({@linkcode SafetensorsDtype}), parsing and
 * validating a header read from a file ({@linkcode parseSafetensorsHeader}, {@linkcode parseHeaderLength}),
 * and laying out and encoding the header of a file to write ({@linkcode encodeSafetensorsHeader}).
 * `safetensors_reader.ts` and `safetensors_writer.ts` do the file I/O around it.
 *
 * The format: an 8-byte little-endian u64 `N`, then `N` bytes of UTF-8 JSON mapping each tensor name to
 * `{ "dtype", "shape", "data_offsets": [begin, end] }` (offsets relative to the data section, which
 * starts at `8 + N`) plus an optional `"__metadata__"` map of strings, then the data. Every malformed
 * header is reported as a {@linkcode SafetensorsError} saying what was expected and what was found,
 * before any allocation larger than the file itself.
 *
 * @module
 */

import { SafetensorsError } from "../base/mod.ts";
import { bf16ToF32, type DType, f16ToF32 } from "../core/mod.ts";

/** Element types this module reads and writes. */
export type SafetensorsDtype = "F32" | "F16" | "BF16" | "U8" | "I32" | "I64";

const BYTES_PER_ELEMENT: Readonly<Record<SafetensorsDtype, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  U8: 1,
  I32: 4,
  I64: 8,
};

/** Largest header accepted (the reference implementation uses the same bound). */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";

/**
 * Whether a value names a supported dtype.
 *
 * @example
 * ```ts
 * import { isSafetensorsDtype } from "./safetensors_header.ts";
 * import { assert } from "@std/assert";
 * assert(isSafetensorsDtype("BF16") && !isSafetensorsDtype("F64"));
 * ```
 */
export function isSafetensorsDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === "string" && Object.hasOwn(BYTES_PER_ELEMENT, value);
}

/**
 * Bytes per element of a dtype: F32 4, F16 2, BF16 2, U8 1, I32 4, I64 8.
 *
 * @example
 * ```ts
 * import { bytesPerElement } from "./safetensors_header.ts";
 * import { assert } from "@std/assert";
 * assert(bytesPerElement("BF16") === 2);
 * ```
 */
export function bytesPerElement(dtype: SafetensorsDtype): number {
  if (!isSafetensorsDtype(dtype)) {
    throw new SafetensorsError(
      `Cannot size dtype: expected one of ${dtypeList()}, found ${showValue(dtype)}`,
    );
  }
  return BYTES_PER_ELEMENT[dtype];
}

/** The safetensors dtype of each tensor dtype (the one map between the two names). */
const SAFETENSORS_OF: Readonly<Record<DType, SafetensorsDtype>> = {
  f32: "F32",
  bf16: "BF16",
  f16: "F16",
  u8: "U8",
  i32: "I32",
};

/**
 * The safetensors dtype a tensor of `dtype` is stored as.
 *
 * @example
 * ```ts
 * import { safetensorsDtypeOf } from "./safetensors_header.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals([safetensorsDtypeOf("bf16"), safetensorsDtypeOf("u8")], ["BF16", "U8"]);
 * ```
 */
export function safetensorsDtypeOf(dtype: DType): SafetensorsDtype {
  return SAFETENSORS_OF[dtype];
}

/**
 * The f32 values of a float tensor's raw little-endian bytes (F32, BF16 or F16; a view of `bytes` where
 * its offset allows, else a copy), or null for another dtype: the one decoder of float weights read from
 * safetensors files.
 *
 * @example
 * ```ts
 * import { floatValues } from "./safetensors_header.ts";
 * import { assertEquals } from "@std/assert";
 * const bf16 = new Uint8Array(new Uint16Array([0x3f80, 0xc000]).buffer); // 1, -2
 * assertEquals([...floatValues("BF16", bf16)!], [1, -2]);
 * assertEquals(floatValues("I32", new Uint8Array(4)), null);
 * ```
 */
export function floatValues(dtype: SafetensorsDtype, bytes: Uint8Array): Float32Array | null {
  const width = dtype === "F32" ? 4 : dtype === "BF16" || dtype === "F16" ? 2 : 0;
  if (width === 0) return null;
  const aligned = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  const n = aligned.byteLength / width;
  if (dtype === "F32") return new Float32Array(aligned.buffer, aligned.byteOffset, n);
  const half = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
  return dtype === "BF16" ? bf16ToF32(half) : f16ToF32(half);
}

/** Where one tensor lies in a safetensors file. */
export interface TensorInfo {
  /** Tensor name (a key of the header). */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDtype;
  /** Dimensions; `[]` for a scalar. */
  readonly shape: number[];
  /** Bytes of data: product(shape) * bytesPerElement(dtype). */
  readonly byteLength: number;
  /** Offset of the first byte, relative to the start of the data section. */
  readonly dataOffset: number;
}

/** The parsed header of a safetensors file. */
export interface SafetensorsHeader {
  /** Every tensor, in the order of their data in the file. */
  tensors: TensorInfo[];
  /** The `__metadata__` map (empty when absent). */
  metadata: Record<string, string>;
  /** Absolute file offset of the data section: 8 + header length. */
  dataStart: number;
}

/** One tensor to write: its name, dtype and shape. */
export interface TensorEntry {
  /** Tensor name: non-empty, unique within the file, not `__metadata__`. */
  name: string;
  /** Element type. */
  dtype: SafetensorsDtype;
  /** Dimensions; `[]` for a scalar. */
  shape: readonly number[];
}

/**
 * A value as error messages quote it: JSON, cut to 80 characters (internal to the safetensors modules).
 *
 * @example
 * ```ts
 * import { showValue } from "./safetensors_header.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(showValue("w"), '"w"');
 * assertEquals(showValue("x".repeat(100)).length, 80);
 * ```
 */
export function showValue(value: unknown): string {
  try {
    const s = JSON.stringify(value);
    if (s !== undefined) return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    // fall through: not serializable
  }
  return String(value);
}

/** Makes the error for one malformed header: "Cannot read SOURCE: why" or "Cannot write SOURCE: why". */
type Bad = (why: string, cause?: unknown) => SafetensorsError;

function badHeader(verb: "read" | "write", source: string): Bad {
  return (why, cause) =>
    new SafetensorsError(`Cannot ${verb} ${source}: ${why}`, cause === undefined ? undefined : { cause });
}

function dtypeList(): string {
  return Object.keys(BYTES_PER_ELEMENT).join(", ");
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

/** product(shape) * bpe, or -1 when the shape is invalid or the size exceeds `limit`. */
function byteSize(shape: unknown, bpe: number, limit: number): number {
  if (!Array.isArray(shape) || !shape.every(isCount)) return -1;
  if (shape.includes(0)) return 0;
  let bytes = bpe;
  for (const d of shape as number[]) {
    bytes *= d;
    if (bytes > limit) return Infinity;
  }
  return bytes;
}

/**
 * The header length `N` from the first 8 bytes of a file of `fileSize` bytes, checked against the file
 * and against the largest header accepted (100 MB, as the reference implementation), so that a reader
 * never allocates for an absurd length.
 *
 * @param prefix The first 8 bytes of the file.
 * @param fileSize Size of the whole file in bytes.
 * @param source What to name in error messages (usually the path).
 * @throws {SafetensorsError} "Cannot read SOURCE: ..." when the length is past the end or over the limit.
 *
 * @example
 * ```ts
 * import { parseHeaderLength } from "./safetensors_header.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const prefix = new Uint8Array([16, 0, 0, 0, 0, 0, 0, 0]);
 * assertEquals(parseHeaderLength(prefix, 8 + 16 + 4, "x.safetensors"), 16);
 * assertThrows(() => parseHeaderLength(prefix, 20, "x.safetensors"), Error, "past the end");
 * ```
 */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, source: string): number {
  const bad = badHeader("read", source);
  if (prefix.byteLength !== 8) throw bad(`the header length takes 8 bytes, got ${prefix.byteLength}`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8)) throw bad(`header length ${n} is past the end of the ${fileSize}-byte file`);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw bad(`header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  return Number(n);
}

/**
 * Parses and validates the JSON header of a safetensors file. Pure: takes the `N` header bytes (after
 * the 8-byte length) and the size of the whole file, and checks every entry against the data section
 * (`fileSize - 8 - N` bytes): known dtype, valid shape, offsets inside the data section, byte count equal
 * to the shape's, no two tensors overlapping, metadata values all strings.
 *
 * @param headerBytes The JSON header, without the 8-byte length prefix.
 * @param fileSize Size of the whole file in bytes.
 * @param source What to name in error messages (usually the path).
 * @throws {SafetensorsError} "Cannot read SOURCE: ..." for every malformed header.
 *
 * @example
 * ```ts
 * import { parseSafetensorsHeader } from "./safetensors_header.ts";
 * import { assert } from "@std/assert";
 * const json = new TextEncoder().encode('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}');
 * const h = parseSafetensorsHeader(json, 8 + json.length + 8);
 * assert(h.tensors[0].byteLength === 8 && h.dataStart === 8 + json.length);
 * ```
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  source = "safetensors header",
): SafetensorsHeader {
  const bad = badHeader("read", source);
  const dataStart = 8 + headerBytes.length;
  if (!isCount(fileSize) || fileSize < dataStart) {
    throw bad(`file of ${fileSize} bytes is shorter than its ${headerBytes.length}-byte header plus 8`);
  }
  const dataSize = fileSize - dataStart;
  const header = decodeHeader(headerBytes, bad);
  const metadata: [string, string][] = [];
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA_KEY) metadata.push(...parseMetadata(entry, bad));
    else tensors.push(parseEntry(name, entry, dataSize, bad));
  }
  tensors.sort((a, b) => a.dataOffset - b.dataOffset);
  checkOverlaps(tensors, bad);
  return { tensors, metadata: Object.fromEntries(metadata), dataStart };
}

/** The header's JSON object: valid UTF-8, valid JSON, an object, no key twice. */
function decodeHeader(headerBytes: Uint8Array, bad: Bad): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch (e) {
    throw bad("header is not valid UTF-8", e);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw bad(`header is not valid JSON (${(e as Error).message})`, e);
  }
  if (!isRecord(header)) throw bad(`header must be a JSON object, found ${showValue(header)}`);
  const duplicate = duplicateKey(text);
  if (duplicate) {
    throw bad(`the header has the key ${showValue(duplicate)} twice (JSON.parse would keep the last one)`);
  }
  return header;
}

/** The `__metadata__` entry as key-value pairs: null or an object of strings. */
function parseMetadata(entry: unknown, bad: Bad): [string, string][] {
  if (entry === null) return [];
  if (!isRecord(entry)) throw bad(`__metadata__ must be an object of strings, found ${showValue(entry)}`);
  const out: [string, string][] = [];
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== "string") throw bad(`__metadata__.${k} must be a string, found ${showValue(v)}`);
    out.push([k, v]);
  }
  return out;
}

/** One tensor's entry, checked against a data section of `dataSize` bytes. */
function parseEntry(name: string, entry: unknown, dataSize: number, bad: Bad): TensorInfo {
  const where = `tensor ${showValue(name)}`;
  if (name === "") throw bad("a tensor has an empty name");
  if (!isRecord(entry)) throw bad(`${where} must be an object, found ${showValue(entry)}`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isSafetensorsDtype(dtype)) {
    throw bad(`${where} has dtype ${showValue(dtype)}, expected one of ${dtypeList()}`);
  }
  const expected = byteSize(shape, BYTES_PER_ELEMENT[dtype], dataSize);
  if (expected < 0) {
    throw bad(`${where} has shape ${showValue(shape)}, expected an array of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]
  ) {
    throw bad(
      `${where} has data_offsets ${showValue(offsets)}, expected [begin, end] with 0 <= begin <= end`,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end > dataSize) {
    throw bad(
      `${where} ends at byte ${end} of the data section, which has only ${dataSize} (truncated file?)`,
    );
  }
  if (end - begin !== expected) {
    const want = expected === Infinity ? "more than the file holds" : `${expected}`;
    throw bad(`${where} has ${end - begin} bytes, but ${dtype} ${showValue(shape)} needs ${want}`);
  }
  return { name, dtype, shape: [...shape as number[]], byteLength: end - begin, dataOffset: begin };
}

/** Refuses two non-empty tensors whose bytes overlap (`tensors` sorted by offset). */
function checkOverlaps(tensors: readonly TensorInfo[], bad: Bad): void {
  let previous: TensorInfo | undefined;
  for (const t of tensors) {
    if (t.byteLength === 0) continue;
    if (previous && t.dataOffset < previous.dataOffset + previous.byteLength) {
      throw bad(
        `tensors ${showValue(previous.name)} [${previous.dataOffset}, ${
          previous.dataOffset + previous.byteLength
        }) ` +
          `and ${showValue(t.name)} [${t.dataOffset}, ${t.dataOffset + t.byteLength}) overlap`,
      );
    }
    previous = t;
  }
}

/** The header of a file to write, from {@linkcode encodeSafetensorsHeader}. */
export interface EncodedHeader {
  /** Every tensor with its place in the data section, in the order given. */
  tensors: TensorInfo[];
  /** The first bytes of the file: the 8-byte length, then the JSON padded with spaces to a multiple of 8. */
  bytes: Uint8Array;
  /** Bytes of the data section: the sum of the tensors' sizes. */
  dataSize: number;
}

/**
 * Lays out a file to write and encodes its header: validates the entries (names non-empty and unique,
 * dtypes known, shapes valid) and the metadata (values strings), places the tensors contiguously in the
 * order given, and pads the JSON with spaces so that the data starts at a multiple of 8 bytes.
 *
 * @param entries The tensors, in the order their data will follow.
 * @param metadata The `__metadata__` map (omitted from the header when empty).
 * @param source What to name in error messages (usually the path).
 * @throws {SafetensorsError} "Cannot write SOURCE: ..." for a bad entry or metadata.
 *
 * @example
 * ```ts
 * import { encodeSafetensorsHeader, parseSafetensorsHeader } from "./safetensors_header.ts";
 * import { assertEquals } from "@std/assert";
 * const h = encodeSafetensorsHeader([{ name: "w", dtype: "F32", shape: [2, 3] }], { format: "pt" }, "w.st");
 * assertEquals([h.bytes.length % 8, h.dataSize], [0, 24]);
 * const parsed = parseSafetensorsHeader(h.bytes.subarray(8), h.bytes.length + h.dataSize);
 * assertEquals(parsed.tensors, h.tensors);
 * ```
 */
export function encodeSafetensorsHeader(
  entries: readonly TensorEntry[],
  metadata: Readonly<Record<string, string>> | undefined,
  source: string,
): EncodedHeader {
  const bad = badHeader("write", source);
  const header: [string, unknown][] = [];
  if (metadata !== undefined) {
    if (!isRecord(metadata)) throw bad(`metadata must be an object of strings, found ${showValue(metadata)}`);
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw bad(`metadata ${showValue(k)} must be a string, found ${showValue(v)}`);
      }
    }
    if (Object.keys(metadata).length > 0) header.push([METADATA_KEY, { ...metadata }]);
  }
  const tensors = layout(entries, bad);
  for (const t of tensors) {
    header.push([t.name, {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [t.dataOffset, t.dataOffset + t.byteLength],
    }]);
  }
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const padded = json.length + ((8 - (json.length % 8)) % 8);
  const bytes = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  const last = tensors.at(-1);
  return { tensors, bytes, dataSize: last ? last.dataOffset + last.byteLength : 0 };
}

/** The entries placed one after another from offset 0, each checked. */
function layout(entries: readonly TensorEntry[], bad: Bad): TensorInfo[] {
  const tensors: TensorInfo[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const e of entries) {
    if (typeof e.name !== "string" || e.name === "" || e.name === METADATA_KEY) {
      throw bad(
        `tensor name ${
          showValue(e.name)
        } is not allowed: expected a non-empty string other than __metadata__`,
      );
    }
    if (seen.has(e.name)) throw bad(`tensor ${showValue(e.name)} appears twice`);
    seen.add(e.name);
    if (!isSafetensorsDtype(e.dtype)) {
      throw bad(
        `tensor ${showValue(e.name)} has dtype ${showValue(e.dtype)}, expected one of ${dtypeList()}`,
      );
    }
    const bytes = byteSize(e.shape, BYTES_PER_ELEMENT[e.dtype], Number.MAX_SAFE_INTEGER - offset);
    if (bytes < 0) {
      throw bad(
        `tensor ${showValue(e.name)} has shape ${showValue(e.shape)}, expected non-negative integers`,
      );
    }
    if (bytes === Infinity) {
      throw bad(`tensor ${showValue(e.name)} of shape ${showValue(e.shape)} is too large`);
    }
    tensors.push({
      name: e.name,
      dtype: e.dtype,
      shape: [...e.shape],
      byteLength: bytes,
      dataOffset: offset,
    });
    offset += bytes;
  }
  return tensors;
}

/**
 * The first key that appears twice in one object of a JSON text (which `JSON.parse` accepts, keeping the
 * last value), or null. The text must be valid JSON.
 */
function duplicateKey(text: string): string | null {
  const seen: (Set<string> | null)[] = []; // one entry per open container: a Set for objects, null for arrays
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") seen.push(new Set()), expectKey = true;
    else if (c === "[") seen.push(null), expectKey = false;
    else if (c === "}" || c === "]") seen.pop(), expectKey = false;
    else if (c === ",") expectKey = seen.at(-1) instanceof Set;
    else if (c === ":") expectKey = false;
    else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string, keys = seen.at(-1)!;
        if (keys.has(key)) return key;
        keys.add(key);
      }
      i = j;
    }
  }
  return null;
}
