/**
 * The learning-rate schedule of a {@linkcode Trainer}: linear warm-up, then cosine decay to a floor.
 *
 * @module
 */

/**
 * Learning rate at a step: linear warm-up to `peak`, then cosine decay to `peak * minRatio`.
 *
 * @example
 * ```ts
 * import { learningRate } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(learningRate(0, 100, 10, 1e-3, 0.1) === 1e-3 / 11); // warm-up: (step + 1) / (warmup + 1) of the peak
 * assert(learningRate(10, 100, 10, 1e-3, 0.1) === 1e-3); // warm-up done: the peak
 * assert(Math.abs(learningRate(99, 100, 10, 1e-3, 0.1) - 1e-4) < 1e-15); // the last step: peak * minRatio
 * ```
 */
export function learningRate(
  step: number,
  steps: number,
  warmup: number,
  peak: number,
  minRatio: number,
): number {
  if (step < warmup) return (peak * (step + 1)) / (warmup + 1);
  const progress = steps > warmup ? (step - warmup) / Math.max(1, steps - warmup - 1) : 1;
  const cosine = 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
  return peak * (minRatio + (1 - minRatio) * cosine);
}
