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
 * | optimizer_states  | 8 B (m, v in f32; 8-bit: 2 B + 8 B per 256) + 4 B f32 master with mixed precision | the same, per adapter weight |
 * | activations       | what forward keeps for backward, per token and block, plus backward's transient peak | the same, plus each adapter's r-wide h |
 * | workspace         | the cross-entropy's f32 losses; the kernels' own scratch | LoRA: dh in backward; QLoRA: the 4-bit GEMM's dequantization tile (CPU; none on CUDA) |
 *
 * The kernels' scratch ({@linkcode nativeScratchBytes}) is counted as the native library allocates it
 * through the ledger, held for one call: on the CPU, per thread, attention's score blocks and the
 * cross-entropy's row, the RoPE table and the embedding gradient's links; on CUDA, attention's and RMSNorm's
 * partial sums and the embedding gradient's sort. Not modelled: oneDNN's own scratchpads inside a CPU GEMM
 * (it sizes them itself; measured up to 524,416 bytes on 2 threads) and CUDA's few KB of descriptor tables
 * and sort storage, which the ledger counts on top (tests/estimate_test.ts allows for them).
 *
 * @example
 * ```ts
 * import { countParameters, estimateMemory, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(countParameters(LLAMA_CONFIGS["7b"]).total === 6_738_415_616);
 * const e = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "qlora", seq: 512, batch: 1 });
 * console.log((e.peak / 1e9).toFixed(2), "GB");
 * ```
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import type { Category } from "../core/mod.ts";
import {
  defaultLossChunk,
  linearShapes,
  type LlamaConfig,
  TARGET_MODULES,
  type TargetModule,
  type TrainMode,
} from "../llama/mod.ts";
import { ADAMW8_BLOCK } from "../optim/mod.ts";

/** The linear layers of a block, by Hugging Face name. */
const MODULES: readonly TargetModule[] = TARGET_MODULES;

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
 * Exact parameter counts of a configuration (LLaMA-2-7B: 6,738,415,616).
 *
 * @example
 * ```ts
 * import { countParameters, LLAMA_CONFIGS } from "../../mod.ts";
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
 * import { adapterParameters, LLAMA_CONFIGS } from "../../mod.ts";
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
 * import { quantizedBytes } from "../../mod.ts";
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
 * import { nf4BitsPerParameter } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(Math.abs(nf4BitsPerParameter() - 4.127) < 1e-3);
 * assert(nf4BitsPerParameter({ doubleQuant: false }) === 4.5);
 * ```
 */
export function nf4BitsPerParameter(options: QuantStorageOptions = {}): number {
  const blocksize = options.blocksize ?? 64, nested = options.nestedBlocksize ?? 256;
  return 4 + ((options.doubleQuant ?? true) ? 8 / blocksize + 32 / (blocksize * nested) : 32 / blocksize);
}

/** The optimizers the estimator knows, by the names `deno task fit` uses. */
export type OptimizerKind = "adamw" | "paged" | "8bit";

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
  /** With checkpointing, keep the blocks' inputs in the host pool instead (default false). */
  offloadCheckpoints?: boolean;
  /**
   * Rows of the LM head and the loss at a time (0: all at once; default
   * {@linkcode defaultLossChunk}, as `LlamaModel`).
   */
  lossChunk?: number;
  /** f32 master copies of bf16 trainables, counted under optimizer_states (default true). */
  masterWeights?: boolean;
  /**
   * `adamw` (two f32 states), `paged` (the same bytes, in pages a memory spike can move to host RAM)
   * or `8bit` (two u8 codes and one f32 absmax per 256 values and state). Default `adamw`.
   */
  optimizer?: OptimizerKind;
  /**
   * Whose 4-bit GEMM workspace to count (default `cpu`): the CPU backend dequantizes a cache-sized f32
   * tile at a time; the CUDA backend needs none (its GEMV decodes W in registers, its GEMM decodes tiles
   * of W into shared memory).
   */
  backend?: "cpu" | "cuda";
  /**
   * Threads the CPU backend runs its kernels on (OpenMP's default: the host's logical cores), which size
   * attention's and the cross-entropy's per-thread scratch. Default `navigator.hardwareConcurrency`.
   */
  threads?: number;
}

