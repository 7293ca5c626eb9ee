/**
 * Reading GGUF files (v2 and v3): {@linkcode GGUFReader} parses the header (metadata, tensor infos) without
 * reading the tensor data, checks every count, length and offset against the file's size, and reads one
 * tensor at a time, raw or as f32 (dequantized for the types of `gguf_quant.ts`).
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE_TYPES,
  type GGUFMetadata,
  type GGUFScalar,
  type GGUFScalarType,
  type GGUFTensorInfo,
  type GGUFValue,
} from "./gguf_format.ts";
import { decodeTensor, ggmlTensorBytes, ggmlTypeName, ggmlTypeOf } from "./gguf_quant.ts";

const TYPE_NAMES = Object.fromEntries(Object.entries(GGUF_VALUE_TYPES).map(([k, v]) => [v, k])) as Record<
  number,
  GGUFScalarType | "array"
>;

/** Thrown when the bytes read so far end before the header does: read more and parse again. */
class NeedMore extends Error {}

/** A little-endian cursor over the first bytes of a file of `fileSize` bytes. */
class Cursor {
  pos = 0;
  readonly #view: DataView;
  readonly #bytes: Uint8Array;

  constructor(bytes: Uint8Array, readonly fileSize: number, readonly fail: (why: string) => Error) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  #take(n: number): number {
    if (this.pos + n > this.fileSize) {
      throw this.fail(`the header ends past the end of the file (byte ${this.pos + n})`);
    }
    if (this.pos + n > this.#bytes.length) throw new NeedMore();
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u32(): number {
    return this.#view.getUint32(this.#take(4), true);
  }

  /** A u64 as a number; larger than the file is an error (`what` says what it counts). */
  count(what: string): number {
    const v = this.#view.getBigUint64(this.#take(8), true);
    if (v > BigInt(this.fileSize)) {
      throw this.fail(`${what} ${v} is larger than the file (${this.fileSize} bytes)`);
    }
    return Number(v);
  }

  string(what: string): string {
    const n = this.count(`the length of ${what}`);
    const at = this.#take(n);
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(this.#bytes.subarray(at, at + n));
    } catch {
      throw this.fail(`${what} is not valid UTF-8`);
    }
  }

  scalar(type: GGUFScalarType, what: string): GGUFScalar {
    const v = this.#view;
    switch (type) {
      case "string":
        return this.string(what);
      case "u8":
        return v.getUint8(this.#take(1));
      case "i8":
        return v.getInt8(this.#take(1));
      case "bool": {
        const b = v.getUint8(this.#take(1));
        if (b > 1) throw this.fail(`${what} is a bool of value ${b}`);
        return b === 1;
      }
      case "u16":
        return v.getUint16(this.#take(2), true);
      case "i16":
        return v.getInt16(this.#take(2), true);
      case "u32":
        return v.getUint32(this.#take(4), true);
      case "i32":
        return v.getInt32(this.#take(4), true);
      case "f32":
        return v.getFloat32(this.#take(4), true);
      case "u64":
        return v.getBigUint64(this.#take(8), true);
      case "i64":
        return v.getBigInt64(this.#take(8), true);
      case "f64":
        return v.getFloat64(this.#take(8), true);
    }
  }

  value(what: string): GGUFValue {
    const code = this.u32();
    const type = TYPE_NAMES[code];
    if (!type) throw this.fail(`${what} has an unknown value type ${code}`);
    if (type !== "array") return { type, value: this.scalar(type, what) };
    const itemCode = this.u32();
    const itemType = TYPE_NAMES[itemCode];
    if (!itemType) throw this.fail(`${what} is an array of unknown type ${itemCode}`);
    if (itemType === "array") {
      throw this.fail(`${what} is an array of arrays, which this reader does not read`);
    }
    const n = this.count(`the length of ${what}`);
    const values: GGUFScalar[] = new Array(n);
    for (let i = 0; i < n; i++) values[i] = this.scalar(itemType, `${what}[${i}]`);
    return { type, itemType, values };
  }
}

interface Header {
  version: number;
  metadata: GGUFMetadata;
  tensors: GGUFTensorInfo[];
  alignment: number;
  dataOffset: number;
}

function parseHeader(bytes: Uint8Array, fileSize: number, fail: (why: string) => Error): Header {
  const c = new Cursor(bytes, fileSize, fail);
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) throw fail("not a GGUF file (no GGUF magic)");
  const version = c.u32();
  if (version !== 2 && version !== 3) throw fail(`GGUF version ${version} is not supported (only 2 and 3)`);
  const nTensors = c.count("the tensor count");
  const nKv = c.count("the metadata count");
  const metadata: GGUFMetadata = new Map();
  for (let i = 0; i < nKv; i++) {
    const key = c.string(`metadata key ${i}`);
    if (metadata.has(key)) throw fail(`metadata key ${key} appears twice`);
    metadata.set(key, c.value(`metadata ${key}`));
  }
  const a = metadata.get("general.alignment");
  const alignment = a === undefined ? GGUF_DEFAULT_ALIGNMENT : a.type === "u32" ? a.value as number : NaN;
  if (!(alignment > 0 && alignment % 8 === 0)) throw fail("general.alignment is not a u32 multiple of 8");
  const raw: { name: string; shape: number[]; typeId: number; offset: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.string(`the name of tensor ${i}`);
    if (names.has(name)) throw fail(`tensor ${name} appears twice`);
    names.add(name);
    const nDims = c.u32();
    if (nDims < 1 || nDims > 4) throw fail(`tensor ${name} has ${nDims} dimensions (1 to 4 expected)`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(c.count(`dimension ${d} of tensor ${name}`));
    const typeId = c.u32();
    const offset = c.count(`the offset of tensor ${name}`);
    raw.push({ name, shape: dims.reverse(), typeId, offset });
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  const tensors: GGUFTensorInfo[] = raw.map(({ name, shape, typeId, offset }) => {
    const type = ggmlTypeOf(typeId);
    if (!type) throw fail(`tensor ${name} is ${ggmlTypeName(typeId)}, which this reader does not read`);
    let byteLength: number;
    try {
      byteLength = ggmlTensorBytes(type, shape);
    } catch (e) {
      throw fail(`tensor ${name}: ${(e as Error).message}`);
    }
    if (offset % alignment !== 0) {
      throw fail(`tensor ${name} is at offset ${offset}, not a multiple of ${alignment}`);
    }
    if (dataOffset + offset + byteLength > fileSize) {
      throw fail(
        `tensor ${name} (${byteLength} bytes at ${dataOffset + offset}) ends past the end of the file`,
      );
    }
    return { name, type, shape, offset: dataOffset + offset, byteLength };
  });
  return { version, metadata, tensors, alignment, dataOffset };
}

/**
 * An open GGUF file: its metadata and tensor infos, parsed and checked at {@linkcode GGUFReader.open};
 * tensors are read one at a time. Types outside `gguf_quant.ts`'s (K-quants...) are refused at open.
 *
 * @example
 * ```ts
 * import { GGUFReader, GGUFWriter, ggufValue } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * const metadata = new Map([["general.name", ggufValue("string", "tiny")]]);
 * const writer = await GGUFWriter.create(path, metadata, [{ name: "w", type: "Q8_0", shape: [1, 32] }]);
 * await writer.write("w", new Uint8Array(34));
 * await writer.close();
 * using reader = await GGUFReader.open(path);
 * assertEquals(reader.value("general.name"), "tiny");
 * assertEquals(reader.info("w").shape, [1, 32]);
 * await Deno.remove(path);
 * ```
 */
export class GGUFReader implements Disposable {
  /** The path. */
  readonly path: string;
  /** GGUF version (2 or 3). */
  readonly version: number;
  /** Every metadata value, in file order. */
  readonly metadata: GGUFMetadata;
  /** Every tensor, in file order, with its absolute offset. */
  readonly tensors: readonly GGUFTensorInfo[];
  /** The alignment (`general.alignment`, default 32). */
  readonly alignment: number;
  /** Offset of the data section. */
  readonly dataOffset: number;
  /** Size of the file. */
  readonly fileSize: number;
  readonly #file: Deno.FsFile;
  readonly #byName: Map<string, GGUFTensorInfo>;

  private constructor(path: string, file: Deno.FsFile, fileSize: number, h: Header) {
    this.path = path;
    this.#file = file;
    this.fileSize = fileSize;
    this.version = h.version;
    this.metadata = h.metadata;
    this.tensors = h.tensors;
    this.alignment = h.alignment;
    this.dataOffset = h.dataOffset;
    this.#byName = new Map(h.tensors.map((t) => [t.name, t]));
  }

  /**
   * Opens `path` and parses its header, reading only as much of the file as the header takes.
   *
   * @throws {InvalidArgumentError} "Cannot read PATH: ..." for a file that is not GGUF v2/v3, or whose
   * header is truncated, inconsistent or larger than the file.
   */
  static async open(path: string): Promise<GGUFReader> {
    const fail = (why: string, cause?: unknown) =>
      new InvalidArgumentError(`Cannot read ${path}: ${why}`, cause === undefined ? undefined : { cause });
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw fail((e as Error).message, e);
    }
    try {
      const fileSize = (await file.stat()).size;
      for (let want = Math.min(fileSize, 1 << 20);; want = Math.min(fileSize, want * 4)) {
        const bytes = await readAt(file, 0, want);
        try {
          return new GGUFReader(path, file, fileSize, parseHeader(bytes, fileSize, fail));
        } catch (e) {
          if (!(e instanceof NeedMore) || want === fileSize) throw e;
        }
      }
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The info of tensor `name`; an unknown name throws {@linkcode InvalidArgumentError}. */
  info(name: string): GGUFTensorInfo {
    const t = this.#byName.get(name);
    if (!t) throw new InvalidArgumentError(`Cannot read ${this.path}: no tensor ${name}`);
    return t;
  }

  /** The JavaScript value of metadata `key` (an array's items as an array), or undefined. */
  value(key: string): GGUFScalar | readonly GGUFScalar[] | undefined {
    const v = this.metadata.get(key);
    return v === undefined ? undefined : v.type === "array" ? v.values : v.value;
  }

  /** The stored bytes of tensor `name`. */
  readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return readAt(this.#file, t.offset, t.byteLength);
  }

  /** The elements of tensor `name` as f32 (row-major), dequantized. */
  async read(name: string): Promise<Float32Array> {
    return decodeTensor(this.info(name).type, await this.readRaw(name));
  }

  /** Closes the file. */
  close(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }

  /** Same as close(). */
  [Symbol.dispose](): void {
    this.close();
  }
}

async function readAt(file: Deno.FsFile, offset: number, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  await file.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < n) {
    const got = await file.read(out.subarray(done));
    if (got === null) throw new InvalidArgumentError(`Cannot read a GGUF file: it ends at ${offset + done}`);
    done += got;
  }
  return out;
}
