/**
 * The shape of a LLaMA model and how it is trained: the config table (tiny, 7B, 13B, 70B), the training
 * modes, the linear layers of a block with their Hugging Face paths, and the options of a model.
 *
 * @module
 */

import type { Device } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";

/** The shape of a LLaMA model. */
export interface LlamaConfig {
  /** Tokens in the vocabulary. */
  vocabSize: number;
  /** Model width (hidden size). */
  dim: number;
  /** Decoder blocks. */
  layers: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads (grouped-query attention when fewer than heads). */
  kvHeads: number;
  /** MLP width (intermediate size). */
  hiddenDim: number;
  /** Longest sequence. */
  maxSeq: number;
  /** RMSNorm epsilon. */
  normEps: number;
  /** RoPE base. */
  ropeTheta: number;
}

/**
 * Named configurations: `tiny` trains on 2 CPU cores in minutes; `7b`, `13b` and `70b` are the real
 * shapes of LLaMA-2, and `8b` those of LLaMA-3.1-8B (grouped-query attention with 8 KV heads, a
 * 128,256-word vocabulary, RoPE base 500,000), for memory experiments with synthetic weights (override
 * `layers` to measure a few real-size blocks). `8b` leaves out LLaMA-3.1's "llama3" RoPE frequency
 * scaling, which this library does not implement (a Hugging Face config that asks for it is refused by
 * name): the shapes, and so every byte, are the real model's; its `maxSeq` is the 8,192 tokens of
 * LLaMA-3's pretraining context rather than the 131,072 the scaling reaches.
 */
