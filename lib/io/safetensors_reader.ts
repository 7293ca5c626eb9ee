/**
 * Reading safetensors files, streaming: {@linkcode SafetensorsReader} reads only the header when it
 * opens a file (validated by `safetensors_header.ts`) and then exactly the bytes of each tensor asked
 * for, so that multi-GB checkpoints never sit in memory whole; {@linkcode readSafetensors} reads a small
 * file whole. Every malformed file is reported as a {@linkcode SafetensorsError} naming the file.
 *
 * @module
 */

import { SafetensorsError } from "../base/mod.ts";
import {
  parseHeaderLength,
  parseSafetensorsHeader,
  type SafetensorsHeader,
  showValue,
  type TensorInfo,
} from "./safetensors_header.ts";

async function readFully(file: Deno.FsFile, dst: Uint8Array): Promise<boolean> {
  let done = 0;
  while (done < dst.length) {
    const n = await file.read(dst.subarray(done));
    if (n === null) return false;
    done += n;
  }
  return true;
}

/**
 * Reads tensors from a safetensors file on demand. {@linkcode SafetensorsReader.open} reads and
 * validates only the header; {@linkcode SafetensorsReader.read} reads exactly one tensor's bytes.
 * Reads on one reader run one at a time, in call order.
 *
 * @example
 * ```ts
 * import { SafetensorsReader } from "./safetensors_reader.ts";
 * import { writeSafetensors } from "./safetensors_writer.ts";
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
      const headerBytes = new Uint8Array(parseHeaderLength(prefix, size, name));
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
      throw new SafetensorsError(`Cannot read ${this.path}: no tensor named ${showValue(name)}`);
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
            showValue(name)
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
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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
      throw bad(`reading tensor ${showValue(info.name)} failed: ${(e as Error).message}`, e);
    }
    if (done < dst.byteLength) {
      throw bad(`file ended inside tensor ${showValue(info.name)} (changed since it was opened?)`);
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
      throw bad(`reading tensor ${showValue(info.name)} failed: ${(e as Error).message}`, e);
    }
    if (!complete) {
      throw bad(`file ended inside tensor ${showValue(info.name)} (changed since it was opened?)`);
    }
  }

  /**
   * Closes the file. Idempotent; later reads fail.
   *
   * @example
   * ```ts
   * import { SafetensorsReader } from "./safetensors_reader.ts";
   * import { writeSafetensors } from "./safetensors_writer.ts";
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

/**
 * Reads a whole (small) safetensors file: every tensor with its info and bytes, in file order.
 *
 * @throws {SafetensorsError} "Cannot read PATH: ..." when the file is missing or malformed.
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors_reader.ts";
 * import { writeSafetensors } from "./safetensors_writer.ts";
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
