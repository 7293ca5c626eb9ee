/**
 * The memory of generation, as {@linkcode LlamaModel.generate} allocates it, category by category: the
 * weights of the mode (16-bit, or NF4 for QLoRA; a merged QLoRA layer adds a 16-bit copy), the adapters,
 * the key/value cache for `context` rows per sequence, and the largest transient of a step: the prefill of
 * `prompt` tokens per sequence (every row through every block at once) or a decode step. It stands beside
 * the ledger as {@linkcode estimateMemory} does for training (tests/estimate_inference_test.ts).
 *
 * A step's activations (e the bytes of the dtype, P the rows: batch · tokens), at their largest in a block:
 * the input, the attention's normalised input, q, k, v and output (e · P · (4·dim + 2·kvDim)), or the MLP's
 * input, residual, normalised input, gate, up and SwiGLU output (e · P · (3·dim + 3·hidden)), or the
 * down projection's output beside them (e · P · (4·dim + hidden)), each with a norm's f32 row scale; after
 * the blocks, each sequence's last row, the final norm and the logits (e · batch · (2·dim + vocab)).
 * Workspace: the step's token ids and positions (i32), and the largest of the kernels' scratch (on the CPU
 * attention over the cache, per thread 2 · min(128, tokens) · (past + tokens) floats, and RoPE's
 * frequencies), a LoRA layer's r-wide h, a 4-bit product's tile (on the CPU; none for a few rows: the fused
 * products; none on CUDA), and a prefill's row index of each sequence's last token.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import {
  adapterParameters,
  baseWeightBytes,
  matmul4bitWorkspace,
  type QuantStorageOptions,
} from "./estimate.ts";
import {
  kvCacheBytes,
  linearShapes,
  type LlamaConfig,
  TARGET_MODULES,
  type TargetModule,
  type TrainMode,
} from "../llama/mod.ts";
import { CATEGORIES, type Category } from "../core/mod.ts";

/** What {@linkcode estimateInference} estimates: a model, its cache and the longest step. */
export interface InferenceOptions extends QuantStorageOptions {
  /** `full` (no adapters), `lora` (16-bit base and adapters) or `qlora` (NF4 base and adapters). */
  mode: TrainMode;
  /** Rows per sequence the cache holds: prompt and new tokens (the context). */
  context: number;
  /** Tokens per sequence of the prefill step (default: `context`, a prompt as long as the context). */
  prompt?: number;
  /** Sequences (default 1). */
  batch?: number;
  /** Weights, activations and cache (default bf16). */
  dtype?: "bf16" | "f32";
  /** LoRA / QLoRA: adapters merged into the weights (QLoRA: a 16-bit copy of each adapted weight). */
  merged?: boolean;
  /** LoRA rank (default 8). */
  rank?: number;
  /** Adapted linears (default all seven). */
  targetModules?: readonly TargetModule[];
  /** Whose kernels: the CPU's (default) or CUDA's (no attention scratch; a 16-bit tile above 4 rows). */
  backend?: "cpu" | "cuda";
  /** CPU threads (attention's per-thread scratch); default `navigator.hardwareConcurrency`. */
  threads?: number;
}

/** What {@linkcode estimateInference} computes. */
export interface InferenceEstimate {
  /** Peak bytes per ledger category during the generation. */
  bytes: Record<Category, number>;
  /** Cache bytes per token of context (all sequences). */
  kvCachePerToken: number;
  /** Sum of the per-category peaks: an upper bound of the ledger's total peak. */
  peak: number;
}

/**
 * Estimates the device memory of generating `context` tokens per sequence.
 *
 * @example
 * ```ts
 * import { estimateInference, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const e = estimateInference(LLAMA_CONFIGS["7b"], { mode: "qlora", context: 4096, prompt: 64 });
 * assertEquals(e.bytes.kv_cache, 2 ** 31); // 0.5 MiB a token in bf16
 * assert(e.bytes.kv_cache > 0.5 * (e.bytes.quantized_weights + e.bytes.quant_constants));
 * ```
 */
export function estimateInference(config: LlamaConfig, options: InferenceOptions): InferenceEstimate {
  const refuse = (what: string) => new InvalidArgumentError(`Cannot estimate inference memory: ${what}`);
  const { mode, context } = options;
  if (!["full", "lora", "qlora"].includes(mode)) {
    throw refuse(`mode must be full, lora or qlora, got ${mode}`);
  }
  const batch = options.batch ?? 1, prompt = options.prompt ?? context, rank = options.rank ?? 8;
  for (
    const [name, v] of [["context", context], ["prompt", prompt], ["batch", batch], ["rank", rank]] as const
  ) {
    if (!Number.isSafeInteger(v) || v <= 0) throw refuse(`${name} must be a positive integer, got ${v}`);
  }
  if (prompt > context) throw refuse(`prompt ${prompt} is longer than the context ${context}`);
  const dtype = options.dtype ?? "bf16", e = dtype === "bf16" ? 2 : 4;
  const backend = options.backend ?? "cpu";
  const threads = options.threads ?? navigator.hardwareConcurrency;
  const targets = mode === "full" ? [] : options.targetModules ?? TARGET_MODULES;
  const shapes = linearShapes(config);
  const bytes = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  bytes.adapters = mode === "full" ? 0 : adapterParameters(config, rank, targets) * e;
  Object.assign(bytes, baseWeightBytes(config, mode, targets, e, { ...options, merged16: options.merged }));
  bytes.kv_cache = kvCacheBytes(config, { rows: context, batch, dtype });

  const { dim, hiddenDim: hid, heads } = config, hd = dim / heads, kv = config.kvHeads * hd;
  const step = (tokens: number, past: number) => {
    const rows = batch * tokens;
    const block = e * rows * Math.max(4 * dim + 2 * kv, 3 * dim + 3 * hid, 4 * dim + hid) + 4 * rows;
    const tail = Math.max(e * (rows + batch) * dim, e * batch * (2 * dim + config.vocabSize) + 4 * batch);
    const ids = 8 * rows; // token ids and positions
    // The rows of each sequence's last token, gathered after the blocks of a prefill (i32 per sequence).
    let kernel = tokens > 1 ? 4 * batch : 0;
    if (backend === "cpu") {
      // RoPE's frequencies; attention over the cache, per thread (CUDA's kernels keep both on chip).
      kernel = Math.max(kernel, 4 * (hd / 2), 4 * threads * 2 * Math.min(128, tokens) * (past + tokens));
    }
    for (const m of targets) {
      if (options.merged) continue;
      const h = rows * rank * e; // the bypass's h, beside the 4-bit product's own workspace
      const product = mode === "qlora"
        ? matmul4bitWorkspace(shapes[m], rows, true, { ...options, backend, dtype, rank })
        : 0;
      kernel = Math.max(kernel, h + product);
    }
    return { activations: Math.max(block, tail), workspace: ids + kernel };
  };
  const prefill = step(prompt, 0), decode = step(1, context - 1);
  bytes.activations = Math.max(prefill.activations, decode.activations);
  bytes.workspace = Math.max(prefill.workspace, decode.workspace);
  const peak = Object.values(bytes).reduce((a, b) => a + b, 0);
  return { bytes, kvCachePerToken: kvCacheBytes(config, { rows: 1, batch, dtype }), peak };
}
