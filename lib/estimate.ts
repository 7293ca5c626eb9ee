/**
 * An analytic memory estimator for fine-tuning a {@linkcode LlamaConfig} in full, LoRA or QLoRA mode:
 * exact parameter counts from the shapes, bytes per parameter per ledger category for a dtype policy,
 * exact 4-bit storage (packed codes and constants per tensor, as `quantize` allocates them), and
 * activations from the sequence length, batch and checkpointing, following what `LlamaModel` keeps for
 * backward. It stands beside the ledger's measurements: where the two differ, one of them is wrong.
 *
 * Policies (what the library allocates):
 *
 * | category          | full                         | LoRA / QLoRA                                  |
 * | ----------------- | ---------------------------- | --------------------------------------------- |
 * | weights           | every weight, 2 B (bf16)     | LoRA: every weight 2 B; QLoRA: embeddings, LM head, norms 2 B |
 * | quantized_weights | -                            | QLoRA: block linears, 0.5 B (two 4-bit codes a byte) |
 * | quant_constants   | -                            | QLoRA: 1 B per 64 values + 4 B per 64·256 (double quantization) |
 * | adapters          | -                            | rank · (in + out) per linear, 2 B             |
 * | gradients         | every weight, 2 B            | adapters only, 2 B                            |
 * | optimizer_states  | 8 B (m, v in f32) + 4 B f32 master with mixed precision | the same, per adapter weight |
 *
 * @example
 * ```ts
 * import { countParameters, estimateMemory, LLAMA_CONFIGS } from "../mod.ts";
 * import { assert } from "@std/assert";
 * assert(countParameters(LLAMA_CONFIGS["7b"]).total === 6_738_415_616);
 * const e = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "qlora", seq: 512, batch: 1 });
 * console.log((e.peak / 1e9).toFixed(2), "GB");
 * ```
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.ts";
import type { Category } from "./memory.ts";
import type { LlamaConfig, TargetModule, TrainMode } from "./model.ts";

/** The linear layers of a block, by Hugging Face name (the same order as `TARGET_MODULES`). */
const MODULES: readonly TargetModule[] = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
];

/** Parameter counts of a LLaMA configuration. */
export interface ParameterCounts {
  /** Token embedding, vocab · dim. */
  embedding: number;
  /** LM head (untied), vocab · dim. */
  lmHead: number;
  /** RMSNorm weights: two per block and the final one. */
  norms: number;
  /** The seven linear layers of one block. */
  linearPerLayer: number;
  /** Linear layers of all blocks (the weights QLoRA quantizes). */
  linear: number;
  /** Everything (no adapters). */
  total: number;
}

/**
 * `[out, in]` of each linear layer of a block.
 *
 * @example
 * ```ts
 * import { linearShapes, LLAMA_CONFIGS } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const shapes = linearShapes(LLAMA_CONFIGS["70b"]);
 * assertEquals(shapes.q_proj, [8192, 8192]);
 * assertEquals(shapes.k_proj, [1024, 8192]); // grouped-query attention: 8 KV heads of 128
 * assertEquals(shapes.down_proj, [8192, 28672]);
 * ```
 */
export function linearShapes(config: LlamaConfig): Record<TargetModule, [number, number]> {
  const hd = config.dim / config.heads;
  return {
    q_proj: [config.heads * hd, config.dim],
    k_proj: [config.kvHeads * hd, config.dim],
    v_proj: [config.kvHeads * hd, config.dim],
    o_proj: [config.dim, config.heads * hd],
    gate_proj: [config.hiddenDim, config.dim],
    up_proj: [config.hiddenDim, config.dim],
    down_proj: [config.dim, config.hiddenDim],
  };
}

/**
 * Exact parameter counts of a configuration (LLaMA-2-7B: 6,738,415,616).
 *
 * @example
 * ```ts
 * import { countParameters, LLAMA_CONFIGS } from "../mod.ts";
 * import { assert } from "@std/assert";
 * const p = countParameters(LLAMA_CONFIGS["7b"]);
 * assert(p.linearPerLayer === 202_375_168 && p.embedding === 131_072_000);
 * ```
 */
export function countParameters(config: LlamaConfig): ParameterCounts {
  const shapes = linearShapes(config);
  const linearPerLayer = MODULES.reduce((s, m) => s + shapes[m][0] * shapes[m][1], 0);
  const embedding = config.vocabSize * config.dim;
  const lmHead = config.vocabSize * config.dim;
  const norms = (2 * config.layers + 1) * config.dim;
  const linear = config.layers * linearPerLayer;
  return { embedding, lmHead, norms, linearPerLayer, linear, total: embedding + lmHead + norms + linear };
}

