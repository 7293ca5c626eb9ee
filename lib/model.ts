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
 * ledger. Gradient checkpointing (per block) keeps only each block's input and recomputes the rest.
 *
 * @module
 */

import type { Device } from "./device.ts";
import { getDevice } from "./device.ts";
import { InvalidArgumentError } from "./errors.ts";
import { Linear, LoRALinear, type Trainable } from "./lora.ts";
import {
  attentionBackward,
  attentionForward,
  type AttentionResult,
  crossEntropy,
  embeddingBackward,
  embeddingForward,
  rmsnormBackward,
  rmsnormForward,
  type RmsnormResult,
  rope,
  swigluBackward,
  swigluForward,
  zero,
} from "./model_ops.ts";
import { axpby } from "./ops.ts";
import { fillOrDispose, Tensor } from "./tensor.ts";
import { readSafetensors, SafetensorsReader, writeSafetensors } from "./safetensors.ts";
import { bf16ToF32, f16ToF32 } from "./dtype.ts";

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
 * shapes of LLaMA-2 for memory experiments with synthetic weights (override `layers` to measure a few
 * real-size blocks).
 */
export const LLAMA_CONFIGS: Readonly<Record<"tiny" | "7b" | "13b" | "70b", LlamaConfig>> = {
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
 * import { MODULE_PATHS } from "../mod.ts";
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

function initial(
  source: WeightSource | undefined,
  name: string,
  shape: number[],
  make: () => Tensor,
  dtype: "f32" | "bf16",
  device: Device,
  category: "weights" | "workspace",
): Tensor {
  const values = source?.(name, shape);
  if (!values) return make();
  if (values.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new InvalidArgumentError(
      `Cannot load ${name}: ${values.length} values, expected [${shape.join(", ")}]`,
    );
  }
  return Tensor.from(values, { shape, dtype, device, category });
}

type Proj = Linear | LoRALinear;

/** What a block keeps from forward for backward. */
interface BlockSaved {
  x: Tensor;
  n1: RmsnormResult;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  att: AttentionResult;
  x2: Tensor;
  n2: RmsnormResult;
  gate: Tensor;
  up: Tensor;
  act: Tensor;
}

function disposeSaved(s: BlockSaved | null, keepInput: boolean): void {
  if (!s) return;
  for (
    const t of [
      s.n1.out,
      s.n1.rstd,
      s.q,
      s.k,
      s.v,
      s.att.out,
      s.att.lse,
      s.x2,
      s.n2.out,
      s.n2.rstd,
      s.gate,
      s.up,
      s.act,
    ]
  ) {
    t.dispose();
  }
  if (!keepInput) s.x.dispose();
}

/** One decoder block: attention and MLP, each behind an RMSNorm, with residual connections. */
class Block {
  readonly attnNorm: Tensor;
  readonly mlpNorm: Tensor;
  readonly proj: Record<TargetModule, Proj>;
  attnNormGrad: Tensor | null = null;
  mlpNormGrad: Tensor | null = null;
  saved: BlockSaved | null = null;

  constructor(
    readonly model: LlamaModel,
    index: number,
    options: Required<Omit<LlamaOptions, "device" | "weights">> & { weights?: WeightSource },
  ) {
    const c = model.config, dtype = model.dtype, device = model.device;
    const hd = c.dim / c.heads;
    const shapes: Record<TargetModule, [number, number]> = {
      q_proj: [c.heads * hd, c.dim],
      k_proj: [c.kvHeads * hd, c.dim],
      v_proj: [c.kvHeads * hd, c.dim],
      o_proj: [c.dim, c.heads * hd],
      gate_proj: [c.hiddenDim, c.dim],
      up_proj: [c.hiddenDim, c.dim],
      down_proj: [c.dim, c.hiddenDim],
    };
    const ones = new Float32Array(c.dim).fill(1);
    const frozen = model.mode !== "full";
    const prefix = `model.layers.${index}`;
    const norm = (name: string) =>
      initial(
        options.weights,
        `${prefix}.${name}.weight`,
        [c.dim],
        () => Tensor.from(ones, { dtype, category: "weights", device }),
        dtype,
        device,
        "weights",
      );
    // Whatever is made before a failure (out of memory, a bad weight) is freed before the error propagates.
    const made: { dispose(): void }[] = [];
    const proj = {} as Record<TargetModule, Proj>;
    try {
      made.push(this.attnNorm = norm("input_layernorm"));
      made.push(this.mlpNorm = norm("post_attention_layernorm"));
      TARGET_MODULES.forEach((name, j) => {
        const [out, inp] = shapes[name];
        const seed = options.seed + 1000 * index + j;
        const wname = `${prefix}.${MODULE_PATHS[name]}.weight`;
        if (frozen && options.targetModules.includes(name)) {
          using w = initial(
            options.weights,
            wname,
            [out, inp],
            () => Tensor.randn([out, inp], { std: options.std, seed, dtype, device, category: "workspace" }),
            dtype,
            device,
            "workspace",
          );
          proj[name] = LoRALinear.fromWeight(w, {
            rank: options.rank,
            alpha: options.alpha,
            dropout: options.loraDropout,
            base: model.mode === "qlora" ? "nf4" : dtype,
            computeDtype: dtype,
            seed,
          });
        } else {
          const layer = new Linear(inp, out, { dtype, std: options.std, seed, device, trainable: !frozen });
          proj[name] = layer;
          const values = options.weights?.(wname, [out, inp]);
          if (values) {
            using w = initial(
              () => values,
              wname,
              [out, inp],
              () => layer.weight,
              dtype,
              device,
              "workspace",
            );
            layer.weight.copyFrom(w);
          }
        }
      });
    } catch (e) {
      for (const t of [...made, ...Object.values(proj)]) t.dispose();
      throw e;
    }
    this.proj = proj;
  }

  get headShape() {
    const c = this.model.config;
    return {
      batch: this.model.batch,
      seq: this.model.seq,
      heads: c.heads,
      kvHeads: c.kvHeads,
      headDim: c.dim / c.heads,
    };
  }

  /** x -> x + attn(norm(x)) -> ... + mlp(norm(...)). Keeps what backward needs; returns the output. */
  /** Each LoRA layer's dropout step before the last forward, so that a recomputation draws the same masks. */
  #dropoutSteps = new Map<TargetModule, number>();

  /**
   * The forward again, for gradient checkpointing's backward: the LoRA layers' dropout steps are set back
   * first, so the recomputed activations use the masks of the forward whose loss is differentiated.
   */
  recompute(x: Tensor): Tensor {
    for (const [name, step] of this.#dropoutSteps) (this.proj[name] as LoRALinear).dropoutStep = step;
    return this.forward(x);
  }

  forward(x: Tensor): Tensor {
    const c = this.model.config, p = this.proj, s = this.headShape;
    for (const [name, l] of Object.entries(p)) {
      if (l instanceof LoRALinear) this.#dropoutSteps.set(name as TargetModule, l.dropoutStep);
    }
    const made: Tensor[] = []; // freed if anything fails: a failed forward leaves nothing counted
    const keep = <T extends Tensor>(t: T): T => (made.push(t), t);
    try {
      const n1 = rmsnormForward(x, this.attnNorm, c.normEps);
      made.push(n1.out, n1.rstd);
      const q = keep(p.q_proj.forward(n1.out)), k = keep(p.k_proj.forward(n1.out));
      const v = keep(p.v_proj.forward(n1.out));
      rope(q, s, c.ropeTheta, false);
      rope(k, { ...s, heads: c.kvHeads }, c.ropeTheta, false);
      const att = attentionForward(q, k, v, s);
      made.push(att.out, att.lse);
      const x2 = keep(p.o_proj.forward(att.out));
      axpby(1, x, 1, x2); // x2 = x + o
      const n2 = rmsnormForward(x2, this.mlpNorm, c.normEps);
      made.push(n2.out, n2.rstd);
      const gate = keep(p.gate_proj.forward(n2.out)), up = keep(p.up_proj.forward(n2.out));
      const act = keep(swigluForward(gate, up));
      const out = keep(p.down_proj.forward(act));
      axpby(1, x2, 1, out); // out = x2 + mlp
      this.saved = { x, n1, q, k, v, att, x2, n2, gate, up, act };
      return out;
    } catch (e) {
      for (const t of made) t.dispose();
      this.releaseActivations(false);
      throw e;
    }
  }

  /** Frees what forward kept (the block's and its layers'); the input too unless `keepInput`. */
  releaseActivations(keepInput: boolean): void {
    disposeSaved(this.saved, keepInput);
    this.saved = null;
    for (const l of Object.values(this.proj)) l.releaseActivations();
  }

  /**
   * From d(out) to d(x); adds weight gradients. Frees the saved activations (also when it fails). With
   * `inputGrad` false (nothing upstream trains: frozen embeddings, frozen norms) it stops at the q, k, v
   * projections' parameter gradients and returns null.
   */
  backward(dout: Tensor, keepInput: boolean, inputGrad = true): Tensor | null {
    const s = this.saved;
    if (!s) throw new InvalidArgumentError("Cannot run a block backward: call forward first");
    const train = this.model.mode === "full";
    if (!inputGrad && train) {
      throw new InvalidArgumentError("Cannot skip a block's input gradient in full mode: its norms train");
    }
    try {
      return this.#backward(dout, s, inputGrad);
    } finally {
      this.releaseActivations(keepInput);
    }
  }

  #backward(dout: Tensor, s: BlockSaved, inputGrad: boolean): Tensor | null {
    const c = this.model.config, p = this.proj, hs = this.headShape;
    const train = this.model.mode === "full";
    // Each intermediate lives in the smallest scope that needs it (freed there on success or failure), so
    // the peak is that of the plain sequence of ops: dact goes before gate_proj's backward, dn2 before the
    // attention, dq, dk and dv before the first norm's backward.
    if (train) {
      this.mlpNormGrad ??= Tensor.zeros(this.mlpNorm.shape, {
        dtype: this.mlpNorm.dtype,
        category: "gradients",
        device: this.model.device,
      });
      this.attnNormGrad ??= Tensor.zeros(this.attnNorm.shape, {
        dtype: this.attnNorm.dtype,
        category: "gradients",
        device: this.model.device,
      });
    }
    // MLP
    using dx2 = (() => {
      using dn2 = (() => {
        const g = (() => {
          using dact = p.down_proj.backward(dout);
          return swigluBackward(dact, s.gate, s.up);
        })();
        using dgate = g.dgate, dup = g.dup;
        const dn2 = p.gate_proj.backward(dgate);
        return fillOrDispose(dn2, () => {
          using dn2u = p.up_proj.backward(dup);
          axpby(1, dn2u, 1, dn2);
        });
      })();
      return rmsnormBackward(dn2, s.x2, this.mlpNorm, s.n2.rstd, train ? this.mlpNormGrad : null);
    })();
    axpby(1, dout, 1, dx2); // the residual
    // attention
    const g = (() => {
      using datt = p.o_proj.backward(dx2);
      return attentionBackward(datt, s.q, s.k, s.v, s.att, hs);
    })();
    const dn1 = (() => {
      using dq = g.dq, dk = g.dk, dv = g.dv;
      rope(dq, hs, c.ropeTheta, true);
      rope(dk, { ...hs, heads: c.kvHeads }, c.ropeTheta, true);
      if (!inputGrad) {
        for (const [layer, d] of [[p.q_proj, dq], [p.k_proj, dk], [p.v_proj, dv]] as const) {
          layer.backward(d, { inputGrad: false });
        }
        return null;
      }
      const dn1 = p.q_proj.backward(dq);
      return fillOrDispose(dn1, () => {
        for (const [layer, d] of [[p.k_proj, dk], [p.v_proj, dv]] as const) {
          using part = layer.backward(d);
          axpby(1, part, 1, dn1);
        }
      });
    })();
    if (!dn1) return null;
    using dn1Scope = dn1;
    const dx = rmsnormBackward(dn1Scope, s.x, this.attnNorm, s.n1.rstd, train ? this.attnNormGrad : null);
    return fillOrDispose(dx, () => axpby(1, dx2, 1, dx));
  }

  trainables(): Trainable[] {
    const list = Object.values(this.proj).flatMap((l) => l.trainables());
    if (this.model.mode === "full") {
      const a = () => this.attnNormGrad, m = () => this.mlpNormGrad;
      list.push({
        name: "attn_norm",
        value: this.attnNorm,
        get grad() {
          return a();
        },
      });
      list.push({
        name: "mlp_norm",
        value: this.mlpNorm,
        get grad() {
          return m();
        },
      });
    }
    return list;
  }

  zeroGrad(): void {
    for (const l of Object.values(this.proj)) l.zeroGrad();
    if (this.attnNormGrad) zero(this.attnNormGrad);
    if (this.mlpNormGrad) zero(this.mlpNormGrad);
  }

  dispose(): void {
    disposeSaved(this.saved, true);
    this.saved = null;
    for (const l of Object.values(this.proj)) l.dispose();
    for (const t of [this.attnNorm, this.mlpNorm, this.attnNormGrad, this.mlpNormGrad]) t?.dispose();
  }
}

/**
 * A LLaMA model in one of three training modes.
 *
 * @example
 * ```ts
 * import { LlamaModel, Tensor } from "../mod.ts";
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
  readonly #embed: Tensor;
  readonly #blocks: Block[] = [];
  readonly #finalNorm: Tensor;
  readonly #lmHead: Linear;
  #embedGrad: Tensor | null = null;
  #finalNormGrad: Tensor | null = null;
  #pending:
    | { tokens: Tensor; inputs: Tensor[]; final: RmsnormResult; logits: Tensor; hidden: Tensor }
    | null = null;
  /** Batch and sequence of the last forward. */
  batch = 0;
  /** Sequence length of the last forward. */
  seq = 0;

  /** Builds the model with synthetic N(0, std²) weights (norm weights 1). */
  constructor(config: LlamaConfig, options: LlamaOptions = {}) {
    const c = { ...config };
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
    const mode = options.mode ?? "full";
    if (!["full", "lora", "qlora"].includes(mode)) {
      throw new InvalidArgumentError(`Cannot build a model: mode ${mode}`);
    }
    this.config = Object.freeze(c);
    this.mode = mode;
    this.dtype = options.dtype ?? "f32";
    this.device = options.device ?? getDevice();
    this.checkpointing = options.checkpointing ?? false;
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
   * import { LlamaModel } from "../mod.ts";
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
   * import { LlamaModel, Tensor } from "../mod.ts";
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
    this.forward(tokens, ignored, { backward: false });
    try {
      return this.#pending!.logits.clone();
    } finally {
      this.#release();
    }
  }

  /** The linear layers of block i, by name (for reports, merging and adapters). */
  block(i: number): Readonly<Record<TargetModule, Linear | LoRALinear>> {
    return this.#blocks[i].proj;
  }

  /**
   * The mean cross-entropy of predicting `targets` from `tokens` (both i32 `[batch, seq]`, -1 targets
   * ignored). Keeps what backward needs; the gradient of the logits is computed here (fused, as llm.c).
   */
  forward(tokens: Tensor, targets: Tensor, options: { backward?: boolean } = {}): number {
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
    const inputs: Tensor[] = [];
    const made: Tensor[] = []; // freed if anything fails (out of memory, a bad target)
    try {
      let x = embeddingForward(tokens, this.#embed);
      made.push(x);
      for (const block of this.#blocks) {
        inputs.push(x);
        const y = block.forward(x);
        made.push(y);
        if (this.checkpointing) disposeSaved(block.saved, true), block.saved = null;
        x = y;
      }
      const final = rmsnormForward(x, this.#finalNorm, this.config.normEps);
      made.push(final.out, final.rstd);
      const logits = this.#lmHead.forward(final.out);
      made.push(logits);
      const { loss } = crossEntropy(logits, targets, options.backward ?? true);
      this.#pending = { tokens, inputs, final, logits, hidden: x };
      return loss;
    } catch (e) {
      for (const t of made) if (!t.disposed) t.dispose();
      this.#release();
      throw e;
    }
  }

  /** Gradients of the last forward's loss: adds into every trainable's gradient. */
  backward(): void {
    const p = this.#pending;
    if (!p) throw new InvalidArgumentError("Cannot run the model backward: call forward first");
    const full = this.mode === "full";
    let d: Tensor | null = null;
    try {
      d = this.#lmHead.backward(p.logits);
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
        if (this.checkpointing) block.recompute(p.inputs[i]).dispose(); // this block's activations, same masks
        // Frozen embeddings (lora, qlora): nothing needs the gradient of the first block's input.
        const dx: Tensor | null = block.backward(d, true, full || i > 0);
        d.dispose();
        d = dx;
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
      for (const t of [...p.inputs, p.final.out, p.final.rstd, p.logits, p.hidden]) {
        if (!t.disposed) t.dispose();
      }
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

/**
 * Saves a model's base weights (f32, Hugging Face names) to a safetensors file, with its config in the
 * metadata.
 *
 * @example
 * ```ts
 * import { LlamaModel, readSafetensors, saveWeights } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config);
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * try {
 *   await saveWeights(model, path);
 *   const file = await readSafetensors(path);
 *   assertEquals(file.size, 12); // embedding, 2 norms + 7 linears of the block, final norm, LM head
 *   assertEquals(file.get("model.layers.0.self_attn.q_proj.weight")!.info.shape, [32, 32]);
 * } finally {
 *   await Deno.remove(path);
 * }
 * ```
 */
export async function saveWeights(model: LlamaModel, path: string): Promise<void> {
  const tensors = [...model.namedWeights()].map(([name, t]) => ({
    name,
    dtype: "F32" as const,
    shape: t.shape,
    data: new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength),
  }));
  await writeSafetensors(path, tensors, { config: JSON.stringify(model.config), rope: ROPE_LAYOUT });
}

/**
 * How this library's RoPE pairs the features of a head, recorded in the files it saves: "half-split",
 * transformers' (i, i + d/2). Files saved before ABI 5 have none: they were trained with interleaved
 * pairs (2i, 2i + 1) and compute another function here.
 */
export const ROPE_LAYOUT = "half-split";

/**
 * Reads weights saved by {@linkcode saveWeights} (or any F32/BF16/F16 safetensors file with Hugging Face
 * LLaMA names) as a {@linkcode WeightSource}, with the config stored beside them when present and the RoPE
 * layout they were trained with (`ropeLayout`: "half-split", or "interleaved" for files saved before
 * ABI 5). For a model directory (config.json, shards) see {@linkcode openModelDir}.
 *
 * @example
 * ```ts
 * import { LlamaModel, loadWeights, saveWeights } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using trained = new LlamaModel(config, { seed: 1 });
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * try {
 *   await saveWeights(trained, path);
 *   const loaded = await loadWeights(path);
 *   assertEquals(loaded.config, config);
 *   using copy = new LlamaModel(loaded.config!, { mode: "lora", rank: 4, weights: loaded.weights });
 *   const name = "model.layers.0.mlp.down_proj.weight";
 *   assertEquals(copy.namedWeights().get(name), trained.namedWeights().get(name));
 * } finally {
 *   await Deno.remove(path);
 * }
 * ```
 */
export async function loadWeights(
  path: string,
): Promise<{ weights: WeightSource; config?: LlamaConfig; ropeLayout?: string }> {
  const file = await readSafetensors(path);
  using reader = await SafetensorsReader.open(path);
  const config = reader.metadata.config ? JSON.parse(reader.metadata.config) as LlamaConfig : undefined;
  // A file of this library records its layout; one with a config and no layout predates ABI 5.
  const ropeLayout = reader.metadata.rope ?? (config ? "interleaved" : undefined);
  const weights: WeightSource = (name, shape) => {
    const t = file.get(name);
    // A missing weight is an error, never a silently random one (a model directory: openModelDir).
    if (!t) throw new InvalidArgumentError(`Cannot load ${name}: ${path} has no such weight`);
    if (t.info.shape.join() !== shape.join()) {
      throw new InvalidArgumentError(
        `Cannot load ${name}: shape [${t.info.shape.join(", ")}], expected [${shape.join(", ")}]`,
      );
    }
    const bytes = t.data.slice();
    switch (t.info.dtype) {
      case "F32":
        return new Float32Array(bytes.buffer);
      case "BF16":
        return bf16ToF32(new Uint16Array(bytes.buffer));
      case "F16":
        return f16ToF32(new Uint16Array(bytes.buffer));
      default:
        throw new InvalidArgumentError(`Cannot load ${name}: dtype ${t.info.dtype} is not a float type`);
    }
  };
  return { weights, config, ropeLayout };
}
