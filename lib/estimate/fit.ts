/**
 * "Will it fit?": the estimator of {@linkcode estimateMemory} set against a GPU. A GPU is its memory less
 * what the device takes before the first tensor (the CUDA context and the libraries' workspaces), which
 * no ledger sees: measured where a CUDA backend runs here, else a typical figure per GPU generation,
 * always reported as its own line.
 *
 * The typical figures are this project's reading of what a CUDA 12 process with lazy module loading
 * (the default since CUDA 12.2) shows as used before its first allocation: the context (its code, page
 * tables and per-SM state, growing with the SM count), our kernels, cuBLAS's kernels and its workspace
 * (4 MiB before Hopper, 32 MiB on Hopper). They are not measurements of those cards by this project;
 * a GPU that also drives a display loses several hundred MiB more to the desktop. Pass a measured
 * figure (`context`) where you have one.
 *
 * @example
 * ```ts
 * import { gpuProfile, LLAMA_CONFIGS, willItFit } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const gpu = gpuProfile("rtx3060-6gb");
 * const r = willItFit(LLAMA_CONFIGS["7b"], { mode: "qlora", seq: 512, batch: 1, checkpointing: true }, gpu);
 * assert(r.fits && r.spare > 0 && r.verdict.startsWith("fits with"));
 * assert(!willItFit(LLAMA_CONFIGS["7b"], { mode: "qlora", seq: 512, batch: 1 }, gpu).fits);
 * ```
 *
 * @module
 */

import { type Device, formatBytes, parseBytes } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import {
  estimateMemory,
  type EstimateOptions,
  largestWithin,
  type MemoryEstimate,
  type OptimizerKind,
} from "./estimate.ts";
import { estimateInference, type InferenceEstimate, type InferenceOptions } from "./estimate_inference.ts";
import type { LlamaConfig, TrainMode } from "../llama/mod.ts";

/** A GPU generation and what a process typically loses to it before its first tensor. */
export interface GpuGeneration {
  /** "Ampere (consumer)". */
  name: string;
  /** Typical bytes used before the first allocation: CUDA context and library workspaces. */
  context: number;
  /** Where the figure comes from and what it leaves out. */
  note: string;
}

const MiB = 2 ** 20, GiB = 2 ** 30;

/** The generations of {@linkcode GPU_PROFILES}, with their typical context figures. */
export const GPU_GENERATIONS: Readonly<
  Record<"ampere-consumer" | "ada" | "ampere" | "hopper", GpuGeneration>
> = {
  "ampere-consumer": {
    name: "Ampere, consumer (sm_86)",
    context: 320 * MiB,
    note:
      "CUDA 12 context with lazy loading + cuBLAS's handle and kernels (the backend sets its workspace to 0); a display adds more",
  },
  ada: {
    name: "Ada Lovelace (sm_89)",
    context: 384 * MiB,
    note:
      "CUDA 12 context with lazy loading + cuBLAS's handle and kernels (the backend sets its workspace to 0); a display adds more",
  },
  ampere: {
    name: "Ampere, data center (sm_80)",
    context: 448 * MiB,
    note:
      "CUDA 12 context with lazy loading (108 SMs) + cuBLAS's handle and kernels (the backend sets its workspace to 0)",
  },
  hopper: {
    name: "Hopper (sm_90)",
    context: 576 * MiB,
    note:
      "CUDA 12 context with lazy loading (132 SMs) + cuBLAS's handle and kernels (the backend sets its workspace to 0)",
  },
};

/** A GPU to fit a run in. */
export interface GpuProfile {
  /** The name `--gpu` takes ("rtx3060-6gb"), or "6GiB" for a raw size, or "local". */
  id: string;
  /** "NVIDIA GeForce RTX 3060 Laptop GPU (6 GiB)". */
  name: string;
  /** Memory in bytes (the nominal size; the driver may report a little less). */
  memory: number;
  /** Its generation (null for a raw size: then the context is a generic 0.5 GiB). */
  generation: GpuGeneration | null;
}

const card = (id: string, name: string, gib: number, generation: GpuGeneration): GpuProfile => ({
  id,
  name: `${name} (${gib} GiB)`,
  memory: gib * GiB,
  generation,
});

