// Generation: the cached path (prefill, then one token at a time over a KV cache) against the full forward
// pass over the same tokens, in every mode and dtype, on the backend QLORA_BACKEND names (the suite runs
// on the CPU and again on the emulated CUDA backend); left padding; greedy and sampled tokens; stop
// tokens; the cache in the ledger, freed with the generation, and refused by a budget like any buffer.
import { assert, assertEquals, assertNotEquals, assertRejects, assertThrows } from "@std/assert";
import {
  fillUniform,
  getDevice,
  InvalidArgumentError,
  KVCache,
  kvCacheBytes,
  LlamaModel,
  type LlamaOptions,
  LoRALinear,
  OutOfMemoryError,
  TARGET_MODULES,
  Tensor,
} from "../mod.ts";
import { assertClose } from "./_assert_close.ts";

const CONFIG = {
  vocabSize: 40,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
};

/** A model whose LoRA adapters are not zero (B random), so that they change the logits. */
function model(mode: "full" | "lora" | "qlora", options: LlamaOptions = {}): LlamaModel {
  const m = new LlamaModel(CONFIG, { mode, rank: 4, std: 0.3, seed: 5, ...options });
  if (mode !== "full") {
    for (let i = 0; i < CONFIG.layers; i++) {
      for (const name of TARGET_MODULES) {
        const l = m.block(i)[name];
        if (l instanceof LoRALinear) fillUniform(l.loraB, -0.2, 0.2, 100 * i + name.length);
      }
    }
  }
  return m;
}

/** Logits of every position, full forward, as rows of a host array. */
function fullLogits(m: LlamaModel, ids: number[]): Float32Array {
  using tokens = Tensor.from(new Int32Array(ids), { shape: [1, ids.length], device: m.device });
  using logits = m.logits(tokens);
  return logits.toFloat32();
}

/** Greedy tokens by repeated full forward passes: the reference the cached path must reproduce. */
function greedyReference(m: LlamaModel, prompt: number[], n: number): number[] {
  const ids = [...prompt], out: number[] = [];
  for (let i = 0; i < n; i++) {
    const rows = fullLogits(m, ids), v = CONFIG.vocabSize, last = rows.subarray(rows.length - v);
    let best = 0;
    for (let j = 1; j < v; j++) if (last[j] > last[best]) best = j;
    out.push(best);
    ids.push(best);
  }
  return out;
}

const PROMPT = [3, 17, 9, 1, 22, 30, 5, 11, 2, 38, 14, 7];
const VARIANTS = [
  { mode: "full", dtype: "f32" },
  { mode: "lora", dtype: "f32" },
  { mode: "lora", dtype: "f32", merged: true },
  { mode: "qlora", dtype: "f32" },
  { mode: "full", dtype: "bf16" },
  { mode: "lora", dtype: "bf16", merged: true },
  { mode: "qlora", dtype: "bf16" },
] as const;

for (const v of VARIANTS) {
  const name = `${v.mode}${"merged" in v ? " (merged)" : ""} ${v.dtype}`;
  Deno.test(`generation (${name}): cached logits (prefill 7, then 5 single steps) equal the full forward`, () => {
    using m = model(v.mode, { dtype: v.dtype });
    if ("merged" in v) m.merge();
    const full = fullLogits(m, PROMPT);
    using cache = new KVCache(CONFIG, { capacity: 16, dtype: v.dtype });
    const rows: Float32Array[] = [];
    for (const [at, n] of [[0, 7], [7, 1], [8, 1], [9, 1], [10, 1], [11, 1]]) {
      using tokens = Tensor.from(new Int32Array(PROMPT.slice(at, at + n)), { shape: [1, n] });
      using logits = m.infer(tokens, cache);
      rows.push(logits.toFloat32());
    }
    assertEquals(cache.length, PROMPT.length);
    const cached = new Float32Array(rows.flatMap((r) => [...r]));
    // f32: the cached path sums in another order (attention blocks, the fused 4-bit products at a few
    // rows); bf16 rounds every activation to 8 bits of mantissa, the two paths round at different places
    // (1 ulp apart in one layer: 0.03 at logits of 4 to 8), and two random layers (std 0.3) amplify that.
    assertClose(cached, full, v.dtype === "f32" ? 1e-5 : 0.06, name);
  });
}

