/**
 * The quality table of `./deno task table` (see quality.ts): perplexity per base data type before and
 * after fine-tuning, the differences weighed against the seed-to-seed spread, and a verdict on the claim
 * that NF4 preserves much higher accuracy than Int4.
 *
 * @module
 */

import { FORMAT_LABELS, type QualityResult, WEIGHT_FORMATS, type WeightFormat } from "./quality.ts";
import { type Difference, fmtSpread } from "./stats.ts";
import type { Table } from "./types.ts";

const signed = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(3)}`;

/**
 * A difference of mean perplexities in words: the difference, the spread it is weighed against, and the
 * same-seed (paired) difference.
 *
 * @example
 * ```ts
 * import { describeDifference } from "./quality_table.ts";
 * import { compare } from "./stats.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const text = describeDifference(compare([7.0, 7.1, 7.2], [7.5, 7.6, 7.7]));
 * assertStringIncludes(text, "+0.500 (larger than the spread 0.200; same seeds: +0.500");
 * ```
 */
export function describeDifference(d: Difference): string {
  const vs = d.resolved
    ? `larger than the spread ${d.spread.toFixed(3)}`
    : `within the spread ${d.spread.toFixed(3)}`;
  const paired = d.paired && d.paired.n > 1
    ? `; same seeds: ${signed(d.paired.mean)} +- ${d.paired.std.toFixed(3)}${
      d.pairedResolved ? "" : ", within its spread"
    }`
    : "";
  return `${signed(d.diff)} (${vs}${paired})`;
}

function differenceOf(q: QualityResult, a: WeightFormat, b: WeightFormat): Difference | null {
  return q.differences.find((x) => x.a === a && x.b === b)?.difference ?? null;
}

/**
 * The verdict on "NF4 preserves much higher accuracy than Int4", from the measured perplexities: it holds
 * only when NF4's perplexity after fine-tuning is lower than Int4's by more than the seed-to-seed spread.
 *
 * @example
 * ```ts ignore
 * // A QualityResult comes from runQuality (quality.ts); see tests/table_quality_test.ts.
 * console.log(nf4VersusInt4(result));
 * ```
 */
export function nf4VersusInt4(q: QualityResult): string {
  const f = (x: WeightFormat) => q.formats.find((y) => y.format === x)!;
  const nf4 = f("nf4"), int4 = f("int4");
  const d = differenceOf(q, "int4", "nf4")!;
  const before = `before fine-tuning NF4 ${nf4.before.toFixed(3)} vs Int4 ${int4.before.toFixed(3)}`;
  const after = `after, NF4 - Int4 = ${describeDifference(d)}`;
  if (d.diff < 0 && d.resolved) {
    return `holds here: NF4's perplexity is lower than Int4's by more than the seed spread (${before}; ${after})`;
  }
  const direction = d.diff < 0 ? "lower, but not by more than the seed spread" : "not lower";
  const edge = d.diff < 0 && d.pairedResolved
    ? "with the same seeds NF4 is consistently lower, by less than the seed spread: a small edge, not " +
      "much higher accuracy"
    : "on this tiny base the 4-bit data types differ by less than fine-tuning noise";
  return `does not hold here: NF4's perplexity is ${direction} (${before}; ${after}); ${edge}`;
}

/**
 * Builds the quality table: one column per data type of the base's linear weights.
 *
 * @example
 * ```ts ignore
 * import { qualityTable } from "./quality_table.ts";
 * console.log(qualityTable(result).rows.length); // result: a QualityResult from runQuality
 * ```
 */
export function qualityTable(q: QualityResult): Table {
  const cols = WEIGHT_FORMATS.map((f) => q.formats.find((x) => x.format === f)!);
  const n = q.options.seeds, o = q.options;
  const rows: string[][] = [
    ["Linear weights: bits per parameter", ...cols.map((c) => c.bits.toFixed(3))],
    ["Perplexity before fine-tuning", ...cols.map((c) => c.before.toFixed(3))],
    [
      `Perplexity after fine-tuning (mean +- std, ${n} seed${n > 1 ? "s" : ""})`,
      ...cols.map((c) => fmtSpread(c.afterSpread)),
    ],
    [
      "After: difference from bf16",
      ...cols.map((c) => {
        const d = c.format === "bf16" ? null : differenceOf(q, "bf16", c.format);
        return d ? describeDifference(d) : "-";
      }),
    ],
    [
      "After: difference from Int4",
      ...cols.map((c) => {
        const d = c.format === "int4" || c.format === "bf16" ? null : differenceOf(q, "int4", c.format);
        return d ? describeDifference(d) : "-";
      }),
    ],
  ];
  const check = q.qloraCheck;
  const sweep = q.sweep.map((s) => `${s.lr}: ${s.bf16.toFixed(3)} / ${s.nf4dq.toFixed(3)}`).join(", ");
  return {
    title: "Quality by data type of the base (QLoRA paper Table 2 style), tiny model on SOTU",
    headers: ["", ...cols.map((c) => FORMAT_LABELS[c.format])],
    rows,
    notes: [
      `Perplexity (exp of the mean cross-entropy per byte token) on ${
        q.tokens.test.toLocaleString("en-US")
      } ` +
      `held-out SOTU tokens (${o.testBatches} batches of ${o.batch}x${o.seq}, spread over the validation ` +
      `addresses). The pretrained tiny base's linear weights are stored in each data type (rounded through ` +
      `the library's quantize/dequantize, blocksize 64; DQ = double quantization of the constants); ` +
      `embeddings, norms, LM head, adapters and activations stay f32.`,
      `Fine-tuning: rank-8 adapters on all 7 linears, ${o.steps} steps of ${o.batch}x${o.seq} tokens, AdamW, ` +
      `the same learning rate ${q.lr} for every data type, chosen by a sweep on ` +
      `${
        q.tokens.dev.toLocaleString("en-US")
      } other held-out tokens (seed 0; dev perplexity bf16 / NF4 + DQ ` +
      `per lr: ${sweep}). Seeds change the adapters' initialisation and the batch order.`,
      `A difference is "larger than the spread" when |mean difference| > std(a) + std(b) over the seeds; ` +
      `"same seeds" is the mean +- std of the per-seed differences.`,
      `Check: the library's own QLoRA model (NF4 + DQ base) gives ${check.model.toFixed(4)} before ` +
      `fine-tuning, the rounded base ${check.rounded.toFixed(4)}.`,
      `Claim "NF4 preserves much higher accuracy than Int4" (seed document): ${nf4VersusInt4(q)}.`,
    ],
  };
}