/** Known GPUs by the name `--gpu` takes. */
export const GPU_PROFILES: Readonly<Record<string, GpuProfile>> = {
  "rtx3060-6gb": card("rtx3060-6gb", "RTX 3060 Laptop", 6, GPU_GENERATIONS["ampere-consumer"]),
  rtx3060: card("rtx3060", "RTX 3060", 12, GPU_GENERATIONS["ampere-consumer"]),
  rtx4090: card("rtx4090", "RTX 4090", 24, GPU_GENERATIONS.ada),
  "a100-40": card("a100-40", "A100 40GB", 40, GPU_GENERATIONS.ampere),
  "a100-80": card("a100-80", "A100 80GB", 80, GPU_GENERATIONS.ampere),
  "h100-80": card("h100-80", "H100 80GB", 80, GPU_GENERATIONS.hopper),
  h200: card("h200", "H200", 141, GPU_GENERATIONS.hopper),
};

/** The context figure of a GPU given by size only (no generation known). */
export const GENERIC_CONTEXT: number = 512 * MiB;

/**
 * A GPU by profile name (see {@linkcode GPU_PROFILES}) or by size ("6GiB", "24GB").
 *
 * @example
 * ```ts
 * import { gpuProfile } from "../../mod.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(gpuProfile("rtx4090").memory, 24 * 2 ** 30);
 * assertEquals(gpuProfile("6GiB").generation, null);
 * assertThrows(() => gpuProfile("rtx9999"), Error, "rtx3060-6gb");
 * ```
 */
export function gpuProfile(spec: string): GpuProfile {
  const known = GPU_PROFILES[spec.toLowerCase()];
  if (known) return known;
  let memory: number;
  try {
    memory = parseBytes(spec);
  } catch {
    throw new InvalidArgumentError(
      `Cannot use GPU ${JSON.stringify(spec)}: expected a size such as 6GiB or one of ${
        Object.keys(GPU_PROFILES).join(", ")
      }`,
    );
  }
  if (!(memory > 0)) {
    throw new InvalidArgumentError(`Cannot use GPU ${JSON.stringify(spec)}: size must be > 0`);
  }
  return { id: spec, name: `a ${formatBytes(memory)} GPU`, memory, generation: null };
}

/**
 * What a CUDA device uses before this process's tensors: the driver's total less its free bytes less the
 * ledger's live bytes (the context, library workspaces and any other process on the GPU). Null for a
 * backend that cannot measure it (CPU, the emulator).
 *
 * @example
 * ```ts
 * import { getDevice, measuredContext } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(measuredContext(getDevice("cpu")) === null);
 * ```
 */
export function measuredContext(device: Device): number | null {
  if (device.backend !== "cuda") return null;
  const s = device.memory();
  if (!(s.deviceTotal > 0)) return null;
  return Math.max(0, s.deviceTotal - s.deviceFree - s.totalCurrent);
}

/**
 * Options of {@linkcode willItFit}: the run, as for the estimator (the workspace is CUDA's), its
 * `checkpointing`, `offloadCheckpoints` and `lossChunk` included; the largest shapes are searched with them.
 */
export interface FitOptions extends Omit<EstimateOptions, "backend"> {
  /** Bytes the device takes before the first tensor (default: the GPU generation's typical figure). */
  context?: number;
  /** Where `context` comes from, for the report (default "given" when context is set). */
  contextSource?: "measured" | "given";
}

/** One change to the run and what it would need. */
export interface FitSuggestion {
  /** The command-line change ("--checkpointing", "--rank 4"). */
  flag: string;
  /** Bytes the GPU would need with it. */
  required: number;
  /** Bytes it saves against the run as given. */
  saves: number;
  /** Whether the run fits with this change alone. */
  fits: boolean;
}

/** The answer of {@linkcode willItFit}. */
export interface FitResult {
  /** The GPU. */
  gpu: GpuProfile;
  /** Bytes taken before the first tensor, where the figure comes from, and its caveat. */
  context: { bytes: number; source: "measured" | "given" | "typical"; note: string };
  /** The estimate of a step (CUDA workspace). */
  estimate: MemoryEstimate;
  /** Estimated peak plus context. */
  required: number;
  /** GPU memory less required (negative: what is missing). */
  spare: number;
  /** Whether the step fits with everything resident. */
  fits: boolean;
  /** With a paged optimizer that does not fit resident: whether it fits by paging its states out. */
  fitsWithPaging: boolean;
  /** Per mode, the largest sequence at this batch and the largest batch at this sequence that fit. */
  largest: Record<TrainMode, { seq: number; batch: number }>;
  /** When it does not fit: changes that help, largest saving first. */
  suggestions: FitSuggestion[];
  /** "fits with 0.70 GiB to spare" or "needs 2.30 GiB more: try ...". */
  verdict: string;
}

