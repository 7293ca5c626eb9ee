/**
 * Writing GGUF files, streaming and atomic, as `safetensors_writer.ts` writes safetensors:
 * {@linkcode GGUFWriter.create} lays the file out from the metadata and the tensor entries and writes the
 * header; the tensors' bytes then come in order, in chunks of any size, so that a 7B model never sits in
 * memory whole. The file is written beside the target and renamed over it only once complete.
 *
 * @module
 */

import { AtomicFile } from "./atomic_file.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE_TYPES,
  GGUF_VERSION,
  type GGUFScalar,
  type GGUFScalarType,
  type GGUFTensorEntry,
  type GGUFTensorInfo,
  type GGUFValue,
  ggufValue,
} from "./gguf_format.ts";
import { GGML_TYPES, ggmlTensorBytes } from "./gguf_quant.ts";

/** Little-endian bytes, appended. */
class Bytes {
  #buf = new Uint8Array(1024);
  #view = new DataView(this.#buf.buffer);
  length = 0;

  #room(n: number): DataView {
    if (this.length + n > this.#buf.length) {
      const grown = new Uint8Array(Math.max(2 * this.#buf.length, this.length + n));
      grown.set(this.#buf.subarray(0, this.length));
      this.#buf = grown;
      this.#view = new DataView(grown.buffer);
    }
    return this.#view;
  }

  u32(v: number): void {
    this.#room(4).setUint32(this.length, v, true);
    this.length += 4;
  }

  u64(v: number | bigint): void {
    this.#room(8).setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }

  raw(b: Uint8Array): void {
    this.#room(b.length);
    this.#buf.set(b, this.length);
    this.length += b.length;
  }

  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.raw(b);
  }

  scalar(type: GGUFScalarType, v: GGUFScalar): void {
    const view = this.#room(8), at = this.length;
    const sizes: Record<string, number> = { u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4 };
    switch (type) {
      case "string":
        return this.string(v as string);
      case "u8":
      case "bool":
        view.setUint8(at, type === "bool" ? Number(v) : v as number);
        break;
      case "i8":
        view.setInt8(at, v as number);
        break;
      case "u16":
        view.setUint16(at, v as number, true);
        break;
      case "i16":
        view.setInt16(at, v as number, true);
        break;
      case "u32":
        view.setUint32(at, v as number, true);
        break;
      case "i32":
        view.setInt32(at, v as number, true);
        break;
      case "f32":
        view.setFloat32(at, v as number, true);
        break;
      case "u64":
        view.setBigUint64(at, BigInt(v as number | bigint), true);
        this.length += 8;
        return;
      case "i64":
        view.setBigInt64(at, BigInt(v as number | bigint), true);
        this.length += 8;
        return;
      case "f64":
        view.setFloat64(at, v as number, true);
        this.length += 8;
        return;
    }
    this.length += sizes[type];
  }

  value(v: GGUFValue): void {
    this.u32(GGUF_VALUE_TYPES[v.type]);
    if (v.type !== "array") return this.scalar(v.type, v.value);
    this.u32(GGUF_VALUE_TYPES[v.itemType]);
    this.u64(v.values.length);
    for (const item of v.values) this.scalar(v.itemType, item);
  }

  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

async function writeFully(file: Deno.FsFile, src: Uint8Array): Promise<void> {
  let done = 0;
  while (done < src.length) done += await file.write(src.subarray(done));
}

/** Options of {@linkcode GGUFWriter.create}. */
export interface GGUFWriterOptions {
  /**
   * Alignment of the data section and of each tensor, a multiple of 8 (default: the metadata's
   * `general.alignment` where given, else 32). Written as `general.alignment` when it is not 32.
   */
  alignment?: number;
}

/**
 * Writes a GGUF v3 file in one pass: {@linkcode GGUFWriter.create} writes the header (metadata and tensor
 * infos, each tensor's offset aligned); {@linkcode GGUFWriter.write} takes each tensor's bytes in the order
 * given, in chunks; {@linkcode GGUFWriter.close} checks every byte came and renames the temporary file
 * over the target. A file not closed (`await using` on an error path) is removed; the target keeps what
 * it had.
 *
 * @example
 * ```ts
 * import { GGUFReader, GGUFWriter, ggufValue } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * const metadata = new Map([["general.architecture", ggufValue("string", "llama")]]);
 * const writer = await GGUFWriter.create(path, metadata, [{ name: "w", type: "F32", shape: [2, 2] }]);
 * await writer.write("w", new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer));
 * await writer.close();
 * using reader = await GGUFReader.open(path);
 * assertEquals(await reader.read("w"), new Float32Array([1, 2, 3, 4]));
 * await Deno.remove(path);
 * ```
 */
export class GGUFWriter implements AsyncDisposable {
  /** The target path. */
  readonly path: string;
  /** Every tensor with its place in the file, in order. */
  readonly tensors: readonly GGUFTensorInfo[];
  /** Size of the file once complete. */
  readonly fileSize: number;
  readonly #out: AtomicFile;
  readonly #written: number[];
  #position: number;
  #index = 0;
  #state: "open" | "failed" | "closed" = "open";
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    out: AtomicFile,
    tensors: GGUFTensorInfo[],
    header: number,
    size: number,
  ) {
    this.path = path;
    this.#out = out;
    this.tensors = tensors;
    this.#written = tensors.map(() => 0);
    this.#position = header;
    this.fileSize = size;
  }

  /**
   * Checks the metadata (keys non-empty and unique) and the entries (names unique and at most 64 bytes,
   * shapes of 1 to 4 non-negative integers, rows a whole number of blocks), creates a temporary file
   * beside `path` and writes the header.
   *
   * @throws {InvalidArgumentError} "Cannot write PATH: ..." for a bad entry or when the file cannot be created.
   */
  static async create(
    path: string,
    metadata: ReadonlyMap<string, GGUFValue>,
    tensors: readonly GGUFTensorEntry[],
    options: GGUFWriterOptions = {},
  ): Promise<GGUFWriter> {
    const bad = (why: string, cause?: unknown) =>
      new InvalidArgumentError(`Cannot write ${path}: ${why}`, cause === undefined ? undefined : { cause });
    const given = metadata.get("general.alignment");
    if (given && (given.type !== "u32" || typeof given.value !== "number")) {
      throw bad("general.alignment must be a u32");
    }
    const alignment = options.alignment ??
      (given?.type === "u32" ? given.value as number : GGUF_DEFAULT_ALIGNMENT);
    if (!Number.isInteger(alignment) || alignment <= 0 || alignment % 8 !== 0) {
      throw bad(`alignment ${alignment} is not a positive multiple of 8`);
    }
    if (given && given.type === "u32" && given.value !== alignment) {
      throw bad(`general.alignment is ${given.value}, the alignment option ${alignment}`);
    }
    const kvs = new Map(metadata);
    if (!given && alignment !== GGUF_DEFAULT_ALIGNMENT) {
      kvs.set("general.alignment", ggufValue("u32", alignment));
    }
    const header = new Bytes();
    header.u32(GGUF_MAGIC);
    header.u32(GGUF_VERSION);
    header.u64(tensors.length);
    header.u64(kvs.size);
    for (const [key, value] of kvs) {
      if (!key) throw bad("a metadata key is empty");
      header.string(key);
      header.value(value);
    }
    const names = new Set<string>();
    const sizes: number[] = [];
    let dataSize = 0;
    for (const t of tensors) {
      if (!t.name || new TextEncoder().encode(t.name).length > 64) {
        throw bad(`tensor name ${JSON.stringify(t.name)} is empty or longer than 64 bytes`);
      }
      if (names.has(t.name)) throw bad(`tensor ${t.name} is listed twice`);
      names.add(t.name);
      if (!(t.type in GGML_TYPES)) throw bad(`tensor ${t.name}: unknown type ${t.type}`);
      if (
        t.shape.length < 1 || t.shape.length > 4 || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)
      ) {
        throw bad(`tensor ${t.name}: shape [${t.shape.join(", ")}] is not 1 to 4 non-negative integers`);
      }
      let size: number;
      try {
        size = ggmlTensorBytes(t.type, t.shape);
      } catch (e) {
        throw bad(`tensor ${t.name}: ${(e as Error).message}`, e);
      }
      header.string(t.name);
      header.u32(t.shape.length);
      for (const d of [...t.shape].reverse()) header.u64(d);
      header.u32(GGML_TYPES[t.type].id);
      header.u64(dataSize);
      sizes.push(size);
      dataSize = align(dataSize + size, alignment);
    }
    const dataStart = align(header.length, alignment);
    header.raw(new Uint8Array(dataStart - header.length));
    const infos: GGUFTensorInfo[] = [];
    let offset = dataStart;
    tensors.forEach((t, i) => {
      infos.push({ name: t.name, type: t.type, shape: [...t.shape], offset, byteLength: sizes[i] });
      offset = align(offset + sizes[i], alignment);
    });
    let out: AtomicFile;
    try {
      out = await AtomicFile.open(path);
    } catch (e) {
      throw bad((e as Error).message, e);
    }
    try {
      await writeFully(out.file, header.bytes());
    } catch (e) {
      await out.abort();
      throw bad((e as Error).message, e);
    }
    return new GGUFWriter(path, out, infos, dataStart, dataStart + dataSize);
  }

  /**
   * Appends bytes of tensor `name`: tensors in the order given to `create`, each in one or more chunks
   * (padding between them is written here). Calls run one at a time, in call order.
   *
   * @throws {InvalidArgumentError} when the tensor is unknown or out of order, when it would get more bytes
   * than it holds, when the previous one is incomplete, or after a failed write.
   */
  write(name: string, bytes: Uint8Array): Promise<void> {
    const run = this.#queue.then(() => this.#write(name, bytes));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #write(name: string, bytes: Uint8Array): Promise<void> {
    const bad = (why: string, cause?: unknown) =>
      new InvalidArgumentError(
        `Cannot write ${this.path}: ${why}`,
        cause === undefined ? undefined : { cause },
      );
    if (this.#state === "closed") throw bad("the writer is closed");
    if (this.#state === "failed") throw bad("an earlier write failed");
    let i = this.#index;
    while (i < this.tensors.length && this.tensors[i].name !== name) {
      if (this.#written[i] < this.tensors[i].byteLength) {
        const where = this.tensors.findIndex((t) => t.name === name);
        throw bad(
          `tensor ${name} ${
            where < 0 ? "is not in the file" : where < i ? "was already written" : "comes later"
          }; ` +
            `expected bytes of ${this.tensors[i].name} (${this.#written[i]} of ${
              this.tensors[i].byteLength
            })`,
        );
      }
      i++;
    }
    if (i === this.tensors.length) {
      throw bad(
        `tensor ${name} ${
          this.tensors.some((t) => t.name === name) ? "was already written" : "is not in the file"
        }`,
      );
    }
    const t = this.tensors[i];
    if (this.#written[i] + bytes.length > t.byteLength) {
      throw bad(
        `tensor ${name} would get ${this.#written[i] + bytes.length} bytes, it holds ${t.byteLength}`,
      );
    }
    this.#index = i;
    try {
      await this.#padTo(t.offset);
      await writeFully(this.#out.file, bytes);
    } catch (e) {
      this.#state = "failed";
      throw bad(`writing tensor ${name} failed: ${(e as Error).message}`, e);
    }
    this.#written[i] += bytes.length;
    this.#position += bytes.length;
  }

  async #padTo(offset: number): Promise<void> {
    if (offset > this.#position) {
      await writeFully(this.#out.file, new Uint8Array(offset - this.#position));
      this.#position = offset;
    }
  }

  /**
   * Checks that every tensor got all its bytes, pads the file to the alignment and renames it over the
   * target. Idempotent. An incomplete file is removed (the target keeps its content).
   *
   * @throws {InvalidArgumentError} naming the first incomplete tensor, or when the rename fails.
   */
  close(): Promise<void> {
    const run = this.#queue.then(() => this.#close(true));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #close(commit: boolean): Promise<void> {
    if (this.#state === "closed") return;
    const failed = this.#state === "failed";
    this.#state = "closed";
    if (!commit || failed) return await this.#out.abort();
    const missing = this.tensors.findIndex((t, i) => this.#written[i] < t.byteLength);
    if (missing >= 0) {
      await this.#out.abort();
      const t = this.tensors[missing];
      throw new InvalidArgumentError(
        `Cannot write ${this.path}: tensor ${t.name} got ${this.#written[missing]} of ${t.byteLength} bytes`,
      );
    }
    try {
      await this.#padTo(this.fileSize);
      await this.#out.commit();
    } catch (e) {
      await this.#out.abort().catch(() => {});
      throw new InvalidArgumentError(`Cannot write ${this.path}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Removes the temporary file unless {@linkcode GGUFWriter.close} finished it. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#queue;
    await this.#close(false);
  }
}
