/**
 * `./deno task fit --model 7b|13b|70b|tiny|DIR --mode full|lora|qlora [--batch 1] [--seq 512] [--rank 8]
 * [--targets q,k,v,o,gate,up,down] [--checkpointing] [--optimizer adamw|paged|8bit] [--master-weights |
 * --no-master-weights] [--dtype bf16|f32] [--gpu rtx3060-6gb|rtx3060|rtx4090|a100-40|a100-80|h100-80|h200|6GiB]
 * [--context 0.5GiB] [--json]`: will one training step fit the GPU?
 *
 * Prints the estimate by ledger category (lib/estimate.ts, validated against the ledger in
 * tests/estimate_test.ts), the CUDA context on its own line (measured where a CUDA backend runs here and the
 * GPU is this one, else the generation's typical figure, or `--context`), the total against the GPU, the
 * largest sequence and batch that fit in each mode, and a verdict with estimated suggestions. `DIR` is a
 * Hugging Face model directory (its `config.json`). Defaults are the Trainer's: bf16, rank 8, all seven
 * linears, f32 master weights, PagedAdamW for QLoRA and AdamW otherwise; the GPU defaults to this
 * machine's CUDA GPU, else a 6 GiB RTX 3060.
 *
 * @module
 */

import {
  backendAvailable,
  CATEGORIES,
  countParameters,
  type Device,
  type FitResult,
  formatBytes,
  getDevice,
  GPU_PROFILES,
  type GpuProfile,
  gpuProfile,
  hfConfig,
  LLAMA_CONFIGS,
  type LlamaConfig,
  measuredContext,
  type OptimizerKind,
  parseBytes,
  type TargetModule,
  type TrainMode,
  willItFit,
} from "../mod.ts";
import { intFlags, parseArgs, runMain, targetsFlag, UsageError } from "./_cli.ts";

const USAGE =
  "usage: ./deno task fit --model 7b|13b|70b|tiny|DIR --mode full|lora|qlora [--batch 1] [--seq 512] " +
  "[--rank 8] [--targets q,k,v,o,gate,up,down] [--checkpointing] [--optimizer adamw|paged|8bit] " +
  "[--master-weights|--no-master-weights] [--dtype bf16|f32] [--gpu NAME|SIZE] [--context BYTES] [--json]\n" +
  `  GPUs: ${Object.keys(GPU_PROFILES).join(", ")}, or a size such as 6GiB`;

const NAMES: Record<string, string> = {
  tiny: "tiny LLaMA",
  "7b": "LLaMA-2-7B",
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
    optimizer: "string",
    "master-weights": "boolean",
    "no-master-weights": "boolean",
    dtype: "string",
    gpu: "string",
    context: "string",
    json: "boolean",
  });
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
  const run = {
    mode,
    seq: int("seq", 512),
    batch: int("batch", 1),
    dtype,
    rank: int("rank", 8),
    targetModules,
    checkpointing: flags.checkpointing === true,
    optimizer,
    masterWeights: !flags["no-master-weights"],
  };
  if (run.seq > model.config.maxSeq) {
    throw new UsageError(`--seq ${run.seq} exceeds the model's maxSeq ${model.config.maxSeq}`);
  }
  // The GPU: as named, else this machine's CUDA GPU, else the 6 GiB RTX 3060 of the project's question.
  const total = cuda?.memory().deviceTotal ?? 0;
  const local: GpuProfile | null = cuda
    ? { id: "local", name: cuda.name, memory: total, generation: null }
    : null;
  const gpu = flags.gpu ? gpuProfile(flags.gpu as string) : local ?? GPU_PROFILES["rtx3060-6gb"];
  let context: number | undefined, contextSource: "measured" | "given" | undefined;
  if (flags.context !== undefined) {
    context = parseBytes(flags.context as string);
    contextSource = "given";
  } else if (cuda && Math.abs(total - gpu.memory) <= 0.05 * gpu.memory) {
    context = measuredContext(cuda) ?? undefined; // this GPU is the one asked about: measure it
    contextSource = context === undefined ? undefined : "measured";
  }
  const result = willItFit(model.config, { ...run, context, contextSource }, gpu);
  return { ...result, model: { ...model, parameters: countParameters(model.config).total }, run };
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
    }, ${run.checkpointing ? "gradient checkpointing" : "no checkpointing"}`,
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
    workspace: run.mode === "qlora" ? "dequantized 16-bit weight of the 4-bit GEMM (CUDA)" : "",
  };
  const row = (name: string, bytes: string, note = "") =>
    `${name.padEnd(18)} ${bytes.padStart(11)}${note ? `  ${note}` : ""}`;
  for (const c of CATEGORIES) {
    if (e.bytes[c] > 0 || c === "activations") lines.push(row(c, formatBytes(e.bytes[c]), notes[c]));
  }
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
    const r = fitCommand(Deno.args);
    console.log(Deno.args.includes("--json") ? JSON.stringify(r, null, 2) : formatFit(r));
  }, USAGE);
}