/**
 * The optimizer the Trainer picks for a mode when none is given: paged for QLoRA, else AdamW.
 *
 * @example
 * ```ts
 * import { defaultOptimizer } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(defaultOptimizer("qlora") === "paged" && defaultOptimizer("full") === "adamw");
 * ```
 */
export function defaultOptimizer(mode: TrainMode): OptimizerKind {
  return mode === "qlora" ? "paged" : "adamw";
}

/**
 * Whether one training step of `config` fits `gpu`: the estimate by category (CUDA workspace) plus the
 * context, the largest sequence and batch per mode, and a verdict with suggestions that are each
 * estimated, not guessed. Options the caller leaves out take the Trainer's defaults (bf16, rank 8, all
 * seven targets, f32 master weights, PagedAdamW for QLoRA and AdamW otherwise). Checkpoints offloaded
 * to the host pool (`offloadCheckpoints`) are outside the GPU: in `estimate.host`, not in `required`.
 *
 * @example
 * ```ts
 * import { gpuProfile, LLAMA_CONFIGS, willItFit } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const r = willItFit(LLAMA_CONFIGS["7b"], { mode: "lora", seq: 2048, batch: 4 }, gpuProfile("rtx4090"));
 * assert(!r.fits && r.verdict.startsWith("needs"));
 * assert(r.suggestions.some((s) => s.flag === "--checkpointing" && s.saves > 0));
 * assert(r.suggestions.some((s) => s.flag === "--checkpointing --offload-checkpoints" && s.saves > 0));
 * assert(r.largest.qlora.seq > r.largest.lora.seq && r.largest.full.seq === 0);
 * ```
 */