/** What {@linkcode estimateMemory} computes. */
export interface MemoryEstimate {
  /** All weights, adapters included. */
  parameters: number;
  /** Weights the optimizer trains. */
  trainable: number;
  /**
   * Bytes per ledger category, each the peak of that category during a step (the ledger's
   * `peak[category]` after `resetPeak()`): for all but activations and workspace the bytes live between
   * steps.
   */
  bytes: Record<Category, number>;
  /** Bytes per trainable parameter: gradient and optimizer states (8-bit: the per-block absmax included). */
  perTrainable: { gradients: number; optimizerStates: number };
  /**
   * Activation bytes per token: kept from forward for backward (the token ids and targets included), and
   * the transient peak of the last block's backward on top.
   */
  activationsPerToken: { saved: number; transient: number };
  /** Of optimizer_states, the f32 master copies of bf16 trainables. */
  masterWeights: number;
  /**
   * Bytes the step keeps in the host pool, outside the device and its budget: the offloaded checkpoints
   * (every block's input), at their peak.
   */
  host: number;
  /** Of optimizer_states, what a paged optimizer can hold in host RAM (its m and v pages); 0 otherwise. */
  pageable: number;
  /**
   * Sum of the per-category peaks: the estimated peak of a step. An upper bound of the ledger's
   * `totalPeak`, which is lower by the part of the workspace that is not live at the activation peak.
   */
  peak: number;
  /**
   * The least device memory the step can run in: `peak`, or with a paged optimizer the peak less its
   * pageable states plus one page pair (the states then move to host RAM and back every step).
   */
  minimum: number;
}

/** Rows of X the CPU's fused 4-bit products take (`kGemvMaxRows` in cuda/src/cpu/dequant4.h). */
const CPU_FUSED_ROWS = 8;

/**
 * Rows of bf16 X the CPU's fused 4-bit panel GEMM takes forward (`kGemm4MaxRows` in
 * cuda/src/cpu/dequant4.h); for an input gradient it takes any number.
 */
const CPU_GEMM4_ROWS = 512;

/** The longest inner dimension oneDNN's bf16 products were measured to run without f32 accumulators. */
const ONEDNN_UNSPLIT_K = 3072;

/** The CPU backend's threads (OpenMP's default: the host's logical cores), checked. */
function cpuThreads(threads = navigator.hardwareConcurrency): number {
  if (!Number.isSafeInteger(threads) || threads <= 0) {
    throw new InvalidArgumentError(
      `Cannot estimate memory: threads must be a positive integer, got ${threads}`,
    );
  }
  return threads;
}

/**
 * Bytes of the 4-bit GEMM workspace for `x [m, k] · op(W)`, as each backend's `qlora_gemm_4bit_workspace`.
 */
function gemm4bitWorkspace(
  backend: "cpu" | "cuda",
  transW: boolean,
  m: number,
  n: number,
  k: number,
  threads: number,
): number {
  if (backend === "cuda") return 0; // W decoded in registers (GEMV) or in shared memory (tiles)
  // CPU: none for a few rows (the fused products); the panel GEMMs' scratch for the rows they take (any of
  // an input gradient's, up to 512 forward); else one tile of W as f32, 2^22 values of rows, widths a
  // multiple of 16.
  if (m <= CPU_FUSED_ROWS) return 0;
  if (!transW || m <= CPU_GEMM4_ROWS) return cpuPanelScratch(transW, m, n, k, threads);
  return cpuTileColumns(n, k) * k * 4;
}

/**
 * Scratch of the CPU's panel GEMMs (`gemm4_bf16_scratch_bytes` in cuda/src/cpu/gemm4.cpp): forward, X
 * arranged (rows rounded up to 64) and per thread a panel of up to 96 rows of W over up to 4,096 values in
 * bf16 and its f32 tile (those rows x X's rows); input gradients, per thread a panel of up to 256 rows x
 * 128 columns of W in bf16 and an f32 tile of m x those columns.
 */
function cpuPanelScratch(transW: boolean, m: number, n: number, k: number, threads: number): number {
  if (!transW) {
    const width = Math.min(128, Math.ceil(n / 64) * 64);
    return threads * (Math.min(256, k) * width * 2 + m * width * 4);
  }
  const mp = Math.ceil(m / 64) * 64, rows = Math.min(96, n);
  return mp * k * 2 + threads * (rows * Math.min(4096, k) * 2 + rows * mp * 4);
}

