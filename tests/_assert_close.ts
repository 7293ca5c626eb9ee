/**
 * `assertClose`: every element within `rel` times the largest |expected| of its reference, for the
 * tests that compare native results with float64 references.
 *
 * @module
 */

import { assertEquals } from "@std/assert";

/** Throws unless every |actual[i] - expected[i]| <= rel * max |expected|, naming the first index that is not. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rel: number,
  what: string,
): void {
  assertEquals(actual.length, expected.length, what);
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= rel * (scale + 1e-30))) {
      throw new Error(
        `${what}: [${i}] = ${actual[i]}, expected ${expected[i]} (|d| ${d} > ${rel} * ${scale})`,
      );
    }
  }
}
