/**
 * A decoder-only LLaMA model (token embedding, RMSNorm, rotary embeddings, causal grouped-query
 * attention, SwiGLU MLP, untied LM head, cross-entropy) trained one of three ways, one switch:
 *
 * - `full`: every weight trains (dW for all of them; the optimizer keeps Adam states for all).
 * - `lora`: a frozen 16-bit base; LoRA adapters on every linear layer of every block (as QLoRA found
 *   necessary); embeddings, norms and LM head frozen.
 * - `qlora`: the same with the block weights in NF4 with double quantization.
 *
 * The forward and backward passes are written out op by op, llm.c style; every buffer goes through the
 * ledger. Gradient checkpointing (per block) keeps only each block's input and recomputes the rest; with
 * offload those inputs wait in the host pool. The LM head and the loss run over chunks of tokens, so the
 * logits of a long sequence are never whole in memory.
 *
 * @module
 */

import { type Device, getDevice, HostTensor, Tensor } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import { Block, disposeSaved } from "./_llama_block.ts";
import { initial } from "./_llama_layers.ts";
import {
  checkConfig,
  defaultLossChunk,
  type LlamaConfig,
  type LlamaOptions,
  MODULE_PATHS,
  TARGET_MODULES,
  type TargetModule,
  type TrainMode,
} from "./llama_config.ts";
import {
  crossEntropy,
  embeddingBackward,
  embeddingForward,
  Linear,
  LoRALinear,
  rmsnormBackward,
  rmsnormForward,
  type RmsnormResult,
  type Trainable,
  zero,
} from "../nn/mod.ts";
import { type GenerateOptions, Generation, type Prompt } from "./generation.ts";
import type { KVCache } from "./kv_cache.ts";

/** What a forward keeps for backward. */
interface Pending {
  tokens: Tensor;
  /** Each block's input (disposed where offloaded). */
  inputs: Tensor[];
  /** With offloaded checkpoints, each block's input in the host pool. */
  parked: HostTensor[];
  final: RmsnormResult;
  /** The logits' gradient (all rows at once), or null where the loss ran in chunks. */
  logits: Tensor | null;
  /** The gradient of the final norm's output (the loss ran in chunks), or null. */
  dfinal: Tensor | null;
  /** The last block's output. */
  hidden: Tensor;
}

/**
 * A LLaMA model in one of three training modes.
 *
 * @example
 * ```ts
 * import { LlamaModel, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using model = new LlamaModel({ vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64,
 *   maxSeq: 16, normEps: 1e-5, ropeTheta: 10000 }, { mode: "lora", rank: 4 });
 * using tokens = Tensor.from(new Int32Array(16).map((_, i) => i % 64), { shape: [2, 8] });
 * using targets = Tensor.from(new Int32Array(16).map((_, i) => (i + 1) % 64), { shape: [2, 8] });
 * const loss = model.forward(tokens, targets);
 * model.backward();
 * assert(loss > 0 && model.trainables().length === 14);
 * ```
 */
export class LlamaModel implements Disposable {
  /** The shape. */
  readonly config: LlamaConfig;
  /** Training mode. */
  readonly mode: TrainMode;
  /** Weight and activation dtype. */
  readonly dtype: "f32" | "bf16";
  /** Device. */
  readonly device: Device;
  /** Whether blocks recompute their activations in backward. */
  checkpointing: boolean;
  /** With checkpointing, whether each block's saved input waits in the host pool until its recompute. */
  offloadCheckpoints: boolean;
  /** Rows of the LM head and the loss computed at a time (0: all at once). */
  lossChunk: number;
  readonly #embed: Tensor;
  readonly #blocks: Block[] = [];
  readonly #finalNorm: Tensor;
  readonly #lmHead: Linear;
  #embedGrad: Tensor | null = null;
  #finalNormGrad: Tensor | null = null;
  #pending: Pending | null = null;
  /** Batch and sequence of the last forward. */
  batch = 0;
  /** Sequence length of the last forward. */
  seq = 0;

