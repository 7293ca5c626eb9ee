/**
 * `./deno task fit --model 7b|8b|13b|70b|tiny|DIR --mode full|lora|qlora [--batch 1] [--seq 512] [--rank 8]
 * [--targets q,k,v,o,gate,up,down] [--checkpointing [--offload-checkpoints]] [--loss-chunk N]
 * [--optimizer adamw|paged|8bit] [--master-weights | --no-master-weights] [--dtype bf16|f32]
 * [--gpu rtx3060-6gb|rtx3060|rtx4090|a100-40|a100-80|h100-80|h200|6GiB] [--cuda-context 0.5GiB]
 * [--budget 6GiB [--reserve 0.31GiB]] [--json]`: will one training step fit the GPU? With
 * `--inference --context N`, will generating N tokens per sequence fit it (weights, adapters, the KV cache,
 * the largest step)?
 *
 * Prints the estimate by ledger category (lib/estimate/estimate.ts, validated against the ledger in
 * tests/estimate_test.ts), the host pool that `--offload-checkpoints` fills with the checkpoints (outside
 * the GPU), the CUDA context on its own line (measured where a CUDA backend runs here and the GPU is this
 * one, else the generation's typical figure, or `--cuda-context`), the total against the GPU, the largest
 * sequence and batch that fit in each mode, and a verdict with estimated suggestions. `DIR` is a Hugging
 * Face model directory (its `config.json`); `8b` is LLaMA-3.1-8B's shapes, `7b`, `13b` and `70b`
 * LLaMA-2's. Defaults are the Trainer's: bf16, rank 8, all seven linears, f32 master weights, PagedAdamW
 * for QLoRA and AdamW otherwise, the LM head and the loss in chunks whose logits fit 32 MiB
 * (`--loss-chunk 0`: all rows at once); the GPU defaults to this machine's CUDA GPU, else a 6 GiB RTX 3060.
 *
 * `--budget SIZE [--reserve SIZE]` asks the question of `deno task train --budget SIZE --reserve SIZE`,
 * the same as `--gpu SIZE --cuda-context SIZE` (the reserve defaults to 0: the ledger may use the whole
 * budget).
 *
 * @module
 */

import {
  backendAvailable,
  CATEGORIES,
  countParameters,
  defaultLossChunk,
  type Device,
  type FitResult,
  formatBytes,
  getDevice,
  GPU_PROFILES,
  type GpuProfile,
  gpuProfile,
  hfConfig,
  type InferenceFitResult,
  LLAMA_CONFIGS,
  type LlamaConfig,
  measuredContext,
  type OptimizerKind,
  parseBytes,
  type TargetModule,
  type TrainMode,
  willItFit,
  willItFitInference,
} from "../mod.ts";
import {
  budgetFlags,
  helpText,
  intFlags,
  parseArgs,
  runMain,
  STEP_MEMORY_HELP,
  stepMemoryFlags,
  targetsFlag,
  UsageError,
} from "./_cli.ts";

const USAGE = helpText([
  "./deno task fit [--model 7b|8b|13b|70b|tiny|DIR] [--mode full|lora|qlora] [options]",
  "./deno task fit --inference [--model ...] [--mode full|lora|qlora] [--context N] [--prompt N] [options]",
], [
  [
    "--model 7b|8b|13b|70b|tiny|DIR",
    "a model's shapes, or a Hugging Face model directory's config.json; default 7b",
  ],
  ["--mode full|lora|qlora", "full fine-tuning, LoRA, or QLoRA (NF4 base); default qlora"],
  ["--batch N", "sequences per step (per generation with --inference); default 1"],
  ["--seq N", "tokens per sequence (training); default 512"],
  ["--rank R", "rank of the LoRA adapters; default 8"],
  [
    "--targets q,k,v,o,gate,up,down",
    "the linears that get adapters (with or without _proj); default all seven",
  ],
  ["--dtype bf16|f32", "weights and activations; default bf16"],
  ...STEP_MEMORY_HELP,
  [
    "--optimizer adamw|paged|8bit",
    "AdamW, PagedAdamW or AdamW8bit (training); default paged for qlora, else adamw",
  ],
  ["--master-weights", "f32 master copies of bf16 trainable weights (training); default on"],
  ["--no-master-weights", "no f32 master copies: the optimizer updates the bf16 weights; default off"],
  ["--gpu NAME|SIZE", "the GPU (names below); default this machine's CUDA GPU, else rtx3060-6gb"],
  [
    "--cuda-context SIZE",
    "the CUDA context; default measured if --gpu is this GPU, else typical",
  ],
  ["--budget SIZE", "as --gpu SIZE: the question of deno task train --budget SIZE; default none"],
  ["--reserve SIZE", "with --budget: as --cuda-context SIZE; default 0"],
  [
    "--inference",
    "ask about generation (weights, KV cache, a step), not training; default off",
  ],
  ["--context N", "tokens of context per sequence (with --inference); default the model's maxSeq"],
  ["--prompt N", "tokens of the prefill done at once (with --inference); default --context"],
  ["--merged", "adapters merged into the weights (--inference, lora, qlora); default off"],
  ["--json", "print the report as JSON; default off (text)"],
], [`GPUs: ${Object.keys(GPU_PROFILES).join(", ")}, or a size such as 6GiB`]);