Deno.test("generation: a left-padded batch gives each prompt the logits it has alone", () => {
  using m = model("qlora");
  const prompts = [PROMPT.slice(0, 9), PROMPT.slice(4, 7), [PROMPT[0]]];
  const longest = 9;
  using cache = new KVCache(CONFIG, {
    batch: 3,
    capacity: 12,
    firstKey: prompts.map((p) => longest - p.length),
  });
  const ids = new Int32Array(3 * longest); // padding: token 0, never attended
  prompts.forEach((p, b) => ids.set(p, b * longest + longest - p.length));
  using tokens = Tensor.from(ids, { shape: [3, longest] });
  using prefill = m.infer(tokens, cache, { lastOnly: true });
  const got = prefill.toFloat32(), V = CONFIG.vocabSize;
  // Then one decode step with a different token per sequence.
  using next = Tensor.from(new Int32Array([4, 5, 6]), { shape: [3, 1] });
  using step = m.infer(next, cache);
  const got2 = step.toFloat32();
  prompts.forEach((p, b) => {
    const alone = fullLogits(m, [...p, 4 + b]);
    assertClose(
      got.subarray(b * V, (b + 1) * V),
      alone.subarray((p.length - 1) * V, p.length * V),
      1e-5,
      `prompt ${b}`,
    );
    assertClose(got2.subarray(b * V, (b + 1) * V), alone.subarray(p.length * V), 1e-5, `prompt ${b} step`);
  });
});

for (const mode of ["full", "lora", "qlora"] as const) {
  Deno.test(`generation (${mode}): greedy tokens equal repeated full forward passes`, async () => {
    using m = model(mode);
    const prompt = PROMPT.slice(0, 5);
    const g = m.generate(prompt, { maxNewTokens: 12 });
    const [tokens] = await g.collect();
    assertEquals(tokens, greedyReference(m, prompt, 12));
    const s = g.stats!;
    assertEquals(
      [s.batch, s.promptTokens, s.decodeSteps, s.newTokens[0], s.cacheRows, s.cacheCapacity],
      [1, 5, 11, 12, 16, 17],
    );
    assert(s.prefillTokensPerSecond > 0 && s.decodeTokensPerSecond > 0);
  });
}

Deno.test("generation: sampling is seeded; top-k 1 and a tiny top-p are greedy", async () => {
  using m = model("lora");
  const run = (o: Record<string, number>) =>
    m.generate([PROMPT.slice(0, 4)], { maxNewTokens: 10, ...o }).collect();
  const a = await run({ temperature: 1.5, seed: 1 });
  assertEquals(a, await run({ temperature: 1.5, seed: 1 }));
  assertNotEquals(a, await run({ temperature: 1.5, seed: 2 }));
  const greedy = await run({});
  assertEquals(await run({ temperature: 1.5, topK: 1, seed: 9 }), greedy);
  assertEquals(await run({ temperature: 1.5, topP: 1e-6, seed: 9 }), greedy);
  // A heavy repetition penalty keeps greedy decoding off tokens already seen (the prompt's included).
  const [fresh] = await run({ repetitionPenalty: 1e6 });
  const seen = new Set(PROMPT.slice(0, 4));
  for (const t of fresh) assert(!seen.has(t), `token ${t} repeated`), seen.add(t);
});

Deno.test("generation: stop tokens end each sequence on its own; the steps report it", async () => {
  using m = model("qlora");
  const prompts = [PROMPT.slice(0, 3), PROMPT.slice(3, 8)];
  const free = await m.generate(prompts, { maxNewTokens: 8 }).collect();
  const stop = free[0][2], k = free[0].indexOf(stop); // the first sequence stops at its first `stop`
  const steps = [];
  for await (const s of m.generate(prompts, { maxNewTokens: 8, stopTokens: [stop] })) steps.push(s);
  const first = steps.map((s) => s.tokens[0]), second = steps.map((s) => s.tokens[1]);
  assertEquals(first.slice(0, k + 1), free[0].slice(0, k + 1));
  assert(first.slice(k + 1).every((t) => t === -1), "the first sequence runs on after its stop token");
  const end = free[1].indexOf(stop), last = end < 0 ? 8 : end + 1;
  assertEquals(second.slice(0, last), free[1].slice(0, last));
  assert(second.slice(last).every((t) => t === -1), "the second sequence runs on after its stop token");
  assertEquals(steps.length, Math.max(k + 1, last));
});