/**
 * Adapter weights: rank · (in + out) for every targeted linear of every block.
 *
 * @example
 * ```ts
 * import { adapterParameters, LLAMA_CONFIGS } from "../mod.ts";
 * import { assert } from "@std/assert";
 * assert(adapterParameters(LLAMA_CONFIGS["7b"], 8, ["q_proj"]) === 32 * 65_536);
 * ```
 */
export function adapterParameters(
  config: LlamaConfig,
  rank: number,
  targets: readonly TargetModule[] = MODULES,
): number {
  const shapes = linearShapes(config);
  return config.layers * targets.reduce((s, m) => s + rank * (shapes[m][0] + shapes[m][1]), 0);
}

/** Options of the 4-bit storage functions. */
export interface QuantStorageOptions {
  /** Values per absmax (default 64). */
  blocksize?: number;
  /** Quantize the absmax constants to 8 bits (default true). */
  doubleQuant?: boolean;
  /** Absmax constants per second-level f32 scale (default 256). */
  nestedBlocksize?: number;
}

/**
 * Bytes of one 4-bit tensor as `quantize` allocates them: packed codes, and constants (f32 absmax per
 * block, or with double quantization one u8 code per block plus one f32 scale per 256 blocks).
 *
 * @example
 * ```ts
 * import { quantizedBytes } from "../mod.ts";
 * import { assert } from "@std/assert";
 * const b = quantizedBytes(4096 * 4096);
 * assert(b.packed === 8_388_608 && b.constants === 262_144 + 4 * 1024);
 * ```
 */
export function quantizedBytes(numel: number, options: QuantStorageOptions = {}): {
  packed: number;
  constants: number;
} {
  const blocksize = options.blocksize ?? 64, nested = options.nestedBlocksize ?? 256;
  const blocks = Math.ceil(numel / blocksize);
  const constants = (options.doubleQuant ?? true) ? blocks + 4 * Math.ceil(blocks / nested) : 4 * blocks;
  return { packed: Math.ceil(numel / 2), constants };
}

/**
 * Storage per quantized value in the limit of large tensors: 4 + 32/64 = 4.5 bits, or with double
 * quantization 4 + 8/64 + 32/(64·256) = 4.127 bits.
 *
 * @example
 * ```ts
 * import { nf4BitsPerParameter } from "../mod.ts";
 * import { assert } from "@std/assert";
 * assert(Math.abs(nf4BitsPerParameter() - 4.127) < 1e-3);
 * assert(nf4BitsPerParameter({ doubleQuant: false }) === 4.5);
 * ```
 */
export function nf4BitsPerParameter(options: QuantStorageOptions = {}): number {
  const blocksize = options.blocksize ?? 64, nested = options.nestedBlocksize ?? 256;
  return 4 + ((options.doubleQuant ?? true) ? 8 / blocksize + 32 / (blocksize * nested) : 32 / blocksize);
}

/** Options of {@linkcode estimateMemory}. */
export interface EstimateOptions extends QuantStorageOptions {
  /** Training mode. */
  mode: TrainMode;
  /** Tokens per sequence. */
  seq: number;
  /** Sequences per step. */
  batch: number;
  /** Weight, gradient and activation dtype (default bf16). */
  dtype?: "f32" | "bf16";
  /** LoRA rank (default 8). */
  rank?: number;
  /** Linear layers with adapters (default all seven). */
  targetModules?: readonly TargetModule[];
  /** Keep only each block's input and recompute the rest in backward (default false). */
  checkpointing?: boolean;
  /** f32 master copies of bf16 trainables, counted under optimizer_states (default true). */
  masterWeights?: boolean;
}

/** What {@linkcode estimateMemory} computes. */
export interface MemoryEstimate {
  /** All weights, adapters included. */
  parameters: number;
  /** Weights the optimizer trains. */
  trainable: number;
  /** Bytes per ledger category (activations: the peak during a step; workspace: 0, not modelled). */
  bytes: Record<Category, number>;
  /** Bytes per trainable parameter: gradient and optimizer states. */
  perTrainable: { gradients: number; optimizerStates: number };
  /** Activation bytes per token: kept for backward, and the transient peak in backward on top. */
  activationsPerToken: { saved: number; transient: number };
  /** Sum of the categories: the estimated peak of a training step. */
  peak: number;
}

