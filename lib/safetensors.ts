/**
 * Reading and writing safetensors files, streaming: the reader reads only the header when it opens a
 * file and then exactly the bytes of each tensor asked for; the writer lays the file out from a list of
 * entries and then takes each tensor's bytes in order, in chunks of any size, so that multi-GB
 * checkpoints never sit in memory whole. The writer is atomic: it writes a temporary file beside the
 * target and renames it over the target only once every byte has come, so a failure or a crash leaves
 * the previous file (or none) in place, never a truncated one.
 *
 * The format: an 8-byte little-endian u64 `N`, then `N` bytes of UTF-8 JSON mapping each tensor name to
 * `{ "dtype", "shape", "data_offsets": [begin, end] }` (offsets relative to the data section, which
 * starts at `8 + N`) plus an optional `"__metadata__"` map of strings, then the data. Every malformed
 * file is reported as a {@linkcode SafetensorsError} saying what was expected and what was found,
 * before any allocation larger than the file itself.
 *
 * @module
 */

import { AtomicFile } from "./atomic_file.ts";
import { SafetensorsError } from "./errors.ts";

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
 * import { isSafetensorsDtype } from "./safetensors.ts";
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
 * import { bytesPerElement } from "./safetensors.ts";
 * import { assert } from "@std/assert";
 * assert(bytesPerElement("BF16") === 2);
 * ```
 */
export function bytesPerElement(dtype: SafetensorsDtype): number {
  if (!isSafetensorsDtype(dtype)) {
    throw new SafetensorsError(`Cannot size dtype: expected one of ${dtypeList()}, found ${show(dtype)}`);
  }
  return BYTES_PER_ELEMENT[dtype];
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

/** One tensor with its bytes, for {@linkcode writeSafetensors}. */
export interface TensorData extends TensorEntry {
  /** Raw little-endian bytes: exactly product(shape) * bytesPerElement(dtype) of them. */
  data: Uint8Array;
}

function show(value: unknown): string {
  try {
    const s = JSON.stringify(value);
    if (s !== undefined) return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    // fall through: not serializable
  }
  return String(value);
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
 * import { parseSafetensorsHeader } from "./safetensors.ts";
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
  const bad = (why: string, cause?: unknown) =>
    new SafetensorsError(`Cannot read ${source}: ${why}`, cause === undefined ? undefined : { cause });
  const dataStart = 8 + headerBytes.length;
  if (!isCount(fileSize) || fileSize < dataStart) {
    throw bad(`file of ${fileSize} bytes is shorter than its ${headerBytes.length}-byte header plus 8`);
  }
  const dataSize = fileSize - dataStart;
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
  if (!isRecord(header)) throw bad(`header must be a JSON object, found ${show(header)}`);
  const duplicate = duplicateKey(text);
  if (duplicate) {
    throw bad(`the header has the key ${show(duplicate)} twice (JSON.parse would keep the last one)`);
  }

  const metadata: [string, string][] = [];
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (entry === null) continue;
      if (!isRecord(entry)) throw bad(`__metadata__ must be an object of strings, found ${show(entry)}`);
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") throw bad(`__metadata__.${k} must be a string, found ${show(v)}`);
        metadata.push([k, v]);
      }
      continue;
    }
    const where = `tensor ${show(name)}`;
    if (name === "") throw bad("a tensor has an empty name");
    if (!isRecord(entry)) throw bad(`${where} must be an object, found ${show(entry)}`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isSafetensorsDtype(dtype)) {
      throw bad(`${where} has dtype ${show(dtype)}, expected one of ${dtypeList()}`);
    }
    const expected = byteSize(shape, BYTES_PER_ELEMENT[dtype], dataSize);
    if (expected < 0) {
      throw bad(`${where} has shape ${show(shape)}, expected an array of non-negative integers`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]
    ) {
      throw bad(`${where} has data_offsets ${show(offsets)}, expected [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataSize) {
      throw bad(
        `${where} ends at byte ${end} of the data section, which has only ${dataSize} (truncated file?)`,
      );
    }
    if (end - begin !== expected) {
      const want = expected === Infinity ? "more than the file holds" : `${expected}`;
      throw bad(`${where} has ${end - begin} bytes, but ${dtype} ${show(shape)} needs ${want}`);
    }
    tensors.push({ name, dtype, shape: [...shape as number[]], byteLength: end - begin, dataOffset: begin });
  }
  tensors.sort((a, b) => a.dataOffset - b.dataOffset);
  let previous: TensorInfo | undefined;
  for (const t of tensors) {
    if (t.byteLength === 0) continue;
    if (previous && t.dataOffset < previous.dataOffset + previous.byteLength) {
      throw bad(
        `tensors ${show(previous.name)} [${previous.dataOffset}, ${
          previous.dataOffset + previous.byteLength
        }) ` +
          `and ${show(t.name)} [${t.dataOffset}, ${t.dataOffset + t.byteLength}) overlap`,
      );
    }
    previous = t;
  }
  return { tensors, metadata: Object.fromEntries(metadata), dataStart };
}

