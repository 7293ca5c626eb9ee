import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { ByteTokenizer, LLAMA_CONFIGS, LlamaModel, TextDataset } from "../mod.ts";
import { compare, fmtSpread, spread } from "../scripts/table/stats.ts";
import { type QualityResult, roundTrip, runQuality, WEIGHT_FORMATS } from "../scripts/table/quality.ts";
import { nf4VersusInt4, qualityTable } from "../scripts/table/quality_table.ts";

Deno.test("quality stats: mean and sample standard deviation", () => {
  const s = spread([7.1, 7.3, 7.2]);
  assertAlmostEquals(s.mean, 7.2, 1e-12);
  assertAlmostEquals(s.std, 0.1, 1e-12); // n - 1, not n (that would be 0.0816)
  assertEquals(spread([5]), { mean: 5, std: 0, n: 1 });
  assertThrows(() => spread([]), RangeError, "no values");
  assertThrows(() => spread([1, NaN]), RangeError, "not finite");
  assertEquals(fmtSpread(spread([1, 3])), "2.000 +- 1.414");
});

Deno.test("quality stats: a difference counts only when larger than the seed spread", () => {
  const a = [7.0, 7.1, 7.2]; // std 0.1
  const far = compare(a, [7.5, 7.6, 7.7]);
  assertAlmostEquals(far.diff, 0.5, 1e-12);
  assertAlmostEquals(far.spread, 0.2, 1e-12);
  assert(far.resolved);
  const near = compare(a, [7.15, 7.25, 7.35]); // 0.15 < 0.2
  assert(!near.resolved);
  assert(near.pairedResolved, "the same shift for every seed is resolved when paired");
  const mixed = compare(a, [7.3, 7.0, 7.2]); // per-seed differences +0.3, -0.1, 0: no consistent shift
  assert(!mixed.resolved && !mixed.pairedResolved);
  const single = compare([7], [9]);
  assert(!single.resolved, "one seed has no measured spread: never resolved");
  assertEquals(compare([1, 2], [1, 2, 3]).paired, null);
});

/** A QualityResult with given after-perplexities per format (3 seeds each). */
function fake(after: Record<string, number[]>): QualityResult {
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

Deno.test("quality verdict: NF4 beats Int4 only by more than the spread", () => {
  const base = { bf16: [7.0, 7.1, 7.2], "nf4-dq": [7.05, 7.15, 7.25], fp4: [7.3, 7.4, 7.5] };
  const clear = fake({ ...base, nf4: [7.05, 7.15, 7.25], int4: [8.0, 8.1, 8.2] });
  assertStringIncludes(nf4VersusInt4(clear), "holds here");
  const edge = fake({ ...base, nf4: [7.05, 7.15, 7.25], int4: [7.1, 7.2, 7.3] });
  assertStringIncludes(nf4VersusInt4(edge), "does not hold here: NF4's perplexity is lower, but not");
  assertStringIncludes(nf4VersusInt4(edge), "consistently lower"); // every seed: Int4 - NF4 = 0.05
  const noise = fake({ ...base, nf4: [7.05, 7.15, 7.25], int4: [7.2, 7.1, 7.3] });
  assertStringIncludes(nf4VersusInt4(noise), "differ by less than fine-tuning noise");
  const worse = fake({ ...base, nf4: [7.5, 7.6, 7.7], int4: [7.1, 7.2, 7.3] });
  assertStringIncludes(nf4VersusInt4(worse), "is not lower");
  const t = qualityTable(clear);
  assertEquals(t.headers.length, 6);
  for (const row of t.rows) assertEquals(row.length, 6, row[0]);
  assertEquals(t.rows[2][1], "7.100 +- 0.100");
  assertStringIncludes(t.rows[4][2], "larger than the spread"); // NF4 vs Int4
});

Deno.test("quality: rounding through each data type", () => {
  const w = Float32Array.from({ length: 128 * 64 }, (_, i) => Math.sin(i * 0.37) * 0.05);
  const err = (f: (typeof WEIGHT_FORMATS)[number]) => {
    const r = roundTrip(w, [128, 64], f);
    return { bits: r.bits, mse: r.values.reduce((s, v, i) => s + (v - w[i]) ** 2, 0) / w.length };
  };
  const bf16 = err("bf16"), nf4 = err("nf4"), dq = err("nf4-dq"), int4 = err("int4");
  assertEquals(bf16.bits, 16);
  assertEquals(nf4.bits, 4.5);
  assert(dq.bits < 4.2, `double quantization stores fewer bits: ${dq.bits}`);
  assert(bf16.mse < nf4.mse / 100, "bf16 is far closer than 4 bits");
  assert(nf4.mse > 0 && int4.mse > 0);
});

Deno.test("quality: the study end to end at minimal size", async () => {
  const config = { ...LLAMA_CONFIGS.tiny, layers: 1, dim: 64, hiddenDim: 128, heads: 2, kvHeads: 2 };
  const values = (() => {
    using m = new LlamaModel(config, { mode: "full", seed: 3 });
    return m.namedWeights();
  })();
  const text = Array.from({ length: 400 }, (_, i) => `Line ${i}: the union is ${i % 7} strong.`).join("\n");
  const data = TextDataset.fromText(text, { tokenizer: new ByteTokenizer({ padVocabTo: 64 }) });
  const q = await runQuality((name) => values.get(name)?.values, config, data, {
    seeds: 2,
    steps: 2,
    lrs: [1e-3, 3e-3],
    testBatches: 2,
    devBatches: 1,
    batch: 2,
    seq: 32,
  });
  assertEquals(q.formats.map((f) => f.format), [...WEIGHT_FORMATS]);
  assert([1e-3, 3e-3].includes(q.lr));
  assertEquals(q.sweep.length, 2);
  for (const f of q.formats) {
    assertEquals(f.after.length, 2);
    assert(f.before > 1 && f.after.every((p) => Number.isFinite(p) && p > 1), f.format);
  }
  // The rounded NF4 + DQ base computes what the library's own QLoRA model computes.
  assertAlmostEquals(q.qloraCheck.model, q.qloraCheck.rounded, 1e-3 * q.qloraCheck.model);
  assertEquals(q.tokens, { test: 128, dev: 64 });
  const t = qualityTable(q);
  assertStringIncludes(t.notes.join("\n"), "NF4 preserves much higher accuracy than Int4");
  await assertRejects(
    () =>
      runQuality((name) => values.get(name)?.values, config, data, {
        seeds: 1,
        steps: 1,
        lrs: [1e-3],
        testBatches: 10_000,
        devBatches: 1,
        batch: 2,
        seq: 32,
      }),
    RangeError,
    "held-out batches",
  );
});
