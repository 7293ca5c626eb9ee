/**
 * `./deno task generate --model DIR [--adapter DIR] [--mode full|lora|qlora] --prompt TEXT [options]`:
 * generates text from a Hugging Face LLaMA model directory with its own tokenizer, optionally with a PEFT
 * adapter (`deno task finetune` writes one), printing the tokens as they come, then the prefill and decode
 * speeds and the ledger (weights, KV cache). `--compare` answers the prompt with the base first, then with
 * the adapter: what fine-tuning changed, token by token. `--budget SIZE` caps the ledger and `--reserve
 * SIZE` takes the device's own overhead out of it (the CUDA context and the libraries' workspaces, which
 * no ledger sees): `--budget 6GiB --reserve 0.31GiB` behaves like a 6 GiB card. `--help` lists every
 * option with its default.
 *
 * @module
 */

import {
  formatBytes,
  type Generation,
  getDevice,
  HFTokenizer,
  LlamaModel,
  loadAdapter,
  openModelDir,
  TARGET_MODULES,
  type TargetModule,
  TextStream,
} from "../mod.ts";
import { BUDGET_HELP, budgetFlags, helpText, parseArgs, runMain, UsageError } from "./_cli.ts";

const USAGE = helpText(
  "./deno task generate --model DIR --prompt TEXT [--adapter DIR] [--mode full|lora|qlora] [options]",
  [
    [
      "--model DIR",
      "Hugging Face LLaMA directory (config.json, safetensors, tokenizer.json); required",
    ],
    ["--prompt TEXT", "the prompt; required unless --prompts is given"],
    ["--prompts FILE", "one prompt per line, generated as one batch (padded on the left); default none"],
    [
      "--adapter DIR",
      "a PEFT adapter (adapter_config.json, adapter_model.safetensors); default none",
    ],
    [
      "--mode full|lora|qlora",
      "base in 16 bits (full, lora) or NF4 (qlora); default qlora with --adapter, else full",
    ],
    ["--merge", "merge the adapter into the weights (dequantized for qlora); default off"],
    ["--compare", "answer with the base first, then with the adapter (needs --adapter); default off"],
    ["--max-new-tokens N", "new tokens per prompt at most; default 64"],
    ["--temperature T", "0 is greedy; above 0 samples; default 0"],
    ["--top-k K", "sample among the K most likely tokens (0: all); default 0"],
    ["--top-p P", "sample among the most likely tokens reaching probability P; default 1"],
    ["--repetition-penalty R", "divide (multiply) the positive (negative) logits of tokens seen; default 1"],
    ["--seed N", "seed of the draws; default 0"],
    ["--dtype bf16|f32", "weights and activations; default bf16"],
    ...BUDGET_HELP,
    ["--grow-by N", "grow the KV cache in chunks of N rows; default 0 (allocated whole at the start)"],
    [
      "--no-bos",
      "no BOS before the prompt; default off (BOS where the tokenizer adds it)",
    ],
  ],
);

/** The numeric flag `name` (default `fallback`), checked by `ok`. */
function num(
  flags: Record<string, string | boolean>,
  name: string,
  fallback: number,
  ok: (v: number) => boolean,
) {
  const v = flags[name] === undefined ? fallback : Number(flags[name]);
  if (!Number.isFinite(v) || !ok(v)) throw new UsageError(`--${name}: ${flags[name]} is out of range`);
  return v;
}

/** Runs one generation, streaming a single prompt's text; returns its completions. */
async function run(gen: Generation, tokenizer: HFTokenizer, label: string): Promise<string[]> {
  const batch = gen.sequences.length;
  const streams = gen.sequences.map((s) => new TextStream(tokenizer, s));
  const encoder = new TextEncoder();
  if (batch === 1) Deno.stdout.writeSync(encoder.encode(`${label}${tokenizer.decode(gen.sequences[0])}`));
  for await (const step of gen) {
    step.tokens.forEach((t, b) => {
      if (t < 0) return;
      const piece = streams[b].push(t);
      if (batch === 1 && piece) Deno.stdout.writeSync(encoder.encode(piece));
    });
  }
  if (batch === 1) console.log();
  else {
    gen.sequences.forEach((_, b) => {
      console.log(
        `${label}[${b}] ${tokenizer.decode(gen.sequences[b].slice(0, gen.promptLengths[b]))}` +
          `${streams[b].text}`,
      );
    });
  }
  const s = gen.stats!;
  console.log(
    `  prefill ${s.batch} x ${s.promptTokens} tokens in ${s.prefillSeconds.toFixed(3)} s ` +
      `(${s.prefillTokensPerSecond.toFixed(1)} tok/s); decode ${s.decodeSteps} steps in ` +
      `${s.decodeSeconds.toFixed(3)} s (${s.decodeTokensPerSecond.toFixed(2)} tok/s); ` +
      `KV cache ${formatBytes(s.cacheBytes)} for ${s.cacheCapacity} rows`,
  );
  return streams.map((t) => t.text);
}

