/**
 * `deno run -A bench/hf_load_7b.ts [--dir build/hf-7b] [--keep] [--budget 6GiB] [--layers 32]`: writes a
 * synthetic LLaMA-2-7B-shaped checkpoint in transformers' layout (bf16, sharded like the real one, with
 * `model.safetensors.index.json`), then loads it in QLoRA mode under the budget and reports the load time,
 * the ledger's peak, and the peak host RSS sampled after every weight. The weights are a tiled random
 * pattern (the numbers do not matter for memory, and writing 13.5 GB of fresh random values would take
 * longer than the load). Removes the checkpoint afterwards unless `--keep`.
 *
 * @module
 */

import {
  expectedWeights,
  f32ToBf16,
  formatBytes,
  getDevice,
  hfConfigJson,
  LLAMA_CONFIGS,
  LlamaModel,
  openModelDir,
  SafetensorsWriter,
  type WeightSource,
  writeFileAtomic,
} from "../mod.ts";
import { parseArgs } from "../scripts/_cli.ts";

const { flags } = parseArgs(Deno.args, {
  dir: "string",
  keep: "boolean",
  budget: "string",
  layers: "string",
});
const dir = (flags.dir as string | undefined) ?? "build/hf-7b";
const config = { ...LLAMA_CONFIGS["7b"], layers: flags.layers ? Number(flags.layers) : 32 };
const shapes = expectedWeights(config, false);

// ---- write ----------------------------------------------------------------------------------------
const t0 = performance.now();
await Deno.mkdir(dir, { recursive: true });
const pattern = new Uint16Array(1 << 20);
{
  let s = 12345;
  const f = new Float32Array(pattern.length).map(() => {
    s = (s * 1103515245 + 12345) >>> 0;
    return ((s / 2 ** 32) - 0.5) * 0.04;
  });
  pattern.set(f32ToBf16(f));
}
const names = [...shapes.keys()];
const shardCount = 3;
const perShard = Math.ceil(names.length / shardCount);
const weightMap: Record<string, string> = {};
let total = 0;
for (let s = 0; s < shardCount; s++) {
  const file = `model-${String(s + 1).padStart(5, "0")}-of-${
    String(shardCount).padStart(5, "0")
  }.safetensors`;
  const part = names.slice(s * perShard, (s + 1) * perShard);
  await using writer = await SafetensorsWriter.create(
    `${dir}/${file}`,
    part.map((name) => ({ name, dtype: "BF16" as const, shape: shapes.get(name)! })),
    { format: "pt" },
  );
  for (const name of part) {
    const n = shapes.get(name)!.reduce((a, b) => a * b, 1);
    for (let i = 0; i < n; i += pattern.length) {
      const chunk = pattern.subarray(0, Math.min(pattern.length, n - i));
      await writer.write(name, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }
    weightMap[name] = file;
    total += 2 * n;
  }
  await writer.close();
}
await writeFileAtomic(`${dir}/config.json`, JSON.stringify(hfConfigJson(config, { dtype: "bf16" }), null, 2));
await writeFileAtomic(
  `${dir}/model.safetensors.index.json`,
  JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
);
console.log(
  `wrote ${dir}: ${formatBytes(total)} of bf16 weights in ${shardCount} shards in ${
    ((performance.now() - t0) / 1000).toFixed(0)
  } s`,
);

// ---- load -----------------------------------------------------------------------------------------
const device = getDevice();
device.setMemoryBudget((flags.budget as string | undefined) ?? "6GiB");
device.resetPeak();
let rssPeak = Deno.memoryUsage().rss;
const t1 = performance.now();
{
  using opened = await openModelDir(dir);
  const weights: WeightSource = (name, shape) => {
    const v = opened.weights(name, shape);
    rssPeak = Math.max(rssPeak, Deno.memoryUsage().rss);
    return v;
  };
  using model = new LlamaModel(opened.hf.config, { mode: "qlora", dtype: "bf16", rank: 8, weights });
  rssPeak = Math.max(rssPeak, Deno.memoryUsage().rss);
  const snap = device.memory();
  console.log(
    `loaded in QLoRA mode under ${formatBytes(snap.budget)} in ${
      ((performance.now() - t1) / 1000).toFixed(0)
    } s: ` +
      `ledger peak ${formatBytes(snap.totalPeak)}, now ${formatBytes(snap.totalCurrent)}; peak host RSS ` +
      `${formatBytes(rssPeak)}; ${model.trainableParameters.toLocaleString()} trainable parameters`,
  );
  console.log(snap.toString());
}
if (!flags.keep) await Deno.remove(dir, { recursive: true });
