/**
 * A small seeded random generator, the same sequence on every platform: what the data sampler and the
 * document split draw from.
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.ts";

/**
 * Marsaglia's xorshift128 generator (32-bit words), seeded through splitmix32: small, fast and the same
 * sequence on every platform, which is all a data sampler needs (not for cryptography).
 *
 * @example
 * ```ts
 * import { Xorshift128 } from "./random.ts";
 * import { assert } from "@std/assert";
 * const a = new Xorshift128(42), b = new Xorshift128(42);
 * assert(a.nextUint32() === b.nextUint32() && a.nextInt(10) < 10 && a.nextFloat() < 1);
 * const c = new Xorshift128(0);
 * c.setState(a.getState()); // what a checkpoint stores: the sequence continues exactly
 * assert(c.nextUint32() === a.nextUint32());
 * ```
 */
export class Xorshift128 {
  #x: number;
  #y: number;
  #z: number;
  #w: number;

  /** Seeds the state from any safe integer (negative ones and ones past 2^32 included). */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) {
      throw new InvalidArgumentError(`Cannot seed Xorshift128: expected a safe integer, got ${seed}`);
    }
    let s = (seed >>> 0) ^ Math.imul(Math.floor(seed / 0x1_0000_0000) | 0, 0x9e3779b9);
    const splitmix32 = () => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#x = splitmix32();
    this.#y = splitmix32();
    this.#z = splitmix32();
    this.#w = splitmix32();
    if ((this.#x | this.#y | this.#z | this.#w) === 0) this.#w = 1; // the all-zero state is a fixed point
  }

  /** Next 32 random bits, as an integer in [0, 2^32). */
  nextUint32(): number {
    const t = this.#x ^ (this.#x << 11);
    this.#x = this.#y;
    this.#y = this.#z;
    this.#z = this.#w;
    this.#w = (this.#w ^ (this.#w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.#w;
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  nextFloat(): number {
    return this.nextUint32() / 0x1_0000_0000;
  }

  /** Uniform integer in [0, n), without modulo bias; n from 1 to 2^32. */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 0x1_0000_0000) {
      throw new InvalidArgumentError(`Cannot draw an integer below ${n}: expected an integer in [1, 2^32]`);
    }
    const limit = 0x1_0000_0000 - (0x1_0000_0000 % n); // largest multiple of n <= 2^32
    let r: number;
    do r = this.nextUint32(); while (r >= limit);
    return r % n;
  }

  /**
   * The generator's four 32-bit words: with {@linkcode Xorshift128.setState} a resumed run continues the
   * same sequence (a checkpoint stores them).
   */
  getState(): [number, number, number, number] {
    return [this.#x, this.#y, this.#z, this.#w];
  }

  /** Sets the four words {@linkcode Xorshift128.getState} returned (unsigned 32-bit, not all zero). */
  setState(state: readonly number[]): void {
    if (
      !Array.isArray(state) || state.length !== 4 ||
      !state.every((w) => Number.isInteger(w) && w >= 0 && w < 0x1_0000_0000) || state.every((w) => w === 0)
    ) {
      throw new InvalidArgumentError(
        `Cannot restore Xorshift128: expected four unsigned 32-bit words, not all zero, got ${
          JSON.stringify(state)
        }`,
      );
    }
    [this.#x, this.#y, this.#z, this.#w] = state;
  }

  /** Shuffles `items` in place (Fisher–Yates) and returns it. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}