export const LLAMA_CONFIGS: Readonly<Record<"tiny" | "7b" | "8b" | "13b" | "70b", LlamaConfig>> = {
  tiny: {
    vocabSize: 320,
    dim: 128,
    layers: 4,
    heads: 4,
    kvHeads: 4,
    hiddenDim: 352,
    maxSeq: 256,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
  "7b": {
    vocabSize: 32000,
    dim: 4096,
    layers: 32,
    heads: 32,
    kvHeads: 32,
    hiddenDim: 11008,
    maxSeq: 4096,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
  "8b": {
    vocabSize: 128256,
    dim: 4096,
    layers: 32,
    heads: 32,
    kvHeads: 8,
    hiddenDim: 14336,
    maxSeq: 8192,
    normEps: 1e-5,
    ropeTheta: 500000,
  },
  "13b": {
    vocabSize: 32000,
    dim: 5120,
    layers: 40,
    heads: 40,
    kvHeads: 40,
    hiddenDim: 13824,
    maxSeq: 4096,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
  "70b": {
    vocabSize: 32000,
    dim: 8192,
    layers: 80,
    heads: 64,
    kvHeads: 8,
    hiddenDim: 28672,
    maxSeq: 4096,
    normEps: 1e-5,
    ropeTheta: 10000,
  },
};

/** How the model is trained. */
export type TrainMode = "full" | "lora" | "qlora";

/** The linear layers of a block, by their Hugging Face names. */
export const TARGET_MODULES = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
] as const;

/** One of {@linkcode TARGET_MODULES}. */
export type TargetModule = typeof TARGET_MODULES[number];

/** Options of {@linkcode LlamaModel}. */
export interface LlamaOptions {
  /** Training mode (default "full"). */
  mode?: TrainMode;
  /** Weight and activation dtype (default f32; bf16 for 16-bit runs). */
  dtype?: "f32" | "bf16";
  /** LoRA rank (default 8). */
  rank?: number;
  /** LoRA alpha (default 16). */
  alpha?: number;
  /** LoRA dropout (default 0). */
  loraDropout?: number;
  /** Linear layers that get adapters (default: all seven of every block). */
  targetModules?: readonly TargetModule[];
  /** Recompute each block in backward instead of keeping its activations (default false). */
  checkpointing?: boolean;
  /**
   * With `checkpointing`, keep each block's saved input in the host pool (pinned host memory on CUDA,
   * counted by the ledger's host figures, outside the device budget) and bring it back just before that
   * block's recompute (default false).
   */
  offloadCheckpoints?: boolean;
  /**
   * Rows (tokens) of the LM head and the cross-entropy computed at a time, so the logits of a long
   * sequence and their gradient are never whole in memory; 0 computes all rows at once. Default:
   * {@linkcode defaultLossChunk} (the rows whose logits fit 32 MiB).
   */
  lossChunk?: number;
  /** Standard deviation of the synthetic initial weights (default 0.02). */
  std?: number;
  /** Seed of the weights (default 0). */
  seed?: number;
  /** Device (default: the `QLORA_BACKEND` device). */
  device?: Device;
  /**
   * Initial weights by Hugging Face name (e.g. `model.layers.0.self_attn.q_proj.weight`), as f32 values;
   * names it does not know get synthetic weights. See {@linkcode loadWeights}.
   */
  weights?: WeightSource;
}

/** Gives the f32 values of a weight by its Hugging Face name, or undefined. */
export type WeightSource = (name: string, shape: readonly number[]) => Float32Array | undefined;

/**
 * Hugging Face module paths of the linear layers of a block (the names in checkpoints and PEFT adapters).
 *
 * @example
 * ```ts
 * import { MODULE_PATHS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(MODULE_PATHS.q_proj, "self_attn.q_proj");
 * ```
 */
export const MODULE_PATHS: Readonly<Record<TargetModule, string>> = {
  q_proj: "self_attn.q_proj",
  k_proj: "self_attn.k_proj",
  v_proj: "self_attn.v_proj",
  o_proj: "self_attn.o_proj",
  gate_proj: "mlp.gate_proj",
  up_proj: "mlp.up_proj",
  down_proj: "mlp.down_proj",
};

/**
 * Throws {@linkcode InvalidArgumentError} unless a config can build a model: positive integer sizes,
 * an even head size (dim / heads, for rotary pairs) and heads a multiple of kvHeads.
 *
 * @example
 * ```ts
 * import { checkConfig, InvalidArgumentError, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertThrows } from "@std/assert";
 * checkConfig(LLAMA_CONFIGS["7b"]);
 * assertThrows(() => checkConfig({ ...LLAMA_CONFIGS.tiny, kvHeads: 3 }), InvalidArgumentError, "kvHeads");
 * ```
 */
export function checkConfig(c: LlamaConfig): void {
  for (const key of ["vocabSize", "dim", "layers", "heads", "kvHeads", "hiddenDim", "maxSeq"] as const) {
    if (!Number.isSafeInteger(c[key]) || c[key] <= 0) {
      throw new InvalidArgumentError(
        `Cannot build a model: ${key} must be a positive integer, got ${c[key]}`,
      );
    }
  }
  if (c.dim % c.heads || c.heads % c.kvHeads || (c.dim / c.heads) % 2) {
    throw new InvalidArgumentError(
      "Cannot build a model: dim / heads must be an even integer and heads a multiple of kvHeads",
    );
  }
}

/**
 * `[out, in]` of each linear layer of a block.
 *
 * @example
 * ```ts
 * import { linearShapes, LLAMA_CONFIGS } from "../../mod.ts";
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

/** Bytes of logits one chunk of the LM head and the loss may hold by default (32 MiB). */
export const LOSS_CHUNK_BYTES = 32 * 2 ** 20;

/**
 * The default rows per chunk of the LM head and the loss: as many as have logits within
 * {@linkcode LOSS_CHUNK_BYTES} (at least 1). A step whose tokens fit one chunk is computed whole.
 *
 * @example
 * ```ts
 * import { defaultLossChunk, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(defaultLossChunk(LLAMA_CONFIGS["7b"], "bf16"), 524); // 524 x 32,000 bf16 logits: 32 MiB
 * assertEquals(defaultLossChunk(LLAMA_CONFIGS["8b"], "bf16"), 130);
 * ```
 */
export function defaultLossChunk(config: LlamaConfig, dtype: "f32" | "bf16"): number {
  return Math.max(1, Math.floor(LOSS_CHUNK_BYTES / (config.vocabSize * (dtype === "bf16" ? 2 : 4))));
}
