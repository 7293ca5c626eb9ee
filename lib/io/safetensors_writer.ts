/**
 * Writing safetensors files, streaming and atomic: {@linkcode SafetensorsWriter} lays the file out from
 * a list of entries (`safetensors_header.ts`) and then takes each tensor's bytes in order, in chunks of
 * any size, so that multi-GB checkpoints never sit in memory whole. It writes a temporary file beside the
 * target and renames it over the target only once every byte has come, so a failure or a crash leaves
 * the previous file (or none) in place, never a truncated one. {@linkcode writeSafetensors} writes a
 * small file from tensors in memory.
 *
 * @module
 */

import { AtomicFile } from "./atomic_file.ts";
import { SafetensorsError } from "../base/mod.ts";
import {
  encodeSafetensorsHeader,
  showValue,
  type TensorEntry,
  type TensorInfo,
} from "./safetensors_header.ts";

/** One tensor with its bytes, for {@linkcode writeSafetensors}. */
export interface TensorData extends TensorEntry {
  /** Raw little-endian bytes: exactly product(shape) * bytesPerElement(dtype) of them. */
  data: Uint8Array;
}

async function writeFully(file: Deno.FsFile, src: Uint8Array): Promise<void> {
  let done = 0;
  while (done < src.length) done += await file.write(src.subarray(done));
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
 * import { readSafetensors } from "./safetensors_reader.ts";
 * import { SafetensorsWriter } from "./safetensors_writer.ts";
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
   * import { SafetensorsWriter } from "./safetensors_writer.ts";
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
    const { tensors, bytes, dataSize } = encodeSafetensorsHeader(entries, metadata, name);
    let out: AtomicFile;
    try {
      out = await AtomicFile.open(path);
    } catch (e) {
      throw bad((e as Error).message, e);
    }
    try {
      await writeFully(out.file, bytes);
    } catch (e) {
      await out.abort();
      throw bad((e as Error).message, e);
    }
    return new SafetensorsWriter(name, out, tensors, bytes.length + dataSize);
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
   * import { SafetensorsWriter } from "./safetensors_writer.ts";
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
          `tensor ${showValue(name)} ${why}; expected bytes of ${
            showValue(info.name)
          } (${written} of ${info.byteLength})`,
        );
      }
      i++;
    }
    if (i === this.#slots.length) {
      const why = this.#slots.some((s) => s.info.name === name)
        ? "was already written"
        : "is not in the file";
      throw bad(`tensor ${showValue(name)} ${why}`);
    }
    const slot = this.#slots[i];
    if (slot.written + bytes.byteLength > slot.info.byteLength) {
      throw bad(
        `tensor ${showValue(name)} would get ${
          slot.written + bytes.byteLength
        } bytes, its shape holds ${slot.info.byteLength}`,
      );
    }
    this.#index = i;
    try {
      await writeFully(this.#out.file, bytes);
    } catch (e) {
      this.#failed = true;
      throw bad(`writing tensor ${showValue(name)} failed: ${(e as Error).message}`, e);
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
   * import { SafetensorsWriter } from "./safetensors_writer.ts";
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
          showValue(missing.info.name)
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
 * import { writeSafetensors } from "./safetensors_writer.ts";
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
        `Cannot write ${writer.path}: tensor ${showValue(t.name)} has ${t.data.byteLength} bytes of data, ` +
          `${t.dtype} ${showValue(t.shape)} needs ${needed}`,
      );
    }
    await writer.write(t.name, t.data);
  }
  await writer.close();
}
