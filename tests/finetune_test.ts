// `deno task finetune` on a tiny model directory in transformers' layout (written here with the tiny
// tokenizer of tests/data/tokenizer/tiny): the loss falls, the PEFT adapter reloads onto the base with the
// same logits, and the merged export reloads with the merged model's logits.
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { runScript } from "./_run_script.ts";
import {
  getDevice,
  LlamaModel,
  loadAdapter,
  openModelDir,
  readSafetensors,
  saveModelDir,
  Tensor,
} from "../mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TOKENIZER = `${ROOT}tests/data/tokenizer/tiny`;
const CONFIG = {
  vocabSize: 64,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
};

async function finetune(args: string[]): Promise<{ code: number; out: string }> {
  const r = await runScript("finetune.ts", args);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** A tiny random LLaMA saved as a model directory with the tiny tokenizer. */
async function tinyModelDir(dir: string): Promise<void> {
  using base = new LlamaModel(CONFIG, { mode: "full", seed: 1, std: 0.1, device: getDevice("cpu") });
  await saveModelDir(base, dir, {
    dtype: "f32",
    config: { bos_token_id: 1, eos_token_id: 2, pad_token_id: 3 },
  });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${TOKENIZER}/${f}`, `${dir}/${f}`);
  }
}

/** 40 prompt/completion pairs as JSON Lines. */
async function writePairs(path: string): Promise<void> {
  const pairs = ["hello", "hell", "hallo", "he", "wor"].flatMap((p, i) =>
    Array.from(
      { length: 8 },
      (_, j) => ({ prompt: `${p} `, completion: j % 2 ? "world!" : `hello${"?".repeat(i % 3)}` }),
    )
  );
  await Deno.writeTextFile(path, pairs.map((p) => JSON.stringify(p)).join("\n") + "\n");
}

function logLine(out: string, prefix: string): string {
  const line = out.split("\n").find((l) => l.startsWith(prefix));
  assert(line, `no line starting with "${prefix}" in:\n${out}`);
  return line;
}

Deno.test("finetune: QLoRA on prompt/completion pairs; the adapter and the merged export reload exactly", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const model = `${tmp}/tiny-llama`;
    await tinyModelDir(model);
    await writePairs(`${tmp}/data.jsonl`);
    const out = `${tmp}/out`;
    const r = await finetune([
      "--model",
      model,
      "--data",
      `${tmp}/data.jsonl`,
      "--mode",
      "qlora",
      "--steps",
      "40",
      "--batch",
      "4",
      "--seq",
      "16",
      "--lr",
      "1e-2",
      "--rank",
      "4",
      "--alpha",
      "8",
      "--dtype",
      "f32",
      "--out",
      out,
      "--merge",
      "--verify",
    ]);
    assertEquals(r.code, 0, r.out);
    console.log(
      r.out.split("\n").filter((l) => /^(step|validation|verify|merged|loaded)/.test(l)).join("\n"),
    );
    const before = Number(logLine(r.out, "validation loss before:").split(" ")[3]);
    const after = Number(logLine(r.out, "validation loss after:").split(" ")[3]);
    assert(after < before * 0.7, `the loss falls: ${before} -> ${after}`);
    assertStringIncludes(logLine(r.out, "verify: the adapter reloaded"), "max |logit difference| 0");
    assertStringIncludes(logLine(r.out, "verify: the merged export reloaded"), "max |logit difference| 0");
    const cfg = JSON.parse(await Deno.readTextFile(`${out}/adapter_config.json`));
    assertEquals([cfg.base_model_name_or_path, cfg.r, cfg.lora_alpha, cfg.target_modules.length], [
      "tiny-llama",
      4,
      8,
      7,
    ]);
    const adapters = await readSafetensors(`${out}/adapter_model.safetensors`);
    assertEquals(adapters.size, 2 * 7 * CONFIG.layers);
    // The merged directory is a model directory: config, weights and the tokenizer, loadable here.
    using merged = await openModelDir(`${out}/merged`);
    assertEquals(merged.hf.config, CONFIG);
    await Deno.stat(`${out}/merged/tokenizer.json`);
    // And in this process: the base quantized again (QLoRA) + the adapter against the merged export, to rounding.
    using base = await openModelDir(model);
    using withAdapter = new LlamaModel(CONFIG, {
      mode: "qlora",
      rank: 4,
      alpha: 8,
      weights: base.weights,
      device: getDevice("cpu"),
    });
    await loadAdapter(withAdapter, out);
    using exported = new LlamaModel(CONFIG, {
      mode: "lora",
      rank: 4,
      weights: merged.weights,
      targetModules: [],
      device: getDevice("cpu"),
    });
    using tokens = Tensor.from(new Int32Array([1, 21, 25, 15, 7, 8, 9, 10]), {
      shape: [1, 8],
      device: getDevice("cpu"),
    });
    using a = withAdapter.logits(tokens), b = exported.logits(tokens);
    const la = a.toFloat32(), lb = b.toFloat32();
    let diff = 0, scale = 0;
    for (let i = 0; i < la.length; i++) {
      diff = Math.max(diff, Math.abs(la[i] - lb[i])), scale = Math.max(scale, Math.abs(la[i]));
    }
    assert(diff / scale < 1e-5, `base + adapter vs merged export: ${diff / scale}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("finetune: refuses a missing model directory and bad flags with a clear message", async () => {
  const r = await finetune(["--model", "/nonexistent", "--data", "brown", "--mode", "qlora"]);
  assertEquals(r.code, 1);
  assertStringIncludes(r.out, "/nonexistent/config.json");
  const bad = await finetune(["--model", "x", "--data", "brown", "--mode", "full"]);
  assertEquals(bad.code, 1);
  assertStringIncludes(bad.out, "--mode must be lora or qlora");
  for (
    const [args, message] of [
      [["--reserve", "1GiB"], "--reserve needs --budget"],
      [["--budget", "1GiB", "--reserve", "1GiB"], "must be smaller than --budget"],
      [["--offload-checkpoints"], "--offload-checkpoints needs --checkpointing"],
      [["--loss-chunk", "1.5"], "--loss-chunk"],
    ] as const
  ) {
    const r = await finetune(["--model", "x", "--data", "brown", "--mode", "lora", ...args]);
    assertEquals(r.code, 1, `${args.join(" ")}: ${r.out}`);
    assertStringIncludes(r.out, message);
  }
});

Deno.test("finetune: --budget less --reserve is the ledger's budget; --offload-checkpoints puts the checkpoints in the host pool", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const model = `${tmp}/tiny-llama`, data = `${tmp}/data.jsonl`;
    await tinyModelDir(model);
    await writePairs(data);
    const common = [
      "--model",
      model,
      "--data",
      data,
      "--mode",
      "lora",
      "--steps",
      "2",
      "--batch",
      "2",
      "--seq",
      "16",
      "--dtype",
      "f32",
      "--budget",
      "1GiB",
      "--reserve",
      "256MiB",
      "--checkpointing",
      "--loss-chunk",
      "8",
    ];
    const kept = await finetune([...common, "--out", `${tmp}/kept`]);
    assertEquals(kept.code, 0, kept.out);
    const total = logLine(kept.out, "total ");
    assertStringIncludes(total, "budget 768.00 MiB"); // 1 GiB less 256 MiB
    assert(!kept.out.includes("host pool"), kept.out);
    const off = await finetune([...common, "--offload-checkpoints", "--out", `${tmp}/off`]);
    assertEquals(off.code, 0, off.out);
    const host = logLine(off.out, "host pool");
    assert(!/peak +0 B/.test(host), host);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