export function willItFit(config: LlamaConfig, options: FitOptions, gpu: GpuProfile): FitResult {
  const context = cudaContext(gpu, options.context, options.contextSource);
  const base: EstimateOptions = {
    ...options,
    optimizer: options.optimizer ?? defaultOptimizer(options.mode),
    backend: "cuda",
  };
  const need = (o: EstimateOptions) => estimateMemory(config, o).peak + context.bytes;
  const estimate = estimateMemory(config, base);
  const required = estimate.peak + context.bytes;
  const spare = gpu.memory - required;
  const fits = spare >= 0;
  const fitsWithPaging = !fits && estimate.pageable > 0 && estimate.minimum + context.bytes <= gpu.memory;
  const largest = {} as FitResult["largest"];
  for (const mode of ["full", "lora", "qlora"] as const) {
    const o = {
      ...base,
      mode,
      optimizer: options.optimizer ?? defaultOptimizer(mode),
    };
    largest[mode] = {
      seq: largestWithin((seq) => need({ ...o, seq }), gpu.memory, config.maxSeq),
      batch: largestWithin((batch) => need({ ...o, batch }), gpu.memory, 2 ** 16),
    };
  }
  const suggestions: FitSuggestion[] = [];
  if (!fits) {
    const alternatives: [string, Partial<EstimateOptions>][] = [];
    if (!base.checkpointing) alternatives.push(["--checkpointing", { checkpointing: true }]);
    if (!base.offloadCheckpoints) {
      alternatives.push(
        base.checkpointing
          ? ["--offload-checkpoints", { offloadCheckpoints: true }]
          : ["--checkpointing --offload-checkpoints", { checkpointing: true, offloadCheckpoints: true }],
      );
    }
    if (base.optimizer !== "8bit") alternatives.push(["--optimizer 8bit", { optimizer: "8bit" }]);
    if (base.mode !== "full" && (base.rank ?? 8) > 4) alternatives.push(["--rank 4", { rank: 4 }]);
    if ((base.dtype ?? "bf16") === "bf16" && (base.masterWeights ?? true)) {
      alternatives.push(["--no-master-weights", { masterWeights: false }]);
    }
    if (base.mode === "full") alternatives.push(["--mode lora", { mode: "lora", optimizer: "adamw" }]);
    if (base.mode !== "qlora") alternatives.push(["--mode qlora", { mode: "qlora", optimizer: "paged" }]);
    for (const [flag, change] of alternatives) {
      const r = need({ ...base, ...change });
      if (r < required) suggestions.push({ flag, required: r, saves: required - r, fits: r <= gpu.memory });
    }
    const same = (flag: string) => !flag.startsWith("--mode");
    if (!suggestions.some((s) => s.fits && same(s.flag))) {
      // No one change is enough in this mode: all of those that help, together.
      const helping = alternatives.filter(([flag]) => suggestions.some((s) => s.flag === flag));
      // "--checkpointing" goes without saying beside "--checkpointing --offload-checkpoints".
      const within = (flag: string, other: string) => other !== flag && other.startsWith(`${flag} `);
      const together = helping.filter(([flag]) =>
        same(flag) && !helping.some(([other]) => within(flag, other))
      );
      const r = need(Object.assign({ ...base }, ...together.map(([, c]) => c)));
      if (together.length > 1 && r < required) {
        suggestions.push({
          flag: together.map(([flag]) => flag).join(" "),
          required: r,
          saves: required - r,
          fits: r <= gpu.memory,
        });
      }
    }
    const seq = largestWithin((s) => need({ ...base, seq: s }), gpu.memory, base.seq - 1);
    if (seq > 0) {
      const r = need({ ...base, seq });
      suggestions.push({ flag: `--seq ${seq}`, required: r, saves: required - r, fits: true });
    }
    if (base.batch > 1) {
      const batch = largestWithin((b) => need({ ...base, batch: b }), gpu.memory, base.batch - 1);
      if (batch > 0) {
        const r = need({ ...base, batch });
        suggestions.push({ flag: `--batch ${batch}`, required: r, saves: required - r, fits: true });
      }
    }
    suggestions.sort((a, b) => b.saves - a.saves);
  }
  return {
    gpu,
    context,
    estimate,
    required,
    spare,
    fits,
    fitsWithPaging,
    largest,
    suggestions,
    verdict: verdictOf(spare, fitsWithPaging, estimate, suggestions),
  };
}

/** The bytes a GPU takes before the first tensor: given, measured, or its generation's typical figure. */
function cudaContext(
  gpu: GpuProfile,
  bytes?: number,
  source?: "measured" | "given",
): FitResult["context"] {
  const context = bytes !== undefined
    ? {
      bytes,
      source: source ?? "given" as const,
      note: source === "measured" ? "cudaMemGetInfo: total - free before the first tensor" : "as given",
    }
    : {
      bytes: gpu.generation?.context ?? GENERIC_CONTEXT,
      source: "typical" as const,
      note: gpu.generation
        ? `${gpu.generation.name}, ${gpu.generation.note}`
        : "a generic figure for a GPU of unknown generation",
    };
  if (!Number.isFinite(context.bytes) || context.bytes < 0) {
    throw new InvalidArgumentError(`Cannot fit: context must be a byte count >= 0, got ${context.bytes}`);
  }
  return context;
}

/** Options of {@linkcode willItFitInference}: the generation, as for the estimator (the kernels are CUDA's). */
export interface InferenceFitOptions extends Omit<InferenceOptions, "backend"> {
  /** Bytes the device takes before the first tensor (default: the GPU generation's typical figure). */
  cudaContext?: number;
  /** Where `cudaContext` comes from (default "given" when set). */
  cudaContextSource?: "measured" | "given";
}

/** The answer of {@linkcode willItFitInference}. */
export interface InferenceFitResult {
  /** The GPU. */
  gpu: GpuProfile;
  /** Bytes taken before the first tensor, where the figure comes from, and its caveat. */
  context: FitResult["context"];
  /** The estimate (CUDA's kernels). */
  estimate: InferenceEstimate;
  /** Estimated peak plus the CUDA context. */
  required: number;
  /** GPU memory less required (negative: what is missing). */
  spare: number;
  /** Whether the generation fits. */
  fits: boolean;
  /** Per mode, the longest context (tokens per sequence, prompt at most `prompt`) and the largest batch that fit. */
  largest: Record<TrainMode, { context: number; batch: number }>;
  /** "fits with 1.20 GiB to spare" or "needs 0.40 GiB more: try ...". */
  verdict: string;
}