  /** Builds the model with synthetic N(0, std²) weights (norm weights 1). */
  constructor(config: LlamaConfig, options: LlamaOptions = {}) {
    const c = { ...config };
    checkConfig(c);
    const mode = options.mode ?? "full";
    if (!["full", "lora", "qlora"].includes(mode)) {
      throw new InvalidArgumentError(`Cannot build a model: mode ${mode}`);
    }
    this.config = Object.freeze(c);
    this.mode = mode;
    this.dtype = options.dtype ?? "f32";
    this.device = options.device ?? getDevice();
    this.checkpointing = options.checkpointing ?? false;
    this.offloadCheckpoints = options.offloadCheckpoints ?? false;
    if (this.offloadCheckpoints && !this.checkpointing) {
      throw new InvalidArgumentError("Cannot build a model: offloadCheckpoints needs checkpointing");
    }
    this.lossChunk = options.lossChunk ?? defaultLossChunk(c, this.dtype);
    if (!Number.isSafeInteger(this.lossChunk) || this.lossChunk < 0) {
      throw new InvalidArgumentError(
        `Cannot build a model: lossChunk must be an integer >= 0 (0: all rows at once), got ${this.lossChunk}`,
      );
    }
    const o = {
      mode,
      dtype: this.dtype,
      rank: options.rank ?? 8,
      alpha: options.alpha ?? 16,
      loraDropout: options.loraDropout ?? 0,
      targetModules: options.targetModules ?? TARGET_MODULES,
      checkpointing: this.checkpointing,
      std: options.std ?? 0.02,
      seed: options.seed ?? 0,
    };
    const device = this.device, dtype = this.dtype;
    const w = options.weights;
    this.#embed = initial(
      w,
      "model.embed_tokens.weight",
      [c.vocabSize, c.dim],
      () =>
        Tensor.randn([c.vocabSize, c.dim], {
          std: o.std,
          seed: o.seed + 7,
          dtype,
          device,
          category: "weights",
        }),
      dtype,
      device,
      "weights",
    );
    try {
      for (let i = 0; i < c.layers; i++) this.#blocks.push(new Block(this, i, { ...o, weights: w }));
      this.#finalNorm = initial(
        w,
        "model.norm.weight",
        [c.dim],
        () => Tensor.from(new Float32Array(c.dim).fill(1), { dtype, category: "weights", device }),
        dtype,
        device,
        "weights",
      );
      this.#lmHead = new Linear(c.dim, c.vocabSize, {
        dtype,
        std: o.std,
        seed: o.seed + 11,
        device,
        trainable: mode === "full",
      });
      const head = w?.("lm_head.weight", [c.vocabSize, c.dim]);
      if (head) {
        using t = Tensor.from(head, { shape: [c.vocabSize, c.dim], dtype, device, category: "workspace" });
        this.#lmHead.weight.copyFrom(t);
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** All weights. */
  get parameters(): number {
    const c = this.config, hd = c.dim / c.heads;
    const block = 2 * c.dim + c.dim * (c.heads * hd) * 2 + 2 * c.dim * (c.kvHeads * hd) +
      3 * c.dim * c.hiddenDim;
    return 2 * c.vocabSize * c.dim + c.dim + c.layers * block + this.#adapterParameters();
  }

  #adapterParameters(): number {
    return this.#blocks.reduce(
      (s, b) =>
        s +
        Object.values(b.proj).reduce((t, l) => t + (l instanceof LoRALinear ? l.trainableParameters : 0), 0),
      0,
    );
  }

  /** Weights the optimizer trains. */
  get trainableParameters(): number {
    return this.trainables().reduce((s, t) => s + t.value.numel, 0);
  }

  /** What an optimizer trains in this mode. */
  trainables(): Trainable[] {
    const list = this.#blocks.flatMap((b) => b.trainables());
    if (this.mode === "full") {
      const e = () => this.#embedGrad, f = () => this.#finalNormGrad;
      list.unshift({
        name: "embed_tokens",
        value: this.#embed,
        get grad() {
          return e();
        },
      });
      list.push({
        name: "norm",
        value: this.#finalNorm,
        get grad() {
          return f();
        },
      });
      list.push(...this.#lmHead.trainables());
    }
    return list;
  }

  /**
   * The base weights by Hugging Face name, as f32 host arrays (an NF4 base is dequantized; adapters are
   * not included: see saveCheckpoint). For saving a pretrained model and loading it as the base of a
   * LoRA or QLoRA run.
   */
  namedWeights(): Map<string, { shape: number[]; values: Float32Array }> {
    const out = new Map<string, { shape: number[]; values: Float32Array }>();
    for (const [name, t] of this.weights()) out.set(name, { shape: [...t.shape], values: t.toFloat32() });
    return out;
  }

  /**
   * Every base weight by Hugging Face name, one at a time, in the order of a checkpoint: a LoRA layer's
   * merged weight while merged, an NF4 base dequantized into a temporary tensor (valid until the next
   * iteration). For streaming exports that never hold more than one weight in 16 bits.
   *
   * @example
   * ```ts
   * import { LlamaModel } from "../../mod.ts";
   * import { assertEquals } from "@std/assert";
   * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
   *   normEps: 1e-5, ropeTheta: 10000 };
   * using model = new LlamaModel(config, { mode: "qlora", rank: 2 });
   * const names = [...model.weights()].map(([name]) => name);
   * assertEquals([names.length, names[0], names.at(-1)], [12, "model.embed_tokens.weight", "lm_head.weight"]);
   * ```
   */
  *weights(): Generator<[string, Tensor]> {
    yield ["model.embed_tokens.weight", this.#embed];
    for (let i = 0; i < this.#blocks.length; i++) {
      const b = this.#blocks[i], prefix = `model.layers.${i}`;
      yield [`${prefix}.input_layernorm.weight`, b.attnNorm];
      for (const name of TARGET_MODULES.slice(0, 4)) yield* this.#projWeight(b, prefix, name);
      yield [`${prefix}.post_attention_layernorm.weight`, b.mlpNorm];
      for (const name of TARGET_MODULES.slice(4)) yield* this.#projWeight(b, prefix, name);
    }
    yield ["model.norm.weight", this.#finalNorm];
    yield ["lm_head.weight", this.#lmHead.weight];
  }

  *#projWeight(b: Block, prefix: string, name: TargetModule): Generator<[string, Tensor]> {
    const layer = b.proj[name], key = `${prefix}.${MODULE_PATHS[name]}.weight`;
    if (layer instanceof Linear) yield [key, layer.weight];
    else if (layer.mergedWeight) yield [key, layer.mergedWeight];
    else if (layer.base) yield [key, layer.base];
    else {
      using w = layer.quantized!.dequantize({ dtype: "f32", category: "workspace" });
      yield [key, w];
    }
  }

  /** Merges every LoRA layer's adapters into its weight (see `LoRALinear.merge`); `unmerge` undoes it. */
  merge(): void {
    for (const b of this.#blocks) {
      for (const l of Object.values(b.proj)) if (l instanceof LoRALinear) l.merge();
    }
  }

  /** Undoes {@linkcode LlamaModel.merge}. */
  unmerge(): void {
    for (const b of this.#blocks) {
      for (const l of Object.values(b.proj)) if (l instanceof LoRALinear) l.unmerge();
    }
  }

  /**
   * The gradients of the base weights by Hugging Face name, as f32 host arrays: every weight in full mode
   * (after `backward`), none in LoRA and QLoRA modes (their gradients are the adapters'). For checks
   * against other implementations.
   */
  namedGradients(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    const put = (name: string, t: Tensor | null) => t && out.set(name, t.toFloat32());
    put("model.embed_tokens.weight", this.#embedGrad);
    this.#blocks.forEach((b, i) => {
      const prefix = `model.layers.${i}`;
      put(`${prefix}.input_layernorm.weight`, b.attnNormGrad);
      put(`${prefix}.post_attention_layernorm.weight`, b.mlpNormGrad);
      for (const name of TARGET_MODULES) {
        const layer = b.proj[name];
        if (layer instanceof Linear) put(`${prefix}.${MODULE_PATHS[name]}.weight`, layer.grad);
      }
    });
    put("model.norm.weight", this.#finalNormGrad);
    if (this.mode === "full") put("lm_head.weight", this.#lmHead.grad);
    return out;
  }

  /**
   * The logits of every position of `tokens` (i32 `[batch, seq]`): a `[batch * seq, vocab]` tensor in the
   * model's dtype, which the caller disposes. Keeps nothing for backward.
   *
   * @example
   * ```ts
   * import { LlamaModel, Tensor } from "../../mod.ts";
   * import { assertEquals } from "@std/assert";
   * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
   *   normEps: 1e-5, ropeTheta: 10000 };
   * using model = new LlamaModel(config, { mode: "lora", rank: 2 });
   * using tokens = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
   * using logits = model.logits(tokens);
   * assertEquals(logits.shape, [3, 16]);
   * ```
   */
  logits(tokens: Tensor): Tensor {
    // A forward with every target ignored: the loss is 0 and the logits are left as they are.
    using ignored = Tensor.from(new Int32Array(tokens.numel).fill(-1), {
      shape: [...tokens.shape],
      device: this.device,
      category: "workspace",
    });
    this.#forward(tokens, ignored, false, 0); // every row's logits at once: they are the result
    const p = this.#pending!;
    const logits = p.logits!;
    p.logits = null;
    this.#release();
    return logits;
  }

  /**
   * Runs new tokens (i32 `[batch, tokens]`, on the model's device) through the model with a key/value cache,
   * for generation: each block appends the tokens' keys and values to `cache` (growing it where it may)
   * and attends over everything cached; keeps nothing for backward. Returns the logits
   * `[batch · tokens, vocab]` in the model's dtype, or with `lastOnly` those of each sequence's last new
   * token, `[batch, vocab]` (a prompt's prefill needs no others). The caller disposes them.
   *
   * @example
   * ```ts
   * import { KVCache, LlamaModel, Tensor } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
   *   normEps: 1e-5, ropeTheta: 10000 };
   * using model = new LlamaModel(config, { mode: "qlora", rank: 2 });
   * using tokens = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
   * using cache = new KVCache(config, { capacity: 8 });
   * using full = model.logits(tokens);
   * using prefill = model.infer(tokens, cache); // the same logits, now with 3 rows cached
   * const [a, b] = [full.toFloat32(), prefill.toFloat32()];
   * assert(cache.length === 3 && a.every((v, i) => Math.abs(v - b[i]) < 1e-5));
   * ```
   */
  infer(tokens: Tensor, cache: KVCache, options: { lastOnly?: boolean } = {}): Tensor {
    const what = "run the model over a cache";
    const c = this.config, k = cache.config;
    if (tokens.dtype !== "i32" || tokens.shape.length !== 2 || tokens.shape[0] !== cache.batch) {
      throw new InvalidArgumentError(`Cannot ${what}: tokens must be i32 [${cache.batch}, tokens]`);
    }
    if (
      k.layers !== c.layers || k.dim !== c.dim || k.heads !== c.heads || k.kvHeads !== c.kvHeads ||
      cache.dtype !== this.dtype || cache.device !== this.device
    ) {
      throw new InvalidArgumentError(
        `Cannot ${what}: the cache is for another shape, dtype or device (${cache.dtype}, ${k.layers} layers)`,
      );
    }
    const n = tokens.shape[1];
    cache.reserve(cache.length + n);
    using positions = Tensor.from(cache.positions(n), { device: this.device, category: "workspace" });
    let x = embeddingForward(tokens, this.#embed);
    try {
      for (let i = 0; i < this.#blocks.length; i++) {
        const y = this.#blocks[i].infer(x, cache, i, { tokens: n, positions });
        x.dispose();
        x = y;
      }
      cache.advance(n);
      if (options.lastOnly && n > 1) {
        // Each sequence's last row, gathered as an embedding lookup with x as the table.
        const last = Int32Array.from({ length: cache.batch }, (_, b) => b * n + n - 1);
        using rows = Tensor.from(last, { device: this.device, category: "workspace" });
        const y = embeddingForward(rows, x);
        x.dispose();
        x = y;
      }
      const final = rmsnormForward(x, this.#finalNorm, c.normEps);
      using out = final.out, _rstd = final.rstd;
      return this.#lmHead.infer(out);
    } finally {
      x.dispose();
    }
  }

  /**
   * Generates text: prefills the prompts' tokens into a key/value cache, then decodes one token per step,
   * as an async iterator of steps (see {@linkcode Generation}); greedy by default, sampled with a
   * temperature, top-k, top-p, a repetition penalty and a seed. Several prompts run as one batch, padded on
   * the left. Works in every mode (an NF4 base decodes through the fused 4-bit GEMV at batch 1).
   *
   * @example
   * ```ts
   * import { LlamaModel } from "../../mod.ts";
   * import { assertEquals } from "@std/assert";
   * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 16,
   *   normEps: 1e-5, ropeTheta: 10000 };
   * using model = new LlamaModel(config, { mode: "lora", rank: 2, std: 0.5 });
   * const tokens: number[] = [];
   * for await (const step of model.generate([1, 2, 3], { maxNewTokens: 4 })) tokens.push(step.token);
   * assertEquals(tokens.length, 4);
   * ```
   */
  generate(prompts: Prompt | readonly Prompt[], options: GenerateOptions = {}): Generation {
    return new Generation(this, prompts, options);
  }

  /** The linear layers of block i, by name (for reports, merging and adapters). */
  block(i: number): Readonly<Record<TargetModule, Linear | LoRALinear>> {
    return this.#blocks[i].proj;
  }

  /**
   * The mean cross-entropy of predicting `targets` from `tokens` (both i32 `[batch, seq]`, -1 targets
   * ignored). Keeps what backward needs; the gradient of the logits is computed here (fused, as llm.c), and
   * where the rows are more than {@linkcode LlamaModel.lossChunk}, the LM head's backward too, chunk by
   * chunk, so that only the gradient of the final norm's output waits for backward.
   */
  forward(tokens: Tensor, targets: Tensor, options: { backward?: boolean } = {}): number {
    return this.#forward(tokens, targets, options.backward ?? true, this.lossChunk);
  }

  #forward(tokens: Tensor, targets: Tensor, backward: boolean, lossChunk: number): number {
    if (tokens.shape.length !== 2 || targets.shape.join() !== tokens.shape.join()) {
      throw new InvalidArgumentError(
        "Cannot run the model: tokens and targets must be i32 [batch, seq] of one shape",
      );
    }
    const [batch, seq] = tokens.shape;
    if (seq > this.config.maxSeq) {
      throw new InvalidArgumentError(`Cannot run the model: seq ${seq} > maxSeq ${this.config.maxSeq}`);
    }
    this.#release();
    this.batch = batch;
    this.seq = seq;
    const offload = this.checkpointing && this.offloadCheckpoints;
    const inputs: Tensor[] = [], parked: HostTensor[] = [];
    const made: Tensor[] = []; // freed if anything fails (out of memory, a bad target)
    try {
      let x = embeddingForward(tokens, this.#embed);
      made.push(x);
      for (const block of this.#blocks) {
        inputs.push(x);
        const y = block.forward(x);
        made.push(y);
        if (this.checkpointing) disposeSaved(block.saved, true), block.saved = null;
        if (offload) parked.push(HostTensor.from(x)), x.dispose(); // back on the device for its recompute
        x = y;
      }
      const final = rmsnormForward(x, this.#finalNorm, this.config.normEps);
      made.push(final.out, final.rstd);
      const rows = batch * seq;
      if (lossChunk === 0 || rows <= lossChunk) {
        const logits = this.#lmHead.forward(final.out);
        made.push(logits);
        const { loss } = crossEntropy(logits, targets, backward);
        this.#pending = { tokens, inputs, parked, final, logits, dfinal: null, hidden: x };
        return loss;
      }
      const { loss, dfinal } = this.#chunkedLoss(final.out, targets, backward, lossChunk);
      if (dfinal) made.push(dfinal);
      this.#pending = { tokens, inputs, parked, final, logits: null, dfinal, hidden: x };
      return loss;
    } catch (e) {
      for (const t of made) if (!t.disposed) t.dispose();
      for (const h of parked) h.dispose();
      this.#release();
      throw e;
    }
  }

  /**
   * The LM head and the cross-entropy over `chunk` rows at a time: each chunk's logits are made, turned into
   * their gradient and, with `backward`, sent through the LM head's backward (dW added for a trained head)
   * before the next chunk; returns the mean loss over every counted row and d(final norm output).
   */
  #chunkedLoss(
    h: Tensor,
    targets: Tensor,
    backward: boolean,
    chunk: number,
  ): { loss: number; dfinal: Tensor | null } {
    const rows = h.shape[0];
    const host = targets.toArray() as Int32Array;
    const counted = host.reduce((c, t) => c + (t === -1 ? 0 : 1), 0);
    const dfinal = backward ? Tensor.empty(h.shape, { dtype: h.dtype, device: h.device }) : null;
    let sum = 0;
    try {
      for (let r = 0; r < rows; r += chunk) {
        const n = Math.min(chunk, rows - r);
        using x = h.rows(r, r + n);
        using t = Tensor.from(host.subarray(r, r + n), { device: h.device, category: "workspace" });
        using logits = this.#lmHead.forward(x);
        sum += crossEntropy(logits, t, backward, { counted }).loss * counted;
        if (!dfinal) continue;
        using dx = this.#lmHead.backward(logits);
        dfinal.setRows(r, dx);
      }
    } catch (e) {
      this.#lmHead.releaseActivations();
      dfinal?.dispose();
      throw e;
    }
    this.#lmHead.releaseActivations();
    return { loss: counted ? sum / counted : 0, dfinal };
  }

  /** Gradients of the last forward's loss: adds into every trainable's gradient. */
  backward(): void {
    const p = this.#pending;
    if (!p) throw new InvalidArgumentError("Cannot run the model backward: call forward first");
    const full = this.mode === "full";
    let d: Tensor | null = null;
    try {
      if (p.dfinal) d = p.dfinal, p.dfinal = null; // the chunked LM head's backward ran in forward
      else d = this.#lmHead.backward(p.logits!);
      if (full) {
        this.#finalNormGrad ??= Tensor.zeros([this.config.dim], {
          dtype: this.dtype,
          category: "gradients",
          device: this.device,
        });
      }
      const dh = rmsnormBackward(
        d,
        p.hidden,
        this.#finalNorm,
        p.final.rstd,
        full ? this.#finalNormGrad : null,
      );
      d.dispose();
      d = dh;
      for (let i = this.#blocks.length - 1; i >= 0; i--) {
        const block = this.#blocks[i];
        // An offloaded input comes back from the host pool for its block's recompute and goes after.
        using restored = p.parked.length ? p.parked[i].toDevice() : null;
        if (this.checkpointing) block.recompute(restored ?? p.inputs[i]).dispose(); // same masks
        // Frozen embeddings (lora, qlora): nothing needs the gradient of the first block's input.
        const dx: Tensor | null = block.backward(d, true, full || i > 0);
        d.dispose();
        d = dx;
        if (p.parked.length) p.parked[i].dispose();
        if (!d) break;
      }
      if (full) {
        this.#embedGrad ??= Tensor.zeros(this.#embed.shape, {
          dtype: this.dtype,
          category: "gradients",
          device: this.device,
        });
        embeddingBackward(p.tokens, d!, this.#embedGrad);
      }
    } finally {
      // Success or failure: the activations go, and the last gradient with them.
      if (d && !d.disposed) d.dispose();
      this.#release();
    }
  }

  /** The next backward overwrites gradients (layers) or starts from zero (norms, embeddings). */
  zeroGrad(): void {
    for (const b of this.#blocks) b.zeroGrad();
    this.#lmHead.zeroGrad();
    if (this.#embedGrad) zero(this.#embedGrad);
    if (this.#finalNormGrad) zero(this.#finalNormGrad);
  }

  /** Frees what the last forward kept for backward (after an evaluation-only forward). */
  releaseActivations(): void {
    this.#release();
  }

  #release(): void {
    const p = this.#pending;
    if (p) {
      for (const t of [...p.inputs, p.final.out, p.final.rstd, p.logits, p.dfinal, p.hidden]) {
        if (t && !t.disposed) t.dispose();
      }
      for (const h of p.parked) h.dispose();
    }
    for (const b of this.#blocks) b.releaseActivations(true);
    this.#pending = null;
  }

  /** Frees every buffer. */
  dispose(): void {
    this.#release();
    for (const b of this.#blocks) b.dispose();
    this.#embed?.dispose();
    this.#finalNorm?.dispose();
    this.#lmHead?.dispose();
    this.#embedGrad?.dispose();
    this.#finalNormGrad?.dispose();
  }

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