async function readFully(file: Deno.FsFile, dst: Uint8Array): Promise<boolean> {
  let done = 0;
  while (done < dst.length) {
    const n = await file.read(dst.subarray(done));
    if (n === null) return false;
    done += n;
  }
  return true;
}

async function writeFully(file: Deno.FsFile, src: Uint8Array): Promise<void> {
  let done = 0;
  while (done < src.length) done += await file.write(src.subarray(done));
}

/**
 * Reads tensors from a safetensors file on demand. {@linkcode SafetensorsReader.open} reads and
 * validates only the header; {@linkcode SafetensorsReader.read} reads exactly one tensor's bytes.
 * Reads on one reader run one at a time, in call order.
 *
 * @example
 * ```ts
 * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
 * import { assert } from "@std/assert";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, [{ name: "b", dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) }]);
 * using reader = await SafetensorsReader.open(path);
 * assert(reader.has("b") && reader.info("b").byteLength === 3);
 * assert((await reader.read("b"))[2] === 3);
 * await Deno.remove(path);
 * ```
 */
export class SafetensorsReader implements Disposable {
  /** Every tensor, in the order of their data in the file. */
  readonly tensors: readonly TensorInfo[];
  /** The `__metadata__` map (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The path as given to {@linkcode SafetensorsReader.open}. */
  readonly path: string;
  /** Size of the file when it was opened. */
  readonly fileSize: number;
  readonly #file: Deno.FsFile;
  readonly #dataStart: number;
  readonly #byName: Map<string, TensorInfo>;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(path: string, file: Deno.FsFile, fileSize: number, header: SafetensorsHeader) {
    this.path = path;
    this.#file = file;
    this.fileSize = fileSize;
    this.tensors = header.tensors;
    this.metadata = header.metadata;
    this.#dataStart = header.dataStart;
    this.#byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /**
   * Opens a file and reads and validates its header (never the data).
   *
   * @throws {SafetensorsError} "Cannot read PATH: ..." when the file cannot be opened or is malformed.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, [{ name: "x", dtype: "F32", shape: [], data: new Uint8Array(4) }], { a: "b" });
   * using reader = await SafetensorsReader.open(path);
   * assert(reader.tensors.length === 1 && reader.metadata.a === "b");
   * await Deno.remove(path);
   * ```
   */
  static async open(path: string | URL): Promise<SafetensorsReader> {
    const name = path instanceof URL ? path.href : path;
    const bad = (why: string, cause?: unknown) =>
      new SafetensorsError(`Cannot read ${name}: ${why}`, cause === undefined ? undefined : { cause });
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw bad((e as Error).message, e);
    }
    try {
      const { size, isFile } = await file.stat();
      if (!isFile) throw bad("not a regular file");
      if (size < 8) throw bad(`file has ${size} bytes, fewer than the 8 of the header length`);
      const prefix = new Uint8Array(8);
      if (!await readFully(file, prefix)) throw bad("file ended inside the header length");
      const n = new DataView(prefix.buffer).getBigUint64(0, true);
      if (n > BigInt(size - 8)) throw bad(`header length ${n} is past the end of the ${size}-byte file`);
      if (n > BigInt(MAX_HEADER_BYTES)) {
        throw bad(`header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
      }
      const headerBytes = new Uint8Array(Number(n));
      if (!await readFully(file, headerBytes)) {
        throw bad("file ended inside the header (changed while reading?)");
      }
      return new SafetensorsReader(name, file, size, parseSafetensorsHeader(headerBytes, size, name));
    } catch (e) {
      file.close();
      if (e instanceof SafetensorsError) throw e;
      throw bad((e as Error).message, e);
    }
  }

  /**
   * Whether the file has a tensor of this name.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, [{ name: "x", dtype: "U8", shape: [0], data: new Uint8Array(0) }]);
   * using reader = await SafetensorsReader.open(path);
   * assert(reader.has("x") && !reader.has("y"));
   * await Deno.remove(path);
   * ```
   */
  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /**
   * Dtype, shape and location of a tensor.
   *
   * @throws {SafetensorsError} when there is no tensor of this name.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, [{ name: "x", dtype: "I32", shape: [2, 1], data: new Uint8Array(8) }]);
   * using reader = await SafetensorsReader.open(path);
   * assert(reader.info("x").shape[0] === 2 && reader.info("x").dtype === "I32");
   * await Deno.remove(path);
   * ```
   */
  info(name: string): TensorInfo {
    const info = this.#byName.get(name);
    if (!info) {
      throw new SafetensorsError(`Cannot read ${this.path}: no tensor named ${show(name)}`);
    }
    return info;
  }

  /**
   * Reads one tensor's bytes (exactly those, from disk) into a new buffer of their own.
   *
   * @throws {SafetensorsError} when the tensor is unknown, the reader is closed or the file is short.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * const w = new Float32Array([1.5, -2]);
   * await writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2], data: new Uint8Array(w.buffer) }]);
   * using reader = await SafetensorsReader.open(path);
   * assert(new Float32Array((await reader.read("w")).buffer)[1] === -2);
   * await Deno.remove(path);
   * ```
   */
  async read(name: string): Promise<Uint8Array> {
    const dst = new Uint8Array(this.info(name).byteLength);
    await this.readInto(name, dst);
    return dst;
  }

  /**
   * Reads one tensor's bytes into `dst`, which must have exactly the tensor's byte length.
   *
   * @throws {SafetensorsError} when the tensor is unknown, `dst` has the wrong size, the reader is
   * closed or the file is short.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, [{ name: "b", dtype: "U8", shape: [2], data: new Uint8Array([7, 9]) }]);
   * using reader = await SafetensorsReader.open(path);
   * const pool = new Uint8Array(16);
   * await reader.readInto("b", pool.subarray(4, 6));
   * assert(pool[5] === 9);
   * await Deno.remove(path);
   * ```
   */
  readInto(name: string, dst: Uint8Array): Promise<void> {
    const info = this.info(name);
    if (dst.byteLength !== info.byteLength) {
      return Promise.reject(
        new SafetensorsError(
          `Cannot read ${this.path}: tensor ${
            show(name)
          } has ${info.byteLength} bytes, destination has ${dst.byteLength}`,
        ),
      );
    }
    const run = this.#queue.then(() => this.#readAt(info, dst));
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Reads one tensor's bytes synchronously into a new buffer (for code that cannot await, such as a
   * model's weight source; do not mix with pending asynchronous reads of the same reader).
   *
   * @throws {SafetensorsError} when the tensor is unknown, the reader is closed or the file is short.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, [{ name: "b", dtype: "U8", shape: [2], data: new Uint8Array([7, 9]) }]);
   * using reader = await SafetensorsReader.open(path);
   * assert(reader.readSync("b")[1] === 9);
   * await Deno.remove(path);
   * ```
   */
  readSync(name: string): Uint8Array {
    const info = this.info(name);
    const dst = new Uint8Array(info.byteLength);
    const bad = (why: string, cause?: unknown) =>
      new SafetensorsError(`Cannot read ${this.path}: ${why}`, cause === undefined ? undefined : { cause });
    if (this.#closed) throw bad("the reader is closed");
    let done = 0;
    try {
      this.#file.seekSync(this.#dataStart + info.dataOffset, Deno.SeekMode.Start);
      while (done < dst.byteLength) {
        const n = this.#file.readSync(dst.subarray(done));
        if (n === null || n === 0) break;
        done += n;
      }
    } catch (e) {
      throw bad(`reading tensor ${show(info.name)} failed: ${(e as Error).message}`, e);
    }
    if (done < dst.byteLength) {
      throw bad(`file ended inside tensor ${show(info.name)} (changed since it was opened?)`);
    }
    return dst;
  }

  async #readAt(info: TensorInfo, dst: Uint8Array): Promise<void> {
    const bad = (why: string, cause?: unknown) =>
      new SafetensorsError(`Cannot read ${this.path}: ${why}`, cause === undefined ? undefined : { cause });
    if (this.#closed) throw bad("the reader is closed");
    if (dst.byteLength === 0) return;
    let complete: boolean;
    try {
      await this.#file.seek(this.#dataStart + info.dataOffset, Deno.SeekMode.Start);
      complete = await readFully(this.#file, dst);
    } catch (e) {
      throw bad(`reading tensor ${show(info.name)} failed: ${(e as Error).message}`, e);
    }
    if (!complete) throw bad(`file ended inside tensor ${show(info.name)} (changed since it was opened?)`);
  }

  /**
   * Closes the file. Idempotent; later reads fail.
   *
   * @example
   * ```ts
   * import { SafetensorsReader, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, []);
   * const reader = await SafetensorsReader.open(path);
   * reader.close();
   * await Deno.remove(path);
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
  }

  /** Closes the file (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}

interface Slot {
  info: TensorInfo;
  written: number;
}

/**
 * Writes a safetensors file in one pass without holding it in memory:
 * {@linkcode SafetensorsWriter.create} lays out every tensor (contiguously, in the order given) and
 * writes the header; {@linkcode SafetensorsWriter.write} then takes the tensors' bytes in that order,
 * each in as many chunks as wanted; {@linkcode SafetensorsWriter.close} checks that every byte came.
 * The bytes go to a temporary file in the target's folder (see `atomic_file.ts`) that `close` renames
 * over the target; an incomplete or failed file, or one disposed of without `close`, is removed and
 * the target keeps its previous content.
 *
 * @example
 * ```ts
 * import { readSafetensors, SafetensorsWriter } from "./safetensors.ts";
 * import { assert } from "@std/assert";
 * const path = await Deno.makeTempFile();
 * const writer = await SafetensorsWriter.create(path, [
 *   { name: "a", dtype: "U8", shape: [4] },
 *   { name: "b", dtype: "I64", shape: [] },
 * ]);
 * await writer.write("a", new Uint8Array([1, 2]));
 * await writer.write("a", new Uint8Array([3, 4]));
 * await writer.write("b", new Uint8Array(8));
 * await writer.close();
 * assert((await readSafetensors(path)).get("a")!.data[3] === 4);
 * await Deno.remove(path);
 * ```
 */