/** Columns of op(W) in one of the CPU's dequantization tiles (`tile_width` in cuda/src/cpu/gemm.cpp). */
function cpuTileColumns(n: number, k: number): number {
  let width = Math.max(Math.floor(2 ** 22 / k), 1);
  if (width >= 16) width = Math.floor(width / 16) * 16;
  return Math.min(width, n);
}

/** Query rows a CPU attention task scores at a time (`kQueryBlock` in cuda/src/cpu/model.cpp). */
const CPU_QUERY_BLOCK = 128;

/**
 * The largest scratch one native kernel of a training step holds through the ledger (category
 * `workspace`) during its call, as cuda/src/cpu/model.cpp and cuda/src/gpu/model.cu allocate it.
 * CPU, per thread: attention's forward 2 · 128 · seq floats and backward 4 · 128 · seq + 128 +
 * 2 · seq · headDim floats, the cross-entropy's vocab floats (beside its f32 losses, 4 B a token); once:
 * RoPE's cos/sin table and, when the
 * embedding trains (full), the gradient's links, 4 · (2 · tokens + vocab). CUDA: attention backward's
 * f32 row sums (batch · heads · seq), RMSNorm's per-chunk column sums, the embedding gradient's sort
 * arrays (3 u32 per token). Not modelled, a few KB: CUB's sort storage, the optimizers' descriptor tables
 * and 8-bit maps, the gradient norm's partial sums.
 *
 * @example
 * ```ts
 * import { LLAMA_CONFIGS, nativeScratchBytes } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * // The tiny model (head dim 32) at 64 tokens on 2 threads: attention's backward, 2 · 36,992 floats.
 * const s = nativeScratchBytes(LLAMA_CONFIGS.tiny, { seq: 64, batch: 1, mode: "lora", backend: "cpu", threads: 2 });
 * assertEquals(s, 295_936);
 * ```
 */
export function nativeScratchBytes(
  config: LlamaConfig,
  options: {
    seq: number;
    batch: number;
    mode: TrainMode;
    backend?: "cpu" | "cuda";
    threads?: number;
    lossChunk?: number;
  },
): number {
  const { seq, batch, mode } = options;
  const tokens = seq * batch, hd = config.dim / config.heads;
  const chunk = options.lossChunk ?? tokens;
  // One cross-entropy call's f32 losses, and in chunks its rows' targets too (the workspace's).
  const lossBytes = chunk > 0 && chunk < tokens ? 8 * chunk : 4 * tokens;
  if ((options.backend ?? "cpu") === "cuda") {
    const perChunk = Math.max(Math.floor(tokens / 1024) + 1, 32);
    return Math.max(
      4 * batch * config.heads * seq,
      4 * Math.ceil(tokens / perChunk) * config.dim,
      mode === "full" ? 12 * tokens : 0,
    );
  }
  const threads = cpuThreads(options.threads);
  const block = CPU_QUERY_BLOCK * seq;
  return Math.max(
    4 * threads * 2 * block,
    4 * threads * (4 * block + CPU_QUERY_BLOCK + 2 * seq * hd),
    4 * threads * config.vocabSize + lossBytes, // beside the f32 losses it writes (workspace too)
    4 * (hd / 2 + seq * hd),
    mode === "full" ? 4 * (2 * tokens + config.vocabSize) : 0,
  );
}

/**
 * Bytes of workspace a 4-bit product holds for `x [tokens, ·]` times a 4-bit weight `[out, in]`, its own
 * and the native library's through the ledger: the backend's workspace (`qlora_gemm_4bit_workspace`: the
 * CPU's panel scratch or dequantization tile, none for a few rows; none on CUDA, which decodes W and its double-quantized
 * constants where it reads them), and on the CPU's fused path for a few rows X widened to f32 (bf16 X),
 * forward also the rows' f32 dot products with every row of W and, for a LoRA bypass of `rank`, its h and
 * Bᵀ in f32; for more rows of bf16 X the panel GEMMs' scratch, and where they do not apply (forward past
 * 512 rows, f32 X) a tile of W dequantized for oneDNN and, with an inner dimension past 3,072, oneDNN's
 * f32 accumulators for each tile's product (per thread, rows x the tile's columns, in its scratchpad).
 * `transW` true is forward (`x Wᵀ`), false the input gradient (`dy W`).
 *
 * @example
 * ```ts
 * import { matmul4bitWorkspace } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * // LLaMA-2-7B's gate_proj on CUDA: nothing, whether 512 tokens (tiles decoded in shared memory) or 4 (GEMV).
 * assertEquals(matmul4bitWorkspace([11008, 4096], 512, true, { backend: "cuda" }), 0);
 * assertEquals(matmul4bitWorkspace([11008, 4096], 4, true, { backend: "cuda" }), 0);
 * // The CPU decoding one bf16 token with a rank-8 bypass: x, the row's 11,008 dot products, h and Bᵀ in
 * // f32, W decoded in registers.
 * const ws = matmul4bitWorkspace([11008, 4096], 1, true, { dtype: "bf16", rank: 8 });
 * assertEquals(ws, 4 * (4096 + 11008 + 8 + 8 * 11008));
 * ```
 */