const NAMES: Record<string, string> = {
  tiny: "tiny LLaMA",
  "7b": "LLaMA-2-7B",
  "8b": "LLaMA-3.1-8B",
  "13b": "LLaMA-2-13B",
  "70b": "LLaMA-2-70B",
};
const OPTIMIZERS: Record<OptimizerKind, string> = {
  adamw: "AdamW",
  paged: "PagedAdamW",
  "8bit": "AdamW8bit",
};

/** What `fit` answers, with the run it answered for (the `--json` output). */
export interface FitReport extends FitResult {
  /** The model: a named config or the directory's. */
  model: { name: string; config: LlamaConfig; parameters: number };
  /** The run as estimated, defaults filled in. */
  run: {
    mode: TrainMode;
    seq: number;
    batch: number;
    dtype: "bf16" | "f32";
    rank: number;
    targetModules: TargetModule[];
    checkpointing: boolean;
    /** Checkpoints in the host pool (with checkpointing). */
    offloadCheckpoints: boolean;
    /** Rows of the LM head and the loss at a time (0: all). */
    lossChunk: number;
    optimizer: OptimizerKind;
    masterWeights: boolean;
  };
}

function modelOf(arg: string): { name: string; config: LlamaConfig } {
  if (arg in LLAMA_CONFIGS) {
    return { name: NAMES[arg], config: LLAMA_CONFIGS[arg as keyof typeof LLAMA_CONFIGS] };
  }
  const file = arg.endsWith(".json") ? arg : `${arg.replace(/\/+$/, "")}/config.json`;
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    throw new UsageError(
      `--model ${arg}: not one of ${Object.keys(LLAMA_CONFIGS).join(", ")} and ${file} cannot be read ` +
        `(${(e as Error).message})`,
    );
  }
  return { name: arg, config: hfConfig(JSON.parse(text), file).config };
}

/** This machine's CUDA device, or null (no GPU, no CUDA build). */
function localCuda(): Device | null {
  return backendAvailable("cuda") ? getDevice("cuda") : null;
}

/**
 * Answers the fit question for a command line (without the task name); `cuda` is this machine's CUDA
 * device if any (for the measured context), looked up when not given.
 *
 * @example
 * ```ts
 * import { fitCommand } from "./fit.ts";
 * import { assert } from "@std/assert";
 * const r = fitCommand(["--mode", "qlora", "--seq", "512", "--checkpointing", "--gpu", "rtx3060-6gb"], null);
 * assert(r.fits && r.context.source === "typical");
 * ```
 */
