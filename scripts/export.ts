/**
 * `./deno task export --model DIR [--adapter DIR] [--mode lora|qlora] --gguf OUT.gguf
 * [--type bf16|q8_0|q4_0|iq4_nl] [--keep-embeddings-bf16] [--dtype bf16|f32] [--name NAME]
 * [--allow-missing-byte-tokens]`: writes a Hugging Face LLaMA model directory, with a PEFT adapter merged
 * in where given, as one GGUF file for llama.cpp (weights, architecture and tokenizer metadata).
 *
 * - `--adapter`: a PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`, as
 *   `deno task finetune` writes it); its rank, alpha and target modules build the model. `--mode qlora`
 *   merges it into the NF4-quantized base (what a QLoRA run trained against), `lora` (default) into the
 *   16-bit base.
 * - The model is read one weight at a time and written one weight at a time (see `exportGGUF`).
 *
 * @module
 */

import {
  exportGGUF,
  formatBytes,
  GGUF_WEIGHT_TYPES,
  ggufTokenizerMetadata,
  type GGUFWeightType,
  LlamaModel,
  loadAdapter,
  openModelDir,
  TARGET_MODULES,
  type TargetModule,
} from "../mod.ts";
import { helpText, parseArgs, ProgressBar, runMain, UsageError } from "./_cli.ts";

const USAGE = helpText(
  "./deno task export --model DIR --gguf OUT.gguf [--adapter DIR] [--mode lora|qlora] [options]",
  [
    [
      "--model DIR",
      "Hugging Face LLaMA directory (config.json, safetensors, tokenizer.json); required",
    ],
    ["--gguf OUT.gguf", "the file to write (atomically); required"],
    ["--adapter DIR", "PEFT adapter to merge in; default none"],
    ["--mode lora|qlora", "base the adapter is merged into: 16-bit (lora) or NF4 (qlora); default lora"],
    ["--type bf16|q8_0|q4_0|iq4_nl", "type of the matrices; norms stay F32; default bf16"],
    ["--keep-embeddings-bf16", "keep token_embd and output in BF16 whatever --type is; default off"],
    ["--dtype bf16|f32", "dtype the model is loaded and merged in; default bf16"],
    ["--name NAME", "general.name; default the model directory's name"],
    [
      "--allow-missing-byte-tokens",
      "write a tokenizer lacking <0xXX> tokens (llama.cpp aborts on them); default off",
    ],
  ],
  ["Writes a Hugging Face LLaMA model (with a PEFT adapter merged in) as one GGUF file for llama.cpp."],
);

/** The adapter's rank, alpha and target modules, from its `adapter_config.json`. */
async function adapterConfig(dir: string): Promise<{ rank: number; alpha: number; targets: TargetModule[] }> {
  const path = `${dir}/adapter_config.json`;
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`Cannot read ${path}: ${(e as Error).message}`);
  }
  const rank = cfg.r, alpha = cfg.lora_alpha ?? 8, targets = cfg.target_modules;
  if (!Number.isInteger(rank) || (rank as number) <= 0) throw new Error(`Cannot use ${path}: r is ${rank}`);
  if (typeof alpha !== "number") throw new Error(`Cannot use ${path}: lora_alpha is ${alpha}`);
  if (!Array.isArray(targets) || !targets.every((t) => (TARGET_MODULES as readonly string[]).includes(t))) {
    throw new Error(
      `Cannot use ${path}: target_modules ${JSON.stringify(targets)} is not a list of ${
        TARGET_MODULES.join(", ")
      }`,
    );
  }
  return { rank: rank as number, alpha, targets: targets as TargetModule[] };
}

async function main(): Promise<void> {
  await runMain(async () => {
    const { positional, flags } = parseArgs(Deno.args, {
      model: "string",
      gguf: "string",
      adapter: "string",
      mode: "string",
      type: "string",
      "keep-embeddings-bf16": "boolean",
      dtype: "string",
      name: "string",
      "allow-missing-byte-tokens": "boolean",
    });
    if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
    const modelDir = flags.model as string | undefined, out = flags.gguf as string | undefined;
    if (!modelDir || !out) throw new UsageError("--model and --gguf are required");
    const mode = (flags.mode ?? "lora") as string;
    if (mode !== "lora" && mode !== "qlora") {
      throw new UsageError(`--mode must be lora or qlora, got ${mode}`);
    }
    const type = (flags.type ?? "bf16") as GGUFWeightType;
    if (!GGUF_WEIGHT_TYPES.includes(type)) {
      throw new UsageError(`--type must be one of ${GGUF_WEIGHT_TYPES.join(", ")}, got ${flags.type}`);
    }
    const dtype = (flags.dtype ?? "bf16") as string;
    if (dtype !== "bf16" && dtype !== "f32") {
      throw new UsageError(`--dtype must be bf16 or f32, got ${dtype}`);
    }
    const adapterDir = flags.adapter as string | undefined;
    const name = (flags.name as string | undefined) ?? modelDir.replace(/\/+$/, "").split("/").pop()!;

    const t0 = performance.now();
    using dir = await openModelDir(modelDir);
    const config = dir.hf.config;
    const metadata = await ggufTokenizerMetadata(modelDir, {
      vocabSize: config.vocabSize,
      allowMissingByteTokens: Boolean(flags["allow-missing-byte-tokens"]),
    });
    const adapter = adapterDir ? await adapterConfig(adapterDir) : null;
    using model = new LlamaModel(config, {
      mode: adapter || mode === "qlora" ? mode : "lora",
      dtype,
      weights: dir.weights,
      rank: adapter?.rank ?? 8,
      alpha: adapter?.alpha ?? 16,
      targetModules: adapter?.targets ?? (mode === "qlora" ? TARGET_MODULES : []),
    });
    if (adapterDir) await loadAdapter(model, adapterDir);
    console.log(
      `loaded ${modelDir} (${formatBytes(dir.bytes)} of ${dir.hf.dtype ?? "float"} weights, ` +
        `${config.layers} blocks, vocabulary ${config.vocabSize})` +
        (adapter
          ? ` with the adapter ${adapterDir} (rank ${adapter.rank}, alpha ${adapter.alpha}, ${
            adapter.targets.join(",")
          }) ` +
            `on the ${mode === "qlora" ? "NF4" : dtype} base, merged`
          : mode === "qlora"
          ? ", its linear weights through NF4"
          : ""),
    );
    const bar = new ProgressBar("export");
    const report = await exportGGUF(model, out, {
      type,
      keepEmbeddingsBf16: Boolean(flags["keep-embeddings-bf16"]),
      name,
      metadata,
      onTensor: (_, i, n) => bar.update((i + 1) / n),
    });
    bar.done();
    const types = Object.entries(report.tensorsPerType).map(([t, n]) => `${t} ${n}`).join(", ");
    console.log(
      `wrote ${out}: ${report.bytes.toLocaleString("en-US")} bytes (${formatBytes(report.bytes)}), ` +
        `${report.tensors.length} tensors (${types}), ${
          report.elements.toLocaleString("en-US")
        } weights at ` +
        `${report.bitsPerWeight.toFixed(3)} bits per weight, in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
    );
    if (report.fallbacks.length) {
      console.log(`stored as BF16 (rows not a multiple of 32): ${report.fallbacks.join(", ")}`);
    }
  }, USAGE);
}

if (import.meta.main) await main();