Deno.test("generation: the cache is in the ledger while it runs, freed after, even when the loop breaks", async () => {
  const device = getDevice();
  using m = model("qlora");
  const before = device.memory().current.kv_cache;
  const g = m.generate([PROMPT.slice(0, 6), PROMPT.slice(0, 2)], { maxNewTokens: 10 });
  let seen = 0;
  for await (const step of g) {
    const want = kvCacheBytes(CONFIG, { rows: 16, batch: 2 }) + 2 * 4; // + the first-key row (i32[2])
    assertEquals(device.memory().current.kv_cache - before, want);
    assertEquals([step.cacheBytes, step.cachedTokens], [want, 6 + step.step]);
    if (++seen === 3) break;
  }
  assertEquals(device.memory().current.kv_cache, before);
  assertEquals(g.cache, null);
  assertThrows(() => g[Symbol.asyncIterator](), InvalidArgumentError, "already iterated");
});

Deno.test("generation: a cache grown in chunks gives the same tokens; the ledger steps up by chunks", async () => {
  const device = getDevice();
  using m = model("lora");
  const whole = await m.generate(PROMPT.slice(0, 3), { maxNewTokens: 20 }).collect();
  const sizes = new Set<number>();
  const g = m.generate(PROMPT.slice(0, 3), { maxNewTokens: 20, growBy: 8 });
  const tokens: number[] = [];
  for await (const s of g) tokens.push(s.token), sizes.add(device.memory().current.kv_cache);
  assertEquals([tokens], whole);
  const perRow = kvCacheBytes(CONFIG, { rows: 1 });
  // 8 rows for the prompt, then 16, then the 23 rows of prompt + maxNewTokens (maxTokens caps the chunk).
  assertEquals([...sizes].sort((a, b) => a - b), [8, 16, 23].map((r) => r * perRow));
});

Deno.test("generation: a budget too small for the cache refuses it with OutOfMemoryError; nothing stays", async () => {
  const device = getDevice();
  using m = model("qlora");
  const before = device.memory().totalCurrent;
  device.setMemoryBudget(before + kvCacheBytes(CONFIG, { rows: 8 }));
  try {
    await assertRejects(
      () => m.generate(PROMPT.slice(0, 4), { maxNewTokens: 20 }).collect(),
      OutOfMemoryError,
    );
  } finally {
    device.setMemoryBudget(0);
  }
  assertEquals(device.memory().totalCurrent, before);
});

Deno.test("generation: bad prompts and options are refused before anything runs", () => {
  using m = model("lora");
  const bad: [unknown, Record<string, unknown>, string][] = [
    [[], {}, "empty"],
    [[1, 40], {}, "outside the vocabulary"],
    [[1, 2.5], {}, "outside the vocabulary"],
    [[[1], []], {}, "prompt 1 is empty"],
    [[1], { maxNewTokens: 0 }, "maxNewTokens"],
    [[1], { maxNewTokens: 32 }, "maxSeq 32"],
    [[1], { maxTokens: 4, maxNewTokens: 8 }, "maxTokens is 4"],
    [[1], { maxNewTokens: 4, temperature: -1 }, "temperature"],
    [[1], { maxNewTokens: 4, topP: 0 }, "topP"],
    [[1], { maxNewTokens: 4, padToken: 40 }, "padToken"],
    [[1], { maxNewTokens: 4, growBy: -1 }, "growBy"],
  ];
  for (const [prompt, options, message] of bad) {
    assertThrows(() => m.generate(prompt as number[], options), InvalidArgumentError, message);
  }
  using cache = new KVCache({ ...CONFIG, layers: 1 });
  using tokens = Tensor.from(new Int32Array([1]), { shape: [1, 1] });
  assertThrows(() => m.infer(tokens, cache), InvalidArgumentError, "another shape");
  using small = new KVCache(CONFIG, { capacity: 2 });
  using three = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
  assertThrows(() => m.infer(three, small), InvalidArgumentError, "does not grow");
});
