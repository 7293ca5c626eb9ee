import { compare, type QualityResult, spread, WEIGHT_FORMATS } from "../mod.ts";

/** A QualityResult with given after-perplexities per format (3 seeds each). */
export function fakeQuality(after: Record<string, number[]>): QualityResult {
  const formats = WEIGHT_FORMATS.map((format) => ({
    format,
    bits: format === "bf16" ? 16 : 4.5,
    before: after[format][0] + 0.3,
    after: after[format],
    afterSpread: spread(after[format]),
  }));
  const pairs = [["bf16", "nf4"], ["bf16", "nf4-dq"], ["bf16", "fp4"], ["bf16", "int4"], ["int4", "nf4"], [
    "int4",
    "nf4-dq",
  ], ["int4", "fp4"]] as const;
  return {
    options: { seeds: 3, steps: 2, lrs: [1e-3], testBatches: 2, devBatches: 1, batch: 2, seq: 32 },
    lr: 1e-3,
    sweep: [{ lr: 1e-3, bf16: 7, nf4dq: 7 }],
    tokens: { test: 128, dev: 64 },
    formats,
    qloraCheck: { model: 7, rounded: 7 },
    differences: pairs.map(([a, b]) => ({ a, b, difference: compare(after[a], after[b]) })),
  };
}
