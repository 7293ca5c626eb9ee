/**
 * Where a {@linkcode Trainer}'s batches come from: the {@linkcode BatchSource} interface (a training
 * stream that can say and restore its position, fixed validation batches, a description a resume must
 * match) and {@linkcode datasetSource}, its implementation over a {@linkcode TextDataset}.
 *
 * @module
 */

import type { TextDataset } from "./dataset.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import { type BatchSampler, fingerprint, type SamplerState } from "./sampler.ts";

/** A batch of token ids, row-major `[batch, seq]`; targets are the inputs shifted by one. */
export interface TokenBatch {
  /** Input ids. */
  inputs: Int32Array;
  /** Next-token ids (-1 = ignored). */
  targets: Int32Array;
}

/** Where batches come from (see `TextDataset` in lib/data/data.ts). */
export interface BatchSource {
  /** A random training batch. */
  trainBatch(batch: number, seq: number): TokenBatch;
  /** Up to `max` validation batches, the same every call. */
  validationBatches(batch: number, seq: number, max: number): TokenBatch[];
  /** The training stream's position, as JSON (a resumable checkpoint stores it). */
  getState?(): unknown;
  /** Continues from a {@linkcode BatchSource.getState}: the next batches are those that would have come. */
  setState?(state: unknown): void;
  /** What the data is (kind, sizes, seed, a fingerprint): part of the configuration a resume must match. */
  describe?(): Record<string, string | number | boolean | null>;
}

/**
 * A {@linkcode BatchSource} over a {@linkcode TextDataset}: seeded random training windows, and the first
 * `max` full validation batches in order.
 *
 * @example
 * ```ts
 * import { datasetSource, TextDataset } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const ds = TextDataset.fromText("the quick brown fox jumps over the lazy dog. ".repeat(40));
 * const source = datasetSource(ds, 1);
 * const b = source.trainBatch(2, 8);
 * assert(b.inputs.length === 16 && b.targets[0] === b.inputs[1]);
 * const again = datasetSource(ds, 1);
 * again.setState!(source.getState!()); // a checkpoint's data position: the streams continue alike
 * assert(again.trainBatch(2, 8).inputs.join() === source.trainBatch(2, 8).inputs.join());
 * ```
 */
export function datasetSource(dataset: TextDataset, seed = 0): BatchSource {
  const samplers = new Map<string, BatchSampler>();
  const sampler = (batchSize: number, seqLen: number) => {
    const key = `${batchSize}x${seqLen}`;
    let s = samplers.get(key);
    if (!s) samplers.set(key, s = dataset.batches({ batchSize, seqLen, seed }));
    return s;
  };
  let print: string | undefined;
  return {
    trainBatch(batchSize, seqLen) {
      const b = sampler(batchSize, seqLen).sample();
      return { inputs: b.inputs, targets: b.targets };
    },
    validationBatches(batchSize, seqLen, max) {
      const out: TokenBatch[] = [];
      for (const b of dataset.validationBatches({ batchSize, seqLen })) {
        if (out.length >= max || b.batchSize !== batchSize) break;
        out.push({ inputs: b.inputs, targets: b.targets });
      }
      return out;
    },
    getState() {
      return Object.fromEntries([...samplers].map(([key, s]) => [key, s.getState()]));
    },
    setState(state) {
      for (const [key, s] of Object.entries(state as Record<string, SamplerState>)) {
        const m = /^(\d+)x(\d+)$/.exec(key);
        if (!m) throw new InvalidArgumentError(`Cannot restore the data position: bad sampler key ${key}`);
        sampler(Number(m[1]), Number(m[2])).setState(s);
      }
    },
    describe() {
      print ??= fingerprint(dataset.train, dataset.validation);
      return {
        kind: "text",
        seed,
        trainTokens: dataset.train.length,
        validationTokens: dataset.validation.length,
        fingerprint: print,
      };
    },
  };
}
