/**
 * Choosing the next token from a row of logits, as Hugging Face's `generate` does and in its order:
 * repetition penalty, then temperature, top-k, top-p (nucleus), then a draw from the softmax (or the
 * argmax: greedy). Seeded: the same seed and the same logits give the same tokens.
 *
 * @module
 */

import { InvalidArgumentError, Xorshift128 } from "../base/mod.ts";

/** How {@linkcode Sampler} picks tokens. The defaults pick greedily. */
export interface SamplingOptions {
  /**
   * Softmax temperature: 0 (default) is greedy (the argmax, after the repetition penalty); above 0 draws a
   * token, lower values sharper.
   */
  temperature?: number;
  /** Keep only the k most likely tokens before drawing (0, default: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1, default: all). */
  topP?: number;
  /**
   * Penalty on tokens already in the sequence (prompt included), as CTRL and Hugging Face define it: a
   * positive logit is divided by it, a negative one multiplied (1, default: none; > 1 discourages repeats).
   */
  repetitionPenalty?: number;
  /** Seed of the draws (default 0). */
  seed?: number;
}

/**
 * Picks tokens from logits; one instance per sequence keeps its own random stream.
 *
 * @example
 * ```ts
 * import { Sampler } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const logits = new Float32Array([0.1, 2.0, 1.9, -1]);
 * assertEquals(new Sampler().next(logits, []), 1); // greedy
 * assertEquals(new Sampler({ repetitionPenalty: 1.2 }).next(logits, [1]), 2); // 2.0 / 1.2 < 1.9
 * const draws = (seed: number) => {
 *   const s = new Sampler({ temperature: 1, topK: 2, seed });
 *   return Array.from({ length: 8 }, () => s.next(logits, []));
 * };
 * assertEquals(draws(7), draws(7)); // seeded
 * assertEquals(new Set([...draws(1), ...draws(2)]).size, 2); // only the top 2 are ever drawn
 * ```
 */
export class Sampler {
  /** Temperature (0: greedy). */
  readonly temperature: number;
  /** Top-k (0: off). */
  readonly topK: number;
  /** Top-p (1: off). */
  readonly topP: number;
  /** Repetition penalty (1: off). */
  readonly repetitionPenalty: number;
  readonly #rng: Xorshift128;

  /** Checks the options: each out of its range is an `InvalidArgumentError` naming it. */
  constructor(options: SamplingOptions = {}) {
    const what = "create a sampler";
    const { temperature = 0, topK = 0, topP = 1, repetitionPenalty = 1, seed = 0 } = options;
    if (!(temperature >= 0) || !Number.isFinite(temperature)) {
      throw new InvalidArgumentError(
        `Cannot ${what}: temperature must be finite and >= 0, got ${temperature}`,
      );
    }
    if (!Number.isSafeInteger(topK) || topK < 0) {
      throw new InvalidArgumentError(`Cannot ${what}: topK must be an integer >= 0, got ${topK}`);
    }
    if (!(topP > 0 && topP <= 1)) {
      throw new InvalidArgumentError(`Cannot ${what}: topP must be in (0, 1], got ${topP}`);
    }
    if (!(repetitionPenalty > 0) || !Number.isFinite(repetitionPenalty)) {
      throw new InvalidArgumentError(
        `Cannot ${what}: repetitionPenalty must be finite and > 0, got ${repetitionPenalty}`,
      );
    }
    if (!Number.isSafeInteger(seed)) {
      throw new InvalidArgumentError(`Cannot ${what}: seed must be an integer`);
    }
    this.temperature = temperature;
    this.topK = topK;
    this.topP = topP;
    this.repetitionPenalty = repetitionPenalty;
    this.#rng = new Xorshift128(seed);
  }

  /** Whether it picks the argmax (temperature 0). */
  get greedy(): boolean {
    return this.temperature === 0;
  }

  /**
   * The next token for one row of `logits` (read, not changed), given the tokens of the sequence so far
   * (for the repetition penalty). NaN logits are never picked.
   */
  next(logits: Float32Array, previous: ArrayLike<number>): number {
    const x = Float64Array.from(logits);
    if (this.repetitionPenalty !== 1) {
      const seen = new Set<number>();
      for (let i = 0; i < previous.length; i++) seen.add(previous[i]);
      for (const t of seen) {
        if (t >= 0 && t < x.length) {
          x[t] = x[t] > 0 ? x[t] / this.repetitionPenalty : x[t] * this.repetitionPenalty;
        }
      }
    }
    if (this.greedy) {
      let best = -1;
      for (let i = 0; i < x.length; i++) if (!Number.isNaN(x[i]) && (best < 0 || x[i] > x[best])) best = i;
      if (best < 0) throw new InvalidArgumentError("Cannot pick a token: every logit is NaN");
      return best;
    }
    // Candidates by decreasing logit (ties by id), cut by top-k, then softmax at the temperature, cut by top-p.
    let order = [...x.keys()].filter((i) => !Number.isNaN(x[i]));
    if (order.length === 0) throw new InvalidArgumentError("Cannot pick a token: every logit is NaN");
    order.sort((a, b) => x[b] - x[a] || a - b);
    if (this.topK > 0) order = order.slice(0, this.topK);
    const max = x[order[0]];
    const p = order.map((i) => Math.exp((x[i] - max) / this.temperature));
    const sum = p.reduce((a, b) => a + b, 0);
    let keep = order.length;
    if (this.topP < 1) {
      let mass = 0;
      for (keep = 0; keep < order.length;) if ((mass += p[keep++] / sum) >= this.topP) break;
    }
    const total = p.slice(0, keep).reduce((a, b) => a + b, 0);
    let r = this.#rng.nextFloat() * total;
    for (let j = 0; j < keep; j++) if ((r -= p[j]) < 0) return order[j];
    return order[keep - 1];
  }
}
