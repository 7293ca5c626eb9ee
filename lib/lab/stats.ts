/**
 * The statistics of the quality study ({@linkcode runQuality}): mean and sample standard deviation over
 * seeds, and whether the difference between two data types is larger than their seed-to-seed spread.
 *
 * @module
 */

/** Mean and sample standard deviation (n - 1) of some values; the deviation of one value is 0. */
export interface Spread {
  /** The mean. */
  mean: number;
  /** The sample standard deviation (Bessel's correction; 0 for a single value). */
  std: number;
  /** How many values. */
  n: number;
}

/**
 * Mean and sample standard deviation of `values` (at least one, all finite).
 *
 * @example
 * ```ts
 * import { spread } from "../../mod.ts";
 * import { assertAlmostEquals, assertEquals } from "@std/assert";
 * const s = spread([2, 4, 6]);
 * assertEquals([s.mean, s.n], [4, 3]);
 * assertAlmostEquals(s.std, 2);
 * ```
 */
export function spread(values: readonly number[]): Spread {
  if (values.length === 0) throw new RangeError("Cannot compute a spread: no values");
  for (const v of values) {
    if (!Number.isFinite(v)) throw new RangeError(`Cannot compute a spread: ${v} is not finite`);
  }
  const n = values.length;
  const mean = values.reduce((s, v) => s + v, 0) / n;
  const ss = values.reduce((s, v) => s + (v - mean) ** 2, 0);
  return { mean, std: n > 1 ? Math.sqrt(ss / (n - 1)) : 0, n };
}

/** A difference of means beside the spread of the two samples. */
export interface Difference {
  /** mean(b) - mean(a). */
  diff: number;
  /** std(a) + std(b): the seed-to-seed spread the difference is weighed against. */
  spread: number;
  /** |diff| > spread, with at least two values on each side (one value has no measured spread). */
  resolved: boolean;
  /**
   * Same seeds on both sides (equal lengths): mean and standard deviation of the per-seed differences
   * b[i] - a[i], which cancel what the seed does to both (batch order, adapter initialisation); else null.
   */
  paired: Spread | null;
  /** |paired mean| > paired std, with at least two pairs. */
  pairedResolved: boolean;
}

/**
 * Compares two samples: the difference of their means, and whether it is larger than the sum of their
 * standard deviations (so that no seed of one overlaps the other's mean +- std band).
 *
 * @example
 * ```ts
 * import { compare } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(compare([10, 10.1, 9.9], [11, 11.1, 10.9]).resolved);
 * const d = compare([10, 11, 9], [10.5, 11.5, 9.5]);
 * assert(!d.resolved && d.pairedResolved); // the same seeds shift both sides alike
 * ```
 */
export function compare(a: readonly number[], b: readonly number[]): Difference {
  const sa = spread(a), sb = spread(b);
  const diff = sb.mean - sa.mean, width = sa.std + sb.std;
  const paired = a.length === b.length ? spread(b.map((v, i) => v - a[i])) : null;
  return {
    diff,
    spread: width,
    resolved: sa.n > 1 && sb.n > 1 && Math.abs(diff) > width,
    paired,
    pairedResolved: paired !== null && paired.n > 1 && Math.abs(paired.mean) > paired.std,
  };
}

/**
 * `12.345 +- 0.067` with `digits` decimals (the mean alone for a single value).
 *
 * @example
 * ```ts
 * import { fmtSpread, spread } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(fmtSpread(spread([1, 2, 3]), 2), "2.00 +- 1.00");
 * ```
 */
export function fmtSpread(s: Spread, digits = 3): string {
  return s.n > 1 ? `${s.mean.toFixed(digits)} +- ${s.std.toFixed(digits)}` : s.mean.toFixed(digits);
}