export function matmul4bitWorkspace(
  shape: readonly [number, number],
  tokens: number,
  transW: boolean,
  options: QuantStorageOptions & {
    backend?: "cpu" | "cuda";
    dtype?: "f32" | "bf16";
    rank?: number;
    threads?: number;
  } = {},
): number {
  const [out, inp] = shape;
  const backend = options.backend ?? "cpu";
  const [n, k] = transW ? [out, inp] : [inp, out];
  if (backend === "cuda") return 0;
  const threads = cpuThreads(options.threads);
  const own = gemm4bitWorkspace(backend, transW, tokens, n, k, threads);
  const blocksize = options.blocksize ?? 64, bf16 = options.dtype === "bf16";
  const panels = bf16 &&
    (transW ? tokens <= CPU_GEMM4_ROWS && k % blocksize === 0 : n % blocksize === 0 && k % 2 === 0);
  if (tokens > CPU_FUSED_ROWS && !panels) {
    // Where the panel GEMMs do not apply, W is dequantized tile by tile (in X's dtype) for oneDNN: in the
    // workspace when it holds a tile, else through the ledger beside it for the call. Where the inner
    // dimension of a bf16 product is long, oneDNN splits it and sums the parts in f32 accumulators in its
    // scratchpad, one set per thread: rows x the tile's columns (measured with Debian's oneDNN: exactly
    // that at k = 4,096 and 11,008 from 128 rows on, e.g. 32 MiB for 7B's q_proj at 4,096 tokens on 2
    // threads, 16 MiB on 1; none at k <= 3,072).
    const tile = cpuTileColumns(n, k) * k * (bf16 ? 2 : 4);
    const accumulators = bf16 && k > ONEDNN_UNSPLIT_K ? 4 * threads * tokens * cpuTileColumns(n, k) : 0;
    return (own >= tile ? own : own + tile) + accumulators;
  }
  if (tokens > CPU_FUSED_ROWS) return own;
  // The fused products' scratch (gemv4_scratch_bytes in cuda/src/cpu/gemv4.cpp): bf16 X widened to f32
  // (or rearranged in half of it); forward, also the f32 dot products of X's rows with every row of W
  // and the bypass's f32 h.
  const widened = options.dtype === "bf16" ? 4 * tokens * k : 0;
  if (!transW) return widened;
  return widened + 4 * tokens * n + (options.rank ? 4 * (tokens + n) * options.rank : 0);
}

/**
 * The base model's bytes: every weight in 16/32 bits (`e` bytes each), or for QLoRA the adapted linears in
 * 4 bits with their constants and the rest (embeddings, LM head, norms, linears without adapters) in 16/32
 * bits; `merged16` adds a 16-bit copy of each adapted linear (a merged QLoRA layer keeps one).
 *
 * @example
 * ```ts
 * import { baseWeightBytes, LLAMA_CONFIGS, TARGET_MODULES } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const q = baseWeightBytes(LLAMA_CONFIGS["7b"], "qlora", TARGET_MODULES, 2);
 * assertEquals(q.weights, 2 * (2 * 32000 * 4096 + 65 * 4096)); // embeddings, LM head and norms in bf16
 * assertEquals(q.quantized_weights, 6_476_005_376 / 2); // two 4-bit codes a byte
 * ```
 */
