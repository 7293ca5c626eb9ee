/**
 * Random training batches from a token stream, deterministic for a seed and resumable from a saved
 * position, and a fingerprint of a token stream (so that a resumed run can tell its data changed).
 *
 * @module
 */

import { InvalidArgumentError, Xorshift128 } from "../base/mod.ts";

/**
 * A batch of next-token examples. `inputs` and `targets` are row-major `[batchSize, seqLen]`: token `t`
 * of row `b` is at `b * seqLen + t`, and `targets[b * seqLen + t]` is the token that follows
 * `inputs[b * seqLen + t]` in the text (the inputs shifted left by one).
 */
export interface Batch {
  /** Token ids, `[batchSize, seqLen]`. */
  inputs: Int32Array;
  /** The next token of each input, `[batchSize, seqLen]`. */
  targets: Int32Array;
  /** Rows in this batch (the last validation batch can have fewer than asked). */
  batchSize: number;
  /** Tokens per row. */
  seqLen: number;
}

/** Options of {@linkcode TextDataset.batches} and {@linkcode TextDataset.validationBatches}. */
export interface BatchOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Tokens per row. */
  seqLen: number;
  /** Seed of the sampler (batches only); default 0. */
  seed?: number;
}

/**
 * Random training batches from a token stream (see {@linkcode TextDataset.batches}); deterministic for a
 * seed.
 *
 * @example
 * ```ts
 * import { BatchSampler } from "./sampler.ts";
 * import { assert } from "@std/assert";
 * const tokens = Int32Array.from({ length: 100 }, (_, i) => i);
 * const s = new BatchSampler(tokens, { batchSize: 3, seqLen: 5, seed: 1 });
 * const { inputs, targets } = s.sample();
 * assert(inputs.length === 15 && targets[0] === inputs[0] + 1);
 * const resumed = new BatchSampler(tokens, { batchSize: 3, seqLen: 5, seed: 1 });
 * resumed.setState(s.getState()); // a checkpoint's data position
 * assert(resumed.sample().inputs.join() === s.sample().inputs.join() && s.getState().drawn === 2);
 * ```
 */
export class BatchSampler {
  /** Rows per batch. */
  readonly batchSize: number;
  /** Tokens per row. */
  readonly seqLen: number;
  readonly #tokens: Int32Array;
  readonly #rng: Xorshift128;
  #drawn = 0;

  /** A sampler over `tokens`, which must hold at least `seqLen + 1` of them. */
  constructor(tokens: Int32Array, options: BatchOptions) {
    checkPositive("batchSize", options.batchSize);
    checkPositive("seqLen", options.seqLen);
    if (tokens.length < options.seqLen + 1) {
      throw new InvalidArgumentError(
        `Cannot sample batches: seqLen ${options.seqLen} needs at least ${
          options.seqLen + 1
        } tokens, the stream has ${tokens.length}`,
      );
    }
    this.batchSize = options.batchSize;
    this.seqLen = options.seqLen;
    this.#tokens = tokens;
    this.#rng = new Xorshift128(options.seed ?? 0);
  }

  /** The next batch. */
  sample(): Batch {
    const { batchSize, seqLen } = this;
    const inputs = new Int32Array(batchSize * seqLen);
    const targets = new Int32Array(batchSize * seqLen);
    const starts = this.#tokens.length - seqLen; // start + seqLen (the last target) must be in range
    for (let r = 0; r < batchSize; r++) {
      const s = this.#rng.nextInt(starts);
      inputs.set(this.#tokens.subarray(s, s + seqLen), r * seqLen);
      targets.set(this.#tokens.subarray(s + 1, s + 1 + seqLen), r * seqLen);
    }
    this.#drawn++;
    return { inputs, targets, batchSize, seqLen };
  }

  /** Where the sampler is: batches drawn so far and its generator's words (JSON, for a checkpoint). */
  getState(): SamplerState {
    return { drawn: this.#drawn, rng: this.#rng.getState() };
  }

  /** Continues from a {@linkcode BatchSampler.getState}: the next batch is the one that would have come. */
  setState(state: SamplerState): void {
    if (!Number.isSafeInteger(state?.drawn) || state.drawn < 0) {
      throw new InvalidArgumentError(
        `Cannot restore a batch sampler: drawn must be an integer >= 0, got ${state?.drawn}`,
      );
    }
    this.#rng.setState(state.rng);
    this.#drawn = state.drawn;
  }
}

/** The position of a seeded batch stream: batches drawn so far and the generator's four words. */
export interface SamplerState {
  /** Batches drawn so far (the data position). */
  drawn: number;
  /** The generator's words ({@linkcode Xorshift128.getState}). */
  rng: number[];
}

/**
 * A 32-bit FNV-1a hash of integer arrays (each value's four bytes, little-endian), as 8 hex digits: a
 * cheap fingerprint of a token stream, so that a resumed run can tell that its data changed.
 *
 * @example
 * ```ts
 * import { fingerprint } from "./sampler.ts";
 * import { assert } from "@std/assert";
 * assert(fingerprint(new Int32Array([1, 2])) === fingerprint(new Int32Array([1, 2])));
 * assert(fingerprint(new Int32Array([1, 2])) !== fingerprint(new Int32Array([2, 1])));
 * ```
 */
export function fingerprint(...arrays: Int32Array[]): string {
  let h = 0x811c9dc5;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      h = Math.imul(h ^ (v & 0xff), 0x01000193);
      h = Math.imul(h ^ ((v >>> 8) & 0xff), 0x01000193);
      h = Math.imul(h ^ ((v >>> 16) & 0xff), 0x01000193);
      h = Math.imul(h ^ (v >>> 24), 0x01000193);
    }
    h = Math.imul(h ^ 0xff, 0x01000193); // a separator: [1] [2] differs from [1, 2]
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}

/**
 * Throws {@linkcode InvalidArgumentError} unless n is an integer >= 1 (a batch size or a sequence length).
 *
 * @example
 * ```ts
 * import { checkPositive } from "./sampler.ts";
 * import { InvalidArgumentError } from "../base/errors.ts";
 * import { assertThrows } from "@std/assert";
 * checkPositive("seqLen", 64);
 * assertThrows(() => checkPositive("seqLen", 0), InvalidArgumentError, "seqLen");
 * ```
 */
export function checkPositive(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 1) {
    throw new InvalidArgumentError(`Cannot make batches: ${what} must be an integer >= 1, got ${n}`);
  }
}
