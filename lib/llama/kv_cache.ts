/**
 * The key/value cache of generation: for every layer, the keys (RoPE applied) and values of every token a
 * batch of sequences has seen, so that each new token attends the past without recomputing it. It is the
 * inference side of this project's subject: at LLaMA-2-7B it holds 2 · 32 layers · 4,096 features · 2
 * bytes = 0.5 MiB per token in bf16, 2 GiB at 4,096 tokens. Every byte is in the ledger under
 * `kv_cache`, allocated up front for `capacity` rows or grown in chunks as the sequences get longer.
 *
 * Sequences of a batch share the cache's rows: a prompt shorter than the longest is padded on the left,
 * and its `firstKey` (the row of its first real token) keeps its padding out of attention and its
 * positions starting at 0, as Hugging Face's `generate` does with an attention mask.
 *
 * @module
 */

import { type Device, getDevice, Tensor } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { LlamaConfig } from "./llama_config.ts";

/** Options of {@linkcode KVCache}. */
export interface KVCacheOptions {
  /** Sequences in the batch (default 1). */
  batch?: number;
  /** Rows per sequence allocated now (default: `config.maxSeq`). */
  capacity?: number;
  /**
   * Rows per sequence the cache may grow to (default `config.maxSeq`). Past `capacity`, {@linkcode KVCache.reserve}
   * grows it in steps of `growBy` rows (default 0: it never grows).
   */
  maxCapacity?: number;
  /** Rows added per growth step (0: allocated once, never grown). */
  growBy?: number;
  /** dtype of the keys and values: the activations' (default f32). */
  dtype?: "f32" | "bf16";
  /** Device (default: the `QLORA_BACKEND` device). */
  device?: Device;
  /**
   * Row of each sequence's first real token (left padding before it), default 0 for every sequence.
   * Its positions start at 0 there.
   */
  firstKey?: readonly number[];
}

/**
 * Bytes a cache of `rows` rows per sequence holds: keys and values of every layer, kv heads only (GQA).
 *
 * @example
 * ```ts
 * import { kvCacheBytes, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * // LLaMA-2-7B in bf16: 0.5 MiB per token, 2 GiB at 4,096 tokens.
 * assertEquals(kvCacheBytes(LLAMA_CONFIGS["7b"], { rows: 1, dtype: "bf16" }), 512 * 1024);
 * assertEquals(kvCacheBytes(LLAMA_CONFIGS["7b"], { rows: 4096, dtype: "bf16" }), 2 ** 31);
 * ```
 */
export function kvCacheBytes(
  config: LlamaConfig,
  options: { rows: number; batch?: number; dtype?: "f32" | "bf16" },
): number {
  const headDim = config.dim / config.heads;
  const e = (options.dtype ?? "f32") === "bf16" ? 2 : 4;
  return 2 * config.layers * (options.batch ?? 1) * options.rows * config.kvHeads * headDim * e;
}

/**
 * A key/value cache for a model of `config`: per layer, keys and values `[batch, capacity, kvHeads · headDim]`.
 * {@linkcode LlamaModel.infer} appends each step's keys and values and attends over them; `length` is the
 * rows filled.
 *
 * @example
 * ```ts
 * import { getDevice, KVCache, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const device = getDevice();
 * const before = device.memory().current.kv_cache;
 * using cache = new KVCache(LLAMA_CONFIGS.tiny, { capacity: 64, growBy: 64, maxCapacity: 256 });
 * assertEquals(device.memory().current.kv_cache - before, cache.bytes); // 4 layers · 2 · 64 rows · 128 · 4 B
 * cache.reserve(100); // room for 100 rows: grows to 128
 * assertEquals([cache.capacity, cache.length], [128, 0]);
 * ```
 */
export class KVCache implements Disposable {
  /** The model shape the cache is for. */
  readonly config: LlamaConfig;
  /** Sequences. */
  readonly batch: number;
  /** dtype of keys and values. */
  readonly dtype: "f32" | "bf16";
  /** Device. */
  readonly device: Device;
  /** Features of a key (or value) row: kvHeads · headDim. */
  readonly kvDim: number;
  /** Most rows per sequence it may grow to. */
  readonly maxCapacity: number;
  /** Rows added per growth step (0: never grows). */
  readonly growBy: number;
  /** Row of each sequence's first real token. */
  readonly firstKey: readonly number[];
  #capacity: number;
  #length = 0;
  #keys: Tensor[] = [];
  #values: Tensor[] = [];
  #firstKey: Tensor | null = null;