export function fitCommand(argv: string[], cuda: Device | null = localCuda()): FitReport {
  const { flags, positional } = parseArgs(argv, {
    model: "string",
    mode: "string",
    batch: "string",
    seq: "string",
    rank: "string",
    targets: "string",
    checkpointing: "boolean",
    "offload-checkpoints": "boolean",
    "loss-chunk": "string",
    optimizer: "string",
    "master-weights": "boolean",
    "no-master-weights": "boolean",
    dtype: "string",
    gpu: "string",
    "cuda-context": "string",
    budget: "string",
    reserve: "string",
    context: "string",
    json: "boolean",
  });
  if (flags.context !== undefined) {
    throw new UsageError(
      "--context is a generation's context in tokens (with --inference); the CUDA context's size is --cuda-context",
    );
  }
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const model = modelOf((flags.model as string | undefined) ?? "7b");
  const mode = ((flags.mode as string | undefined) ?? "qlora") as TrainMode;
  if (!["full", "lora", "qlora"].includes(mode)) throw new UsageError("--mode must be full, lora or qlora");
  const int = intFlags(flags);
  const dtype = (flags.dtype ?? "bf16") as "bf16" | "f32";
  if (dtype !== "bf16" && dtype !== "f32") throw new UsageError("--dtype must be bf16 or f32");
  const optimizer = (flags.optimizer as OptimizerKind | undefined) ?? (mode === "qlora" ? "paged" : "adamw");
  if (!(optimizer in OPTIMIZERS)) throw new UsageError("--optimizer must be adamw, paged or 8bit");
  if (flags["master-weights"] && flags["no-master-weights"]) {
    throw new UsageError("--master-weights and --no-master-weights exclude each other");
  }
  const targetModules = targetsFlag(flags.targets);
  const memory = stepMemoryFlags(flags);
  const run = {
    mode,
    seq: int("seq", 512),
    batch: int("batch", 1),
    dtype,
    rank: int("rank", 8),
    targetModules,
    checkpointing: memory.checkpointing,
    offloadCheckpoints: memory.offloadCheckpoints,
    lossChunk: memory.lossChunk ?? defaultLossChunk(model.config, dtype),
    optimizer,
    masterWeights: !flags["no-master-weights"],
  };
  if (run.seq > model.config.maxSeq) {
    throw new UsageError(`--seq ${run.seq} exceeds the model's maxSeq ${model.config.maxSeq}`);
  }
  const { gpu, context, contextSource } = gpuOf(flags, cuda);
  const result = willItFit(model.config, { ...run, context, contextSource }, gpu);
  return { ...result, model: { ...model, parameters: countParameters(model.config).total }, run };
}

/**
 * The GPU of a command line: as named, else this machine's CUDA GPU, else the 6 GiB RTX 3060 of the
 * project's question; and its CUDA context: `--cuda-context`, else measured where the GPU is this one.
 * `--budget SIZE [--reserve SIZE]` is `--gpu SIZE --cuda-context SIZE` (the reserve 0 by default, as
 * the training scripts' budget).
 */
function gpuOf(
  flags: Record<string, string | boolean>,
  cuda: Device | null,
): { gpu: GpuProfile; context?: number; contextSource?: "measured" | "given" } {
  if (flags.gpu !== undefined && flags.budget !== undefined) {
    throw new UsageError("--gpu and --budget ask the same question: give one of them");
  }
  if (flags.reserve !== undefined && flags["cuda-context"] !== undefined) {
    throw new UsageError("--reserve and --cuda-context are the same figure: give one of them");
  }
  const budget = budgetFlags(flags);
  if (budget) {
    const context = flags["cuda-context"] !== undefined
      ? parseBytes(flags["cuda-context"] as string)
      : budget.reserve;
    return { gpu: gpuProfile(flags.budget as string), context, contextSource: "given" };
  }
  const total = cuda?.memory().deviceTotal ?? 0;
  const local: GpuProfile | null = cuda
    ? { id: "local", name: cuda.name, memory: total, generation: null }
    : null;
  const gpu = flags.gpu ? gpuProfile(flags.gpu as string) : local ?? GPU_PROFILES["rtx3060-6gb"];
  if (flags["cuda-context"] !== undefined) {
    return { gpu, context: parseBytes(flags["cuda-context"] as string), contextSource: "given" };
  }
  if (cuda && Math.abs(total - gpu.memory) <= 0.05 * gpu.memory) {
    const context = measuredContext(cuda) ?? undefined; // this GPU is the one asked about: measure it
    return { gpu, context, contextSource: context === undefined ? undefined : "measured" };
  }
  return { gpu };
}

/** What `fit --inference` answers, with the generation it answered for (the `--json` output). */
export interface InferenceFitReport extends InferenceFitResult {
  /** The model: a named config or the directory's. */
  model: { name: string; config: LlamaConfig; parameters: number };
  /** The generation as estimated, defaults filled in. */
  run: {
    mode: TrainMode;
    context: number;
    prompt: number;
    batch: number;
    dtype: "bf16" | "f32";
    rank: number;
    targetModules: TargetModule[];
    merged: boolean;
  };
}

/**
 * `fit --inference`: will generating `--context` tokens per sequence fit the GPU (weights, adapters, the
 * KV cache, the largest step: a prefill of `--prompt` tokens, or a decode step)?
 *
 * @example
 * ```ts
 * import { fitInferenceCommand } from "./fit.ts";
 * import { assert } from "@std/assert";
 * const r = fitInferenceCommand(["--inference", "--mode", "qlora", "--context", "2048", "--gpu", "rtx3060-6gb"], null);
 * assert(r.fits && r.estimate.bytes.kv_cache === 2 ** 30);
 * ```
 */