// Before the native library loads: on a shared machine, spinning OpenMP threads slow small ops tenfold.
if (!Deno.env.get("OMP_WAIT_POLICY")) Deno.env.set("OMP_WAIT_POLICY", "passive");

await runMain(async () => {
  const { flags, positional } = parseArgs(Deno.args, {
    model: "string",
    prompt: "string",
    prompts: "string",
    adapter: "string",
    mode: "string",
    merge: "boolean",
    compare: "boolean",
    "max-new-tokens": "string",
    temperature: "string",
    "top-k": "string",
    "top-p": "string",
    "repetition-penalty": "string",
    seed: "string",
    dtype: "string",
    budget: "string",
    reserve: "string",
    "grow-by": "string",
    "no-bos": "boolean",
  });
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const modelDir = flags.model as string | undefined;
  if (!modelDir) throw new UsageError("--model is required");
  const texts = flags.prompts
    ? (await Deno.readTextFile(flags.prompts as string)).split("\n").filter((l) => l.trim())
    : flags.prompt !== undefined
    ? [flags.prompt as string]
    : [];
  if (texts.length === 0) {
    throw new UsageError("--prompt (or --prompts FILE with a prompt per line) is required");
  }
  const adapterDir = flags.adapter as string | undefined;
  const mode = (flags.mode ?? (adapterDir ? "qlora" : "full")) as "full" | "lora" | "qlora";
  if (!["full", "lora", "qlora"].includes(mode)) throw new UsageError("--mode must be full, lora or qlora");
  if (adapterDir && mode === "full") throw new UsageError("--adapter needs --mode lora or qlora");
  if ((flags.merge || flags.compare) && !adapterDir) {
    throw new UsageError("--merge and --compare need --adapter");
  }
  const dtype = (flags.dtype ?? "bf16") as "bf16" | "f32";
  if (dtype !== "bf16" && dtype !== "f32") throw new UsageError("--dtype must be bf16 or f32");
  const int = (name: string, fallback: number, min: number) =>
    num(flags, name, fallback, (v) => Number.isInteger(v) && v >= min);
  const options = {
    maxNewTokens: int("max-new-tokens", 64, 1),
    temperature: num(flags, "temperature", 0, (v) => v >= 0),
    topK: int("top-k", 0, 0),
    topP: num(flags, "top-p", 1, (v) => v > 0 && v <= 1),
    repetitionPenalty: num(flags, "repetition-penalty", 1, (v) => v > 0),
    seed: int("seed", 0, 0),
    growBy: int("grow-by", 0, 0),
  };

  const budget = budgetFlags(flags);
  const device = getDevice();
  if (budget) device.setMemoryBudget(budget.ledger);
  using dir = await openModelDir(modelDir);
  const tokenizer = await HFTokenizer.fromDir(modelDir);
  const prompts = texts.map((t) => tokenizer.encode(t, flags["no-bos"] ? { bos: false } : {}));

  // The adapter's shape comes from its adapter_config.json (rank, alpha, target modules).
  let adapter: { rank: number; alpha: number; targetModules: TargetModule[] } | null = null;
  if (adapterDir) {
    const cfg = JSON.parse(await Deno.readTextFile(`${adapterDir}/adapter_config.json`));
    const targets = (cfg.target_modules ?? TARGET_MODULES) as TargetModule[];
    for (const t of targets) {
      if (!TARGET_MODULES.includes(t)) {
        throw new UsageError(`${adapterDir}: target module ${t} is not supported`);
      }
    }
    adapter = { rank: Number(cfg.r), alpha: Number(cfg.lora_alpha), targetModules: targets };
  }
  const t0 = performance.now();
  using model = new LlamaModel(dir.hf.config, {
    mode,
    dtype,
    weights: dir.weights,
    ...(adapter ?? { rank: 8, alpha: 16 }),
  });
  console.log(
    `loaded ${modelDir} as ${mode}${adapter ? ` with rank-${adapter.rank} adapters` : ""} (${dtype}) on ` +
      `${device} in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  const stopTokens = [...tokenizer.stopIds];
  const generate = () =>
    model.generate(prompts, {
      ...options,
      stopTokens,
      padToken: tokenizer.pad ?? tokenizer.eos,
      vocabLimit: Math.min(tokenizer.size, dir.hf.config.vocabSize),
    });
  device.resetPeak();
  if (flags.compare) await run(generate(), tokenizer, "base: ");
  if (adapterDir) {
    await loadAdapter(model, adapterDir);
    if (flags.merge) model.merge();
  }
  await run(generate(), tokenizer, adapterDir ? `adapter${flags.merge ? " (merged)" : ""}: ` : "");
  console.log(device.memory().toString());
}, USAGE);