export class SafetensorsWriter implements AsyncDisposable {
  /** The path as given to {@linkcode SafetensorsWriter.create}. */
  readonly path: string;
  /** Every tensor with its place in the file, in order. */
  readonly tensors: readonly TensorInfo[];
  /** Size the file has once every tensor is written. */
  readonly fileSize: number;
  readonly #out: AtomicFile;
  readonly #slots: Slot[];
  #index = 0;
  #closed = false;
  #failed = false;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(path: string, out: AtomicFile, tensors: TensorInfo[], fileSize: number) {
    this.path = path;
    this.#out = out;
    this.tensors = tensors;
    this.fileSize = fileSize;
    this.#slots = tensors.map((info) => ({ info, written: 0 }));
  }

  /**
   * Validates the entries (names non-empty and unique, dtypes known, shapes valid, metadata values
   * strings), creates a temporary file beside `path` (which stays untouched until `close`) and writes
   * the header, padded with spaces so that the data starts at a multiple of 8 bytes.
   *
   * @throws {SafetensorsError} "Cannot write PATH: ..." for a bad entry or when the file cannot be created.
   *
   * @example
   * ```ts
   * import { SafetensorsWriter } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * const writer = await SafetensorsWriter.create(path, [{ name: "w", dtype: "BF16", shape: [2] }], { format: "pt" });
   * await writer.write("w", new Uint8Array(4));
   * await writer.close();
   * assert((await Deno.stat(path)).size === writer.fileSize);
   * await Deno.remove(path);
   * ```
   */
  static async create(
    path: string | URL,
    entries: readonly TensorEntry[],
    metadata?: Readonly<Record<string, string>>,
  ): Promise<SafetensorsWriter> {
    const name = path instanceof URL ? path.href : path;
    const bad = (why: string, cause?: unknown) =>
      new SafetensorsError(`Cannot write ${name}: ${why}`, cause === undefined ? undefined : { cause });
    const header: [string, unknown][] = [];
    if (metadata !== undefined) {
      if (!isRecord(metadata)) throw bad(`metadata must be an object of strings, found ${show(metadata)}`);
      for (const [k, v] of Object.entries(metadata)) {
        if (typeof v !== "string") throw bad(`metadata ${show(k)} must be a string, found ${show(v)}`);
      }
      if (Object.keys(metadata).length > 0) header.push([METADATA_KEY, { ...metadata }]);
    }
    const tensors: TensorInfo[] = [];
    const seen = new Set<string>();
    let offset = 0;
    for (const e of entries) {
      if (typeof e.name !== "string" || e.name === "" || e.name === METADATA_KEY) {
        throw bad(
          `tensor name ${show(e.name)} is not allowed: expected a non-empty string other than __metadata__`,
        );
      }
      if (seen.has(e.name)) throw bad(`tensor ${show(e.name)} appears twice`);
      seen.add(e.name);
      if (!isSafetensorsDtype(e.dtype)) {
        throw bad(`tensor ${show(e.name)} has dtype ${show(e.dtype)}, expected one of ${dtypeList()}`);
      }
      const bytes = byteSize(e.shape, BYTES_PER_ELEMENT[e.dtype], Number.MAX_SAFE_INTEGER - offset);
      if (bytes < 0) {
        throw bad(`tensor ${show(e.name)} has shape ${show(e.shape)}, expected non-negative integers`);
      }
      if (bytes === Infinity) throw bad(`tensor ${show(e.name)} of shape ${show(e.shape)} is too large`);
      const info: TensorInfo = {
        name: e.name,
        dtype: e.dtype,
        shape: [...e.shape],
        byteLength: bytes,
        dataOffset: offset,
      };
      tensors.push(info);
      header.push([e.name, { dtype: e.dtype, shape: info.shape, data_offsets: [offset, offset + bytes] }]);
      offset += bytes;
    }
    const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
    const padded = new Uint8Array(json.length + ((8 - (json.length % 8)) % 8)).fill(0x20);
    padded.set(json);
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(padded.length), true);

    let out: AtomicFile;
    try {
      out = await AtomicFile.open(path);
    } catch (e) {
      throw bad((e as Error).message, e);
    }
    try {
      await writeFully(out.file, prefix);
      await writeFully(out.file, padded);
    } catch (e) {
      await out.abort();
      throw bad((e as Error).message, e);
    }
    return new SafetensorsWriter(name, out, tensors, 8 + padded.length + offset);
  }

  /**
   * Appends bytes of tensor `name`. Tensors come in the order given to `create`, each in one or more
   * chunks; empty tensors need no call. Calls on one writer run one at a time, in call order.
   *
   * @throws {SafetensorsError} when the tensor is unknown or out of order, when it would get more
   * bytes than its shape holds, when the previous tensor is incomplete, or after a failed write.
   *
   * @example
   * ```ts
   * import { SafetensorsWriter } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * const writer = await SafetensorsWriter.create(path, [{ name: "x", dtype: "F32", shape: [1] }]);
   * await writer.write("x", new Uint8Array(4));
   * await writer.close();
   * await Deno.remove(path);
   * ```
   */
  write(name: string, bytes: Uint8Array): Promise<void> {
    const run = this.#queue.then(() => this.#write(name, bytes));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #write(name: string, bytes: Uint8Array): Promise<void> {
    const bad = (why: string, cause?: unknown) =>
      new SafetensorsError(`Cannot write ${this.path}: ${why}`, cause === undefined ? undefined : { cause });
    if (this.#closed) throw bad("the writer is closed");
    if (this.#failed) throw bad("an earlier write failed");
    let i = this.#index;
    while (i < this.#slots.length && this.#slots[i].info.name !== name) {
      const { info, written } = this.#slots[i];
      if (written < info.byteLength) {
        const why = this.#slots.slice(0, i).some((s) => s.info.name === name)
          ? "was already written"
          : this.#slots.some((s) => s.info.name === name)
          ? "comes later"
          : "is not in the file";
        throw bad(
          `tensor ${show(name)} ${why}; expected bytes of ${
            show(info.name)
          } (${written} of ${info.byteLength})`,
        );
      }
      i++;
    }
    if (i === this.#slots.length) {
      const why = this.#slots.some((s) => s.info.name === name)
        ? "was already written"
        : "is not in the file";
      throw bad(`tensor ${show(name)} ${why}`);
    }
    const slot = this.#slots[i];
    if (slot.written + bytes.byteLength > slot.info.byteLength) {
      throw bad(
        `tensor ${show(name)} would get ${
          slot.written + bytes.byteLength
        } bytes, its shape holds ${slot.info.byteLength}`,
      );
    }
    this.#index = i;
    try {
      await writeFully(this.#out.file, bytes);
    } catch (e) {
      this.#failed = true;
      throw bad(`writing tensor ${show(name)} failed: ${(e as Error).message}`, e);
    }
    slot.written += bytes.byteLength;
  }

  /**
   * Checks that every tensor got all its bytes, then flushes the file and renames it over the target.
   * Idempotent. An incomplete file is removed (the target keeps its previous content); after a failed
   * {@linkcode SafetensorsWriter.write} the file is removed without a second error (that failure was
   * already reported).
   *
   * @throws {SafetensorsError} naming the first tensor that is incomplete, or when the rename fails.
   *
   * @example
   * ```ts
   * import { SafetensorsWriter } from "./safetensors.ts";
   * import { assert } from "@std/assert";
   * const path = await Deno.makeTempFile();
   * const writer = await SafetensorsWriter.create(path, [{ name: "x", dtype: "U8", shape: [2] }]);
   * await writer.write("x", new Uint8Array(1));
   * const error = await writer.close().catch((e) => e);
   * assert(error instanceof Error && error.message.includes("1 of 2 bytes"));
   * assert((await Deno.stat(path)).size === 0); // the (empty) file that was there is untouched
   * await Deno.remove(path);
   * ```
   */
  close(): Promise<void> {
    const run = this.#queue.then(() => this.#close(true));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #close(commit: boolean): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!commit || this.#failed) return await this.#out.abort();
    const missing = this.#slots.find((s) => s.written < s.info.byteLength);
    if (missing) {
      await this.#out.abort();
      throw new SafetensorsError(
        `Cannot write ${this.path}: tensor ${
          show(missing.info.name)
        } got ${missing.written} of ${missing.info.byteLength} bytes`,
      );
    }
    try {
      await this.#out.commit();
    } catch (e) {
      throw new SafetensorsError(`Cannot write ${this.path}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Removes the temporary file unless {@linkcode SafetensorsWriter.close} already finished it (for
   * `await using` on error paths): the target keeps its previous content.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#queue;
    await this.#close(false);
  }
}

/**
 * Writes a whole (small) safetensors file from tensors in memory, in the order given.
 *
 * @throws {SafetensorsError} for a bad entry, data of the wrong length, or an I/O failure.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile();
 * const w = new Float32Array([1, 2, 3, 4]);
 * await writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2, 2], data: new Uint8Array(w.buffer) }], {
 *   format: "pt",
 * });
 * await Deno.remove(path);
 * ```
 */
export async function writeSafetensors(
  path: string | URL,
  tensors: readonly TensorData[],
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  await using writer = await SafetensorsWriter.create(path, tensors, metadata);
  for (const [i, t] of tensors.entries()) {
    const needed = writer.tensors[i].byteLength;
    if (t.data.byteLength !== needed) {
      throw new SafetensorsError(
        `Cannot write ${writer.path}: tensor ${show(t.name)} has ${t.data.byteLength} bytes of data, ` +
          `${t.dtype} ${show(t.shape)} needs ${needed}`,
      );
    }
    await writer.write(t.name, t.data);
  }
  await writer.close();
}

/**
 * Reads a whole (small) safetensors file: every tensor with its info and bytes, in file order.
 *
 * @throws {SafetensorsError} "Cannot read PATH: ..." when the file is missing or malformed.
 *
 * @example
 * ```ts
 * import { readSafetensors, writeSafetensors } from "./safetensors.ts";
 * import { assert } from "@std/assert";
 * const path = await Deno.makeTempFile();
 * await writeSafetensors(path, [{ name: "n", dtype: "I32", shape: [1], data: new Uint8Array([5, 0, 0, 0]) }]);
 * const file = await readSafetensors(path);
 * assert(new Int32Array(file.get("n")!.data.buffer)[0] === 5);
 * await Deno.remove(path);
 * ```
 */
export async function readSafetensors(
  path: string | URL,
): Promise<Map<string, { info: TensorInfo; data: Uint8Array }>> {
  using reader = await SafetensorsReader.open(path);
  const out = new Map<string, { info: TensorInfo; data: Uint8Array }>();
  for (const info of reader.tensors) out.set(info.name, { info, data: await reader.read(info.name) });
  return out;
}