export function baseWeightBytes(
  config: LlamaConfig,
  mode: TrainMode,
  targets: readonly TargetModule[],
  e: number,
  options: QuantStorageOptions & { merged16?: boolean } = {},
): { weights: number; quantized_weights: number; quant_constants: number } {
  const p = countParameters(config);
  if (mode !== "qlora") return { weights: p.total * e, quantized_weights: 0, quant_constants: 0 };
  const shapes = linearShapes(config);
  let sixteen = p.embedding + p.lmHead + p.norms, quantized = 0, constants = 0;
  for (const m of MODULES) {
    const n = shapes[m][0] * shapes[m][1];
    if (!targets.includes(m)) {
      sixteen += config.layers * n;
      continue;
    }
    const q = quantizedBytes(n, options);
    quantized += config.layers * q.packed;
    constants += config.layers * q.constants;
    if (options.merged16) sixteen += config.layers * n;
  }
  return { weights: sixteen * e, quantized_weights: quantized, quant_constants: constants };
}

/** The element counts of every tensor the optimizer trains, for per-tensor rounding (8-bit absmax). */
function trainableTensors(
  config: LlamaConfig,
  mode: TrainMode,
  rank: number,
  targets: readonly TargetModule[],
): number[] {
  const shapes = linearShapes(config);
  const perBlock: number[] = mode === "full"
    ? [...MODULES.map((m) => shapes[m][0] * shapes[m][1]), config.dim, config.dim]
    : targets.flatMap((m) => [rank * shapes[m][1], shapes[m][0] * rank]);
  const blocks = Array.from({ length: config.layers }, () => perBlock).flat();
  if (mode !== "full") return blocks;
  const table = config.vocabSize * config.dim;
  return [table, ...blocks, config.dim, table];
}

/**
 * Estimates the device memory of one training step, category by category, as `LlamaModel`, its layers
 * and the optimizers allocate it (checked against the ledger in tests/estimate_test.ts, within 2% per
 * category, at tiny and real LLaMA-2-7B shapes).
 *
 * Activations, per token, with e the bytes of the dtype:
 * - the token ids and targets (i32, 8 B);
 * - per block, what it keeps for backward: the input, both norm outputs, q, k, v, the attention output,
 *   the residual, gate, up and the SwiGLU output (e · (6·dim + 2·kvDim + 3·hiddenDim)), two f32 row scales,
 *   the f32 log-sum-exp per head, and each adapter's r-wide h;
 * - with checkpointing, per block only its input and the adapters' h (a LoRA layer keeps h until its
 *   next forward), plus one block recomputed in backward; with `offloadCheckpoints` the inputs wait in
 *   the host pool (`host`) and only the recomputed block's is on the device;
 * - the tail: the last hidden state, the final norm's output and scale, the logits, or where the tokens
 *   are more than `lossChunk` (the LM head and the loss in chunks) the final norm output's gradient;
 * - on top, in the last block's backward, the largest set of gradients live at once: the incoming
 *   gradient with d(act), d(gate), d(up) (dim + 3·hidden), or d(gate), d(up) and both halves of d(norm2)
 *   (3·dim + 2·hidden), or attention's d(x2), dq, dk, dv, d(norm1) and a projection's part (5·dim + 2·kvDim);
 *   or, if larger, one chunk of the LM head in forward: its rows of the final norm's output, their logits
 *   and their input gradient.
 *
 * Workspace: the cross-entropy's f32 losses (in chunks, a chunk's losses and targets), a LoRA layer's dh
 * (r-wide) in backward, and for QLoRA each 4-bit product's workspace ({@linkcode matmul4bitWorkspace}),
 * whichever is largest at one time.
 *
 * @example
 * ```ts
 * import { estimateMemory, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const full = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "full", seq: 64, batch: 1, masterWeights: false });
 * assert(full.bytes.optimizer_states === 8 * 6_738_415_616);
 * const paged = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "qlora", seq: 512, batch: 1, optimizer: "paged" });
 * assert(paged.minimum < paged.peak && paged.pageable === 8 * paged.trainable);
 * ```
 */
