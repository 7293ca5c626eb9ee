// The inference estimate against the ledger: generation's peak per category (weights, adapters, the KV
// cache, a step's activations and workspace) for each mode, merged or not, f32 and bf16, batch 1 and 2,
// on the backend the suite runs on.
import { assert, assertEquals } from "@std/assert";
import { CATEGORIES, estimateInference, getDevice, kvCacheBytes, LLAMA_CONFIGS, LlamaModel } from "../mod.ts";
import { error, workspaceError } from "./_estimate_judge.ts";

const CONFIG = { ...LLAMA_CONFIGS.tiny, layers: 2, kvHeads: 2, maxSeq: 128 };
const CASES = [
  { mode: "full", dtype: "f32", batch: 1 },
  { mode: "lora", dtype: "bf16", batch: 1 },
  { mode: "lora", dtype: "f32", batch: 1, merged: true },
  { mode: "qlora", dtype: "bf16", batch: 1 },
  { mode: "qlora", dtype: "f32", batch: 2 },
  { mode: "qlora", dtype: "bf16", batch: 1, merged: true },
] as const;

for (const c of CASES) {
  const name = `${c.mode}${"merged" in c ? " merged" : ""} ${c.dtype} batch ${c.batch}`;
  Deno.test(`inference estimate (${name}): the ledger's peak per category, within 2%`, async () => {
    const device = getDevice();
    const backend = device.backend === "cpu" ? "cpu" : "cuda";
    using model = new LlamaModel(CONFIG, { mode: c.mode, dtype: c.dtype, rank: 4, std: 0.1 });
    if ("merged" in c) model.merge();
    const prompt = 40, newTokens = 24;
    const prompts = Array.from(
      { length: c.batch },
      (_, b) => Array.from({ length: prompt }, (_, i) => (i * 7 + b) % 300),
    );
    device.resetPeak();
    const before = device.memory();
    await model.generate(prompts, { maxNewTokens: newTokens }).collect();
    const after = device.memory();
    const e = estimateInference(CONFIG, {
      mode: c.mode,
      dtype: c.dtype,
      batch: c.batch,
      context: prompt + newTokens,
      prompt,
      rank: 4,
      merged: "merged" in c,
      backend,
    });
    assertEquals(
      e.bytes.kv_cache,
      kvCacheBytes(CONFIG, { rows: prompt + newTokens, batch: c.batch, dtype: c.dtype }),
    );
    for (const cat of CATEGORIES) {
      // What a generation allocates peaks during it; the weights and adapters were there before.
      const measured = ["activations", "workspace", "kv_cache"].includes(cat)
        ? after.peak[cat]
        : before.current[cat];
      const err = cat === "workspace"
        ? workspaceError(measured, e.bytes[cat])
        : error(measured, e.bytes[cat]);
      assert(err <= 0.02, `${name}: ${cat} estimated ${e.bytes[cat]}, measured ${measured}`);
    }
  });
}