export function fitInferenceCommand(argv: string[], cuda: Device | null = localCuda()): InferenceFitReport {
  const { flags, positional } = parseArgs(argv, {
    inference: "boolean",
    model: "string",
    mode: "string",
    batch: "string",
    context: "string",
    prompt: "string",
    rank: "string",
    targets: "string",
    merged: "boolean",
    dtype: "string",
    gpu: "string",
    "cuda-context": "string",
    budget: "string",
    reserve: "string",
    json: "boolean",
  });
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const model = modelOf((flags.model as string | undefined) ?? "7b");
  const mode = ((flags.mode as string | undefined) ?? "qlora") as TrainMode;
  if (!["full", "lora", "qlora"].includes(mode)) throw new UsageError("--mode must be full, lora or qlora");
  if (flags.merged && mode === "full") throw new UsageError("--merged needs --mode lora or qlora");
  const int = intFlags(flags);
  const dtype = (flags.dtype ?? "bf16") as "bf16" | "f32";
  if (dtype !== "bf16" && dtype !== "f32") throw new UsageError("--dtype must be bf16 or f32");
  const context = int("context", model.config.maxSeq);
  if (context > model.config.maxSeq) {
    throw new UsageError(`--context ${context} exceeds the model's maxSeq ${model.config.maxSeq}`);
  }
  const prompt = int("prompt", context);
  if (prompt > context) throw new UsageError(`--prompt ${prompt} is longer than --context ${context}`);
  const run = {
    mode,
    context,
    prompt,
    batch: int("batch", 1),
    dtype,
    rank: int("rank", 8),
    targetModules: targetsFlag(flags.targets),
    merged: flags.merged === true,
  };
  const { gpu, context: cudaContext, contextSource } = gpuOf(flags, cuda);
  const result = willItFitInference(
    model.config,
    { ...run, cudaContext, cudaContextSource: contextSource },
    gpu,
  );
  return { ...result, model: { ...model, parameters: countParameters(model.config).total }, run };
}

/**
 * The text `fit --inference` prints: the generation, the categories, the cache per token, the total, the
 * longest context per mode, the verdict.
 *
 * @example
 * ```ts
 * import { fitInferenceCommand, formatInferenceFit } from "./fit.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const text = formatInferenceFit(fitInferenceCommand(["--inference", "--mode", "full", "--gpu", "24GiB"], null));
 * assertStringIncludes(text, "kv_cache");
 * ```
 */
export function formatInferenceFit(r: InferenceFitReport): string {
  const { run, estimate: e } = r;
  const mode = { full: "the base alone", lora: "LoRA", qlora: "QLoRA (NF4 base)" }[run.mode];
  const lines = [
    `${r.model.name}: ${count(r.model.parameters)} parameters, ${r.model.config.layers} blocks`,
    `generation: ${mode}${
      run.mode === "full" ? "" : `, rank ${run.rank} adapters${run.merged ? " merged" : ""}`
    }, ` +
    `${run.dtype}, ${run.batch} x ${run.context} tokens of context, a prefill of ${run.prompt} tokens at once`,
    `gpu: ${r.gpu.name}`,
    "",
  ];
  const row = (name: string, bytes: string, note = "") =>
    `${name.padEnd(18)} ${bytes.padStart(11)}${note ? `  ${note}` : ""}`;
  const notes: Partial<Record<string, string>> = {
    kv_cache: `${formatBytes(e.kvCachePerToken)} per token of context`,
    activations: "the largest step's transients (the prefill)",
  };
  for (const c of CATEGORIES) if (e.bytes[c] > 0) lines.push(row(c, formatBytes(e.bytes[c]), notes[c]));
  lines.push(row("peak", formatBytes(e.peak), "sum of the categories' peaks"));
  lines.push(row("CUDA context", formatBytes(r.context.bytes), `${r.context.source}: ${r.context.note}`));
  lines.push(row("total", formatBytes(r.required), `of ${formatBytes(r.gpu.memory)}`));
  lines.push("", "largest that fits this GPU (other options as above):");
  lines.push(
    `${"mode".padEnd(6)} ${`context at batch ${run.batch}`.padStart(20)} ${
      `batch at ${run.context}`.padStart(16)
    }`,
  );
  for (const m of ["full", "lora", "qlora"] as const) {
    const l = r.largest[m], n = (v: number) => v === 0 ? "none" : v.toLocaleString("en-US");
    lines.push(`${m.padEnd(6)} ${n(l.context).padStart(20)} ${n(l.batch).padStart(16)}`);
  }
  lines.push("", `verdict: ${r.verdict}`);
  return lines.join("\n");
}