/**
 * Estimates the device memory of one training step. Activations follow `LlamaModel`: per block and
 * token it keeps the input, both norm outputs, q, k, v, the attention output, the residual, gate, up
 * and the SwiGLU output (6·dim + 2·kvDim + 3·hiddenDim values), two f32 row scales and the f32
 * log-sum-exp per head, and each adapter's r-wide h; plus the final norm, the last hidden state and
 * the logits. In backward the MLP of a block adds dim + 3·hiddenDim values per token.
 *
 * @example
 * ```ts
 * import { estimateMemory, LLAMA_CONFIGS } from "../mod.ts";
 * import { assert } from "@std/assert";
 * const full = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "full", seq: 64, batch: 1, masterWeights: false });
 * assert(full.bytes.optimizer_states === 8 * 6_738_415_616);
 * ```
 */
export function estimateMemory(config: LlamaConfig, options: EstimateOptions): MemoryEstimate {
  const { mode, seq, batch } = options;
  if (!["full", "lora", "qlora"].includes(mode)) {
    throw new InvalidArgumentError(`Cannot estimate memory: mode must be full, lora or qlora, got ${mode}`);
  }
  for (const [name, v] of [["seq", seq], ["batch", batch]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new InvalidArgumentError(`Cannot estimate memory: ${name} must be a positive integer, got ${v}`);
    }
  }
  const dtype = options.dtype ?? "bf16";
  const e = dtype === "bf16" ? 2 : 4;
  const rank = options.rank ?? 8;
  const targets = options.targetModules ?? MODULES;
  const p = countParameters(config);
  const adapters = mode === "full" ? 0 : adapterParameters(config, rank, targets);
  const trainable = mode === "full" ? p.total : adapters;
  const master = dtype === "bf16" && (options.masterWeights ?? true) ? 4 : 0;
  const bytes: Record<Category, number> = {
    weights: 0,
    quantized_weights: 0,
    quant_constants: 0,
    adapters: adapters * e,
    gradients: trainable * e,
    optimizer_states: trainable * (8 + master),
    activations: 0,
    workspace: 0,
  };
  if (mode === "qlora") {
    const shapes = linearShapes(config);
    let frozen16 = 0;
    for (const m of MODULES) {
      const n = shapes[m][0] * shapes[m][1];
      if (!targets.includes(m)) {
        frozen16 += n;
        continue;
      }
      const q = quantizedBytes(n, options);
      bytes.quantized_weights += config.layers * q.packed;
      bytes.quant_constants += config.layers * q.constants;
    }
    bytes.weights = (p.embedding + p.lmHead + p.norms + config.layers * frozen16) * e;
  } else {
    bytes.weights = p.total * e;
  }
  // Activations per token (bytes).
  const kv = config.kvHeads * (config.dim / config.heads);
  const lora = mode === "full" ? 0 : targets.length * rank * e;
  const blockSaved = e * (6 * config.dim + 2 * kv + 3 * config.hiddenDim) + 8 + 4 * config.heads + lora;
  const tail = e * (2 * config.dim + config.vocabSize) + 4; // last hidden, final norm, logits, rstd
  const transient = e * (config.dim + 3 * config.hiddenDim);
  const saved = options.checkpointing
    ? config.layers * e * config.dim + blockSaved + tail
    : config.layers * blockSaved + tail;
  const tokens = seq * batch;
  bytes.activations = tokens * (saved + transient);
  const peak = Object.values(bytes).reduce((a, b) => a + b, 0);
  return {
    parameters: p.total + adapters,
    trainable,
    bytes,
    perTrainable: { gradients: e, optimizerStates: 8 + master },
    activationsPerToken: { saved, transient },
    peak,
  };
}

/**
 * The longest sequence (at the given batch) whose estimated step fits `budget` bytes, or 0 if even one
 * token does not fit.
 *
 * @example
 * ```ts
 * import { LLAMA_CONFIGS, maxSequenceWithin } from "../mod.ts";
 * import { assert } from "@std/assert";
 * assert(maxSequenceWithin(LLAMA_CONFIGS["7b"], { mode: "full", batch: 1 }, 6 * 2 ** 30) === 0);
 * ```
 */
export function maxSequenceWithin(
  config: LlamaConfig,
  options: Omit<EstimateOptions, "seq">,
  budget: number,
): number {
  const at = (seq: number) => estimateMemory(config, { ...options, seq }).peak;
  if (at(1) > budget) return 0;
  const perToken = at(2) - at(1);
  return Math.floor((budget - at(1)) / perToken) + 1;
}