export function estimateMemory(config: LlamaConfig, options: EstimateOptions): MemoryEstimate {
  const { mode, seq, batch } = options;
  const refuse = (what: string) => new InvalidArgumentError(`Cannot estimate memory: ${what}`);
  if (!["full", "lora", "qlora"].includes(mode)) {
    throw refuse(`mode must be full, lora or qlora, got ${mode}`);
  }
  for (const [name, v] of [["seq", seq], ["batch", batch], ["rank", options.rank ?? 8]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) throw refuse(`${name} must be a positive integer, got ${v}`);
  }
  const optimizer = options.optimizer ?? "adamw";
  if (!["adamw", "paged", "8bit"].includes(optimizer)) {
    throw refuse(`optimizer must be adamw, paged or 8bit, got ${optimizer}`);
  }
  const backend = options.backend ?? "cpu";
  if (backend !== "cpu" && backend !== "cuda") throw refuse(`backend must be cpu or cuda, got ${backend}`);
  const dtype = options.dtype ?? "bf16";
  const e = dtype === "bf16" ? 2 : 4;
  const rank = options.rank ?? 8;
  const targets = options.targetModules ?? MODULES;
  for (const t of targets) if (!MODULES.includes(t)) throw refuse(`unknown target module ${t}`);
  if (mode !== "full" && targets.length === 0) throw refuse(`${mode} needs at least one target module`);
  const p = countParameters(config);
  const adapters = mode === "full" ? 0 : adapterParameters(config, rank, targets);
  const trainable = mode === "full" ? p.total : adapters;
  const master = dtype === "bf16" && (options.masterWeights ?? true) ? 4 : 0;
  const tensors = trainableTensors(config, mode, rank, targets);
  const states = optimizer === "8bit"
    ? tensors.reduce((s, n) => s + 2 * n + 8 * Math.ceil(n / ADAMW8_BLOCK), 0)
    : 8 * trainable;
  const bytes: Record<Category, number> = {
    weights: 0,
    quantized_weights: 0,
    quant_constants: 0,
    adapters: adapters * e,
    gradients: trainable * e,
    optimizer_states: states + master * trainable,
    activations: 0,
    workspace: 0,
    kv_cache: 0,
  };
  const shapes = linearShapes(config);
  Object.assign(bytes, baseWeightBytes(config, mode, targets, e, options));
  // Activations per token (bytes).
  const { dim, hiddenDim: hid, heads, layers } = config;
  const kv = config.kvHeads * (dim / heads);
  const lora = mode === "full" ? 0 : targets.length * rank * e;
  const core = e * (6 * dim + 2 * kv + 3 * hid) + 8 + 4 * heads;
  const tokens = seq * batch;
  const lossChunk = options.lossChunk ?? defaultLossChunk(config, dtype);
  if (!Number.isSafeInteger(lossChunk) || lossChunk < 0) {
    throw refuse(`lossChunk must be an integer >= 0, got ${lossChunk}`);
  }
  const offload = options.offloadCheckpoints ?? false;
  if (offload && !options.checkpointing) throw refuse("offloadCheckpoints needs checkpointing");
  // In chunks, the LM head's backward runs in forward: the gradient of the final norm's output waits for
  // backward (and goes at its start) instead of the logits (kept to the end).
  const chunked = lossChunk > 0 && lossChunk < tokens;
  const ids = 8; // token ids and targets, i32
  // The last hidden state, the final norm's output and rstd, and unchunked the logits.
  const tail = e * (2 * dim + (chunked ? 0 : config.vocabSize)) + 4;
  // Forward keeps every block's activations, or with checkpointing only each block's input (offloaded:
  // none) and the adapters' h; backward adds one block recomputed (its input back from the host pool).
  const blocksForward = options.checkpointing
    ? layers * ((offload ? 0 : e * dim) + lora)
    : layers * (core + lora);
  const blocks = options.checkpointing ? blocksForward + core - (offload ? 0 : e * dim) : blocksForward;
  const saved = ids + tail + blocks;
  // The first block of a LoRA or QLoRA model computes no input gradient (nothing below it trains).
  const inputGrad = mode === "full" || layers > 1;
  // Live at once in the last block's backward, with the incoming gradient: in the MLP d(act), d(gate) and
  // d(up) (dim + 3·hidden), then d(gate), d(up) and both d(norm) halves (3·dim + 2·hidden); in attention
  // d(x2), dq, dk, dv, d(norm1) and one projection's part (5·dim + 2·kvDim; 3·dim + 2·kvDim without the
  // input gradient). Each intermediate is freed as soon as the next op has it (lib/llama/model.ts).
  // The adapters' h of the layers whose backward has run by then are already freed.
  const freed = (m: TargetModule[]) =>
    mode === "full" ? 0 : rank * e * m.filter((t) => targets.includes(t)).length;
  const transient = Math.max(
    e * (dim + 3 * hid) - freed(["down_proj"]), // SwiGLU's backward: d(act), d(gate), d(up)
    e * (3 * dim + 2 * hid) - freed(["down_proj", "gate_proj"]), // up_proj's backward, d(act) freed
    inputGrad
      ? e * (5 * dim + 2 * kv) - freed(["down_proj", "gate_proj", "up_proj", "o_proj", "q_proj"])
      : e * (3 * dim + 2 * kv) - freed(["down_proj", "gate_proj", "up_proj", "o_proj"]),
  );
  // In chunks, the LM head's peak in forward: what forward keeps, the gradient of the final norm's output
  // and one chunk's rows of that output, their logits and their input gradient.
  const chunkPeak = chunked
    ? tokens * (ids + tail + blocksForward + e * dim) + lossChunk * e * (config.vocabSize + 2 * dim)
    : 0;
  bytes.activations = Math.max(tokens * (saved + transient), chunkPeak);
  // Workspace: the largest set live at one time.
  let workspace = chunked ? 8 * lossChunk : 4 * tokens; // the cross-entropy's f32 losses (and targets)
  if (mode !== "full") {
    for (const m of targets) {
      const dh = tokens * rank * e;
      let w = dh;
      if (mode === "qlora") {
        const q = { ...options, backend, dtype, rank };
        const forward = matmul4bitWorkspace(shapes[m], tokens, true, q);
        const noInput = !inputGrad && ["q_proj", "k_proj", "v_proj"].includes(m);
        w = Math.max(forward, noInput ? dh : dh + matmul4bitWorkspace(shapes[m], tokens, false, q));
      }
      workspace = Math.max(workspace, w);
    }
  }
  // The kernels' scratch, held for one call each.
  const scratch = nativeScratchBytes(config, {
    seq,
    batch,
    mode,
    backend,
    threads: options.threads,
    lossChunk,
  });
  bytes.workspace = Math.max(workspace, scratch);
  const peak = Object.values(bytes).reduce((a, b) => a + b, 0);
  const pageable = optimizer === "paged" ? states : 0;
  const pagePair = optimizer === "paged" ? Math.min(2 * (2 << 20), states) : 0;
  return {
    parameters: p.total + adapters,
    trainable,
    bytes,
    perTrainable: { gradients: e, optimizerStates: bytes.optimizer_states / trainable },
    activationsPerToken: { saved, transient },
    masterWeights: master * trainable,
    host: offload ? layers * tokens * e * dim : 0,
    pageable,
    peak,
    minimum: peak - pageable + pagePair,
  };
}

