import { assert, assertAlmostEquals, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  ByteTokenizer,
  LLAMA_CONFIGS,
  LlamaModel,
  nf4VersusInt4,
  roundTrip,
  runQuality,
  TextDataset,
  WEIGHT_FORMATS,
} from "../mod.ts";
import { fakeQuality } from "./_quality_result.ts";

Deno.test("quality verdict: NF4 beats Int4 only by more than the spread", () => {
  const base = { bf16: [7.0, 7.1, 7.2], "nf4-dq": [7.05, 7.15, 7.25], fp4: [7.3, 7.4, 7.5] };
  const clear = fakeQuality({ ...base, nf4: [7.05, 7.15, 7.25], int4: [8.0, 8.1, 8.2] });
  assertStringIncludes(nf4VersusInt4(clear), "holds here");
  const edge = fakeQuality({ ...base, nf4: [7.05, 7.15, 7.25], int4: [7.1, 7.2, 7.3] });
  assertStringIncludes(nf4VersusInt4(edge), "does not hold here: NF4's perplexity is lower, but not");
  assertStringIncludes(nf4VersusInt4(edge), "consistently lower"); // every seed: Int4 - NF4 = 0.05
  const noise = fakeQuality({ ...base, nf4: [7.05, 7.15, 7.25], int4: [7.2, 7.1, 7.3] });
  assertStringIncludes(nf4VersusInt4(noise), "differ by less than fine-tuning noise");
  const worse = fakeQuality({ ...base, nf4: [7.5, 7.6, 7.7], int4: [7.1, 7.2, 7.3] });
  assertStringIncludes(nf4VersusInt4(worse), "is not lower");
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
  assertStringIncludes(nf4VersusInt4(q), "NF4's perplexity");
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