  /** Allocates `capacity` rows per sequence for every layer (category `kv_cache`). */
  constructor(config: LlamaConfig, options: KVCacheOptions = {}) {
    const what = "create a key/value cache";
    const int = (name: string, v: number, min: number) => {
      if (!Number.isSafeInteger(v) || v < min) {
        throw new InvalidArgumentError(`Cannot ${what}: ${name} must be an integer >= ${min}, got ${v}`);
      }
      return v;
    };
    this.config = config;
    this.batch = int("batch", options.batch ?? 1, 1);
    this.maxCapacity = int("maxCapacity", options.maxCapacity ?? config.maxSeq, 1);
    this.#capacity = int("capacity", options.capacity ?? this.maxCapacity, 1);
    if (this.#capacity > this.maxCapacity) {
      throw new InvalidArgumentError(
        `Cannot ${what}: capacity ${this.#capacity} is above maxCapacity ${this.maxCapacity}`,
      );
    }
    this.growBy = int("growBy", options.growBy ?? 0, 0);
    this.dtype = options.dtype ?? "f32";
    if (this.dtype !== "f32" && this.dtype !== "bf16") {
      throw new InvalidArgumentError(`Cannot ${what}: dtype must be f32 or bf16, got ${this.dtype}`);
    }
    this.device = options.device ?? getDevice();
    this.kvDim = config.kvHeads * (config.dim / config.heads);
    const first = options.firstKey ?? new Array(this.batch).fill(0);
    if (first.length !== this.batch) {
      throw new InvalidArgumentError(
        `Cannot ${what}: firstKey has ${first.length} rows, batch is ${this.batch}`,
      );
    }
    first.forEach((f, b) => int(`firstKey[${b}]`, f, 0));
    this.firstKey = Object.freeze([...first]);
    try {
      this.#allocate(this.#capacity);
      if (first.some((f) => f > 0)) {
        this.#firstKey = Tensor.from(new Int32Array(first), { device: this.device, category: "kv_cache" });
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** Rows per sequence allocated now. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Rows filled (the same for every sequence: padding counts). */
  get length(): number {
    return this.#length;
  }

  /** Bytes held: keys, values and the first-key row of every layer. */
  get bytes(): number {
    return [...this.#keys, ...this.#values, this.#firstKey].reduce((s, t) => s + (t?.byteLength ?? 0), 0);
  }

  /** Layer `i`'s keys, `[batch, capacity, kvDim]`. */
  keys(i: number): Tensor {
    return this.#keys[i];
  }

  /** Layer `i`'s values, `[batch, capacity, kvDim]`. */
  values(i: number): Tensor {
    return this.#values[i];
  }

  /** The first-key rows on the device (i32 `[batch]`), or null where no sequence is padded. */
  get firstKeyTensor(): Tensor | null {
    return this.#firstKey;
  }

  /**
   * Positions of the next `tokens` rows of every sequence, `[batch · tokens]` (row minus the sequence's
   * first key: negative on padding).
   */
  positions(tokens: number): Int32Array {
    const out = new Int32Array(this.batch * tokens);
    for (let b = 0; b < this.batch; b++) {
      for (let t = 0; t < tokens; t++) out[b * tokens + t] = this.#length + t - this.firstKey[b];
    }
    return out;
  }

  /**
   * Makes room for `rows` rows per sequence: grows in steps of `growBy` (copying what is cached) up to
   * `maxCapacity`, or throws where the cache cannot hold them. A refused growth (out of memory) keeps the
   * cache as it was.
   */
  reserve(rows: number): void {
    if (rows <= this.#capacity) return;
    if (rows > this.maxCapacity || this.growBy === 0) {
      throw new InvalidArgumentError(
        `Cannot grow the key/value cache to ${rows} rows: ${
          this.growBy === 0
            ? `it holds ${this.#capacity} and does not grow`
            : `maxCapacity is ${this.maxCapacity}`
        }`,
      );
    }
    const capacity = Math.min(this.maxCapacity, Math.ceil(rows / this.growBy) * this.growBy);
    const old = { keys: this.#keys, values: this.#values, capacity: this.#capacity };
    this.#keys = [];
    this.#values = [];
    try {
      this.#allocate(capacity);
      const dims = { batch: this.batch, tokens: old.capacity, capacity, past: 0 };
      for (let i = 0; i < old.keys.length; i++) {
        ffi.kvCacheAppend(
          this.device,
          old.keys[i],
          old.values[i],
          dims,
          this.kvDim,
          this.#keys[i],
          this.#values[i],
          this.dtype,
        );
      }
    } catch (e) {
      for (const t of [...this.#keys, ...this.#values]) t.dispose();
      this.#keys = old.keys;
      this.#values = old.values;
      throw e;
    }
    for (const t of [...old.keys, ...old.values]) t.dispose();
    this.#capacity = capacity;
  }

  /**
   * Writes the keys and values of the next `tokens` rows of layer `i` (`[batch · tokens, kvDim]` each) at
   * row `length`; {@linkcode KVCache.advance} moves `length` once every layer has written.
   */
  append(i: number, k: Tensor, v: Tensor, tokens: number): void {
    if (k.numel !== this.batch * tokens * this.kvDim || v.numel !== k.numel || k.dtype !== this.dtype) {
      throw new InvalidArgumentError(
        `Cannot append to the key/value cache: k and v must be ${this.dtype}[${
          this.batch * tokens
        }, ${this.kvDim}]`,
      );
    }
    const dims = { batch: this.batch, tokens, capacity: this.#capacity, past: this.#length };
    ffi.kvCacheAppend(this.device, k, v, dims, this.kvDim, this.#keys[i], this.#values[i], this.dtype);
  }

  /** Counts `tokens` more rows as filled (after every layer appended them). */
  advance(tokens: number): void {
    if (this.#length + tokens > this.#capacity) {
      throw new InvalidArgumentError(
        `Cannot advance the key/value cache past its capacity ${this.#capacity} (length ${this.#length} + ${tokens})`,
      );
    }
    this.#length += tokens;
  }

  #allocate(capacity: number): void {
    const shape = [this.batch, capacity, this.kvDim];
    for (let i = 0; i < this.config.layers; i++) {
      const opts = { dtype: this.dtype, device: this.device, category: "kv_cache" as const };
      this.#keys.push(Tensor.empty(shape, opts));
      this.#values.push(Tensor.empty(shape, opts));
    }
  }

  /** Frees every buffer. */
  dispose(): void {
    for (const t of [...this.#keys, ...this.#values]) t.dispose();
    this.#keys = [];
    this.#values = [];
    this.#firstKey?.dispose();
    this.#firstKey = null;
  }

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