/**
 * The largest n in [1, limit] with `need(n) <= budget` for a `need` that grows with n, or 0 if even
 * `need(1)` is over (a bisection: the estimate is linear in tokens but for a step in the workspace).
 *
 * @example
 * ```ts
 * import { largestWithin } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(largestWithin((n) => 100 + 10 * n, 1000) === 90);
 * assert(largestWithin((n) => 100 + 10 * n, 1000, 50) === 50);
 * assert(largestWithin((n) => 100 + 10 * n, 50) === 0);
 * ```
 */
export function largestWithin(need: (n: number) => number, budget: number, limit = 2 ** 24): number {
  if (need(1) > budget) return 0;
  let lo = 1, hi = 1;
  while (hi < limit && need(hi) <= budget) lo = hi, hi = Math.min(2 * hi, limit);
  if (need(hi) <= budget) return hi;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (need(mid) <= budget) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * The longest sequence (at the given batch) whose estimated step peak fits `budget` bytes, or 0 if even
 * one token does not fit (not capped at the model's `maxSeq`).
 *
 * @example
 * ```ts
 * import { estimateMemory, LLAMA_CONFIGS, maxSequenceWithin } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const c = LLAMA_CONFIGS["7b"], gib6 = 6 * 2 ** 30;
 * assert(maxSequenceWithin(c, { mode: "full", batch: 1 }, gib6) === 0);
 * const seq = maxSequenceWithin(c, { mode: "qlora", batch: 1 }, gib6);
 * assert(estimateMemory(c, { mode: "qlora", batch: 1, seq }).peak <= gib6);
 * assert(estimateMemory(c, { mode: "qlora", batch: 1, seq: seq + 1 }).peak > gib6);
 * ```
 */
export function maxSequenceWithin(
  config: LlamaConfig,
  options: Omit<EstimateOptions, "seq">,
  budget: number,
): number {
  return largestWithin((seq) => estimateMemory(config, { ...options, seq }).peak, budget);
}