const count = (n: number) =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n.toLocaleString("en-US");

/**
 * The text `fit` prints: the run, the categories, the context, the total, the largest shapes, the verdict.
 *
 * @example
 * ```ts
 * import { fitCommand, formatFit } from "./fit.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const text = formatFit(fitCommand(["--model", "7b", "--mode", "full", "--gpu", "24GiB"], null));
 * assertStringIncludes(text, "verdict: needs");
 * ```
 */
export function formatFit(r: FitReport): string {
  const { run, estimate: e } = r;
  const mode = { full: "full fine-tuning", lora: "LoRA", qlora: "QLoRA" }[run.mode];
  const short = run.targetModules.map((t) => t.replace("_proj", "")).join(",");
  const lines = [
    `${r.model.name}: ${count(r.model.parameters)} parameters, ${r.model.config.layers} blocks`,
    `run: ${mode}${run.mode === "full" ? "" : ` rank ${run.rank} on ${short}`}, ${run.dtype}, ` +
    `${run.batch} x ${run.seq} tokens, ${OPTIMIZERS[run.optimizer]}${
      run.dtype === "bf16" && run.masterWeights ? " with f32 master weights" : ""
    }, ${
      run.checkpointing
        ? `gradient checkpointing${run.offloadCheckpoints ? " offloaded to the host" : ""}`
        : "no checkpointing"
    }${
      run.lossChunk > 0 && run.lossChunk < run.batch * run.seq
        ? `, loss in chunks of ${run.lossChunk} rows`
        : ""
    }`,
    `gpu: ${r.gpu.name}`,
    "",
  ];
  const notes: Partial<Record<string, string>> = {
    weights: run.mode === "qlora" ? "embeddings, LM head, norms (16-bit)" : "",
    quant_constants: run.mode === "qlora" ? "double-quantized absmax" : "",
    optimizer_states: [
      e.masterWeights ? `f32 master weights ${formatBytes(e.masterWeights)}` : "",
      e.pageable ? `${formatBytes(e.pageable)} pageable to host` : "",
    ].filter(Boolean).join("; "),
    activations: `${formatBytes(e.activationsPerToken.saved + e.activationsPerToken.transient)} per token`,
    workspace: run.mode === "qlora" ? "the kernels' scratch (CUDA's 4-bit GEMM needs none)" : "",
  };
  const row = (name: string, bytes: string, note = "") =>
    `${name.padEnd(18)} ${bytes.padStart(11)}${note ? `  ${note}` : ""}`;
  for (const c of CATEGORIES) {
    if (e.bytes[c] > 0 || c === "activations") lines.push(row(c, formatBytes(e.bytes[c]), notes[c]));
  }
  if (e.host > 0) lines.push(row("host pool", formatBytes(e.host), "offloaded checkpoints, outside the GPU"));
  lines.push(row("step peak", formatBytes(e.peak), "sum of the categories' peaks"));
  lines.push(row(`CUDA context`, formatBytes(r.context.bytes), `${r.context.source}: ${r.context.note}`));
  lines.push(row("total", formatBytes(r.required), `of ${formatBytes(r.gpu.memory)}`));
  lines.push("", `largest that fits this GPU (other options as above):`);
  lines.push(
    `${"mode".padEnd(6)} ${`seq at batch ${run.batch}`.padStart(16)} ${
      `batch at seq ${run.seq}`.padStart(18)
    }`,
  );
  for (const m of ["full", "lora", "qlora"] as const) {
    const l = r.largest[m];
    const n = (v: number) => v === 0 ? "none" : v.toLocaleString("en-US");
    const seq = l.seq === r.model.config.maxSeq ? `${n(l.seq)} (maxSeq)` : n(l.seq);
    lines.push(`${m.padEnd(6)} ${seq.padStart(16)} ${n(l.batch).padStart(18)}`);
  }
  lines.push("", `verdict: ${r.verdict}`);
  return lines.join("\n");
}

if (import.meta.main) {
  await runMain(() => {
    const json = Deno.args.includes("--json");
    if (Deno.args.includes("--inference")) {
      const r = fitInferenceCommand(Deno.args);
      console.log(json ? JSON.stringify(r, null, 2) : formatInferenceFit(r));
    } else {
      const r = fitCommand(Deno.args);
      console.log(json ? JSON.stringify(r, null, 2) : formatFit(r));
    }
  }, USAGE);
}
