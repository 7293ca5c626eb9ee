/**
 * The quality table of `./deno task table` (the study: lib/lab/quality.ts): perplexity per base data type
 * before and after fine-tuning, the differences weighed against the seed-to-seed spread, and the verdict
 * on the claim that NF4 preserves much higher accuracy than Int4.
 *
 * @module
 */

import {
  describeDifference,
  differenceOf,
  fmtSpread,
  FORMAT_LABELS,
  nf4VersusInt4,
  type QualityResult,
  WEIGHT_FORMATS,
} from "../../mod.ts";
import type { Table } from "./types.ts";

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