/**
 * Whether generating `context` tokens per sequence fits `gpu`: weights, adapters, the KV cache and a step's
 * transients (CUDA's kernels) plus the CUDA context, the longest context and largest batch per mode, and
 * a verdict that names what would fit.
 *
 * @example
 * ```ts
 * import { gpuProfile, LLAMA_CONFIGS, willItFitInference } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * // LLaMA-2-7B in QLoRA on a 6 GB card: a 1 GiB cache of 2,048 tokens fits with a GiB to spare; the 2 GiB
 * // of 4,096 fit just (CUDA decodes the 4-bit weights with no workspace), two sequences of 4,096 do not.
 * const gpu = gpuProfile("rtx3060-6gb");
 * const at = (context: number, batch = 1) =>
 *   willItFitInference(LLAMA_CONFIGS["7b"], { mode: "qlora", context, prompt: 512, batch }, gpu);
 * assert(at(2048).fits && at(4096).estimate.bytes.kv_cache === 2 ** 31 && at(4096).fits && !at(4096, 2).fits);
 * assert(at(4096).largest.full.context === 0 && at(4096).largest.qlora.context === 4096);
 * ```
 */
export function willItFitInference(
  config: LlamaConfig,
  options: InferenceFitOptions,
  gpu: GpuProfile,
): InferenceFitResult {
  const context = cudaContext(gpu, options.cudaContext, options.cudaContextSource);
  const base: InferenceOptions = { ...options, backend: "cuda" };
  const need = (o: InferenceOptions) => estimateInference(config, o).peak + context.bytes;
  const estimate = estimateInference(config, base);
  const required = estimate.peak + context.bytes, spare = gpu.memory - required;
  const prompt = base.prompt ?? base.context;
  const largest = {} as InferenceFitResult["largest"];
  for (const mode of ["full", "lora", "qlora"] as const) {
    const o = { ...base, mode, merged: mode === "full" ? undefined : base.merged };
    largest[mode] = {
      context: largestWithin(
        (n) => need({ ...o, context: n, prompt: Math.min(prompt, n) }),
        gpu.memory,
        config.maxSeq,
      ),
      batch: largestWithin((batch) => need({ ...o, batch }), gpu.memory, 2 ** 16),
    };
  }
  let verdict = `fits with ${formatBytes(spare)} to spare`;
  if (spare < 0) {
    const tries: string[] = [];
    if (base.mode !== "qlora") {
      const r = need({ ...base, mode: "qlora" });
      tries.push(
        `--mode qlora (${
          r <= gpu.memory
            ? `fits, ${formatBytes(gpu.memory - r)} to spare`
            : `saves ${formatBytes(required - r)}`
        })`,
      );
    }
    const n = largest[base.mode].context;
    if (n > 0) tries.push(`--context ${n}`);
    if ((base.batch ?? 1) > 1 && largest[base.mode].batch > 0) {
      tries.push(`--batch ${largest[base.mode].batch}`);
    }
    verdict = `needs ${formatBytes(-spare)} more` + (tries.length ? `: try ${tries.join(", ")}` : "");
  }
  return { gpu, context, estimate, required, spare, fits: spare >= 0, largest, verdict };
}

function verdictOf(
  spare: number,
  paging: boolean,
  estimate: MemoryEstimate,
  suggestions: FitSuggestion[],
): string {
  const gib = formatBytes;
  if (spare >= 0) return `fits with ${gib(spare)} to spare`;
  const more = `needs ${gib(-spare)} more`;
  if (paging) {
    return `${more} with the optimizer states resident, and fits by paging: up to ` +
      `${gib(Math.min(-spare, estimate.pageable))} of them go to host RAM and back every step`;
  }
  if (suggestions.length === 0) return `${more}: no single change here is enough`;
  const shown = suggestions.slice(0, 4).map((s) =>
    `${s.flag} (${s.fits ? `fits, ${gib(spare + s.saves)} to spare` : `saves ${gib(s.saves)}`})`
  );
  return `${more}: try ${shown.join(", ")}`;
}
