/**
 * One decoder block of {@linkcode LlamaModel}: attention and MLP, each behind an RMSNorm, with residual
 * connections; forward and backward written out op by op, and what forward keeps for backward.
 * Internal to `model.ts`.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import { type BlockHost, initial, makeProjection, type Proj } from "./_llama_layers.ts";
import {
  linearShapes,
  type LlamaOptions,
  MODULE_PATHS,
  TARGET_MODULES,
  type TargetModule,
  type WeightSource,
} from "./llama_config.ts";
import {
  attentionBackward,
  attentionCached,
  attentionForward,
  type AttentionResult,
  LoRALinear,
  rmsnormBackward,
  rmsnormForward,
  type RmsnormResult,
  rope,
  ropeAt,
  swigluBackward,
  swigluForward,
  type Trainable,
  zero,
} from "../nn/mod.ts";
import type { KVCache } from "./kv_cache.ts";
import { axpby, fillOrDispose, Tensor } from "../core/mod.ts";

/** One generation step as a block sees it: the new tokens per sequence and their positions (i32, on the device). */
export interface InferStep {
  /** New tokens per sequence. */
  tokens: number;
  /** Position of each new row, `[batch · tokens]`. */
  positions: Tensor;
}

/** What a block keeps from forward for backward. */
export interface BlockSaved {
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

/**
 * Frees what a block kept from forward (all but its input when `keepInput`: checkpointing keeps it).
 *
 * @example
 * ```ts
 * import { disposeSaved } from "./_llama_block.ts";
 * disposeSaved(null, false); // nothing kept: nothing to free
 * ```
 */
export function disposeSaved(s: BlockSaved | null, keepInput: boolean): void {
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

/**
 * One decoder block: attention and MLP, each behind an RMSNorm, with residual connections.
 *
 * @example
 * ```ts
 * import { Block } from "./_llama_block.ts";
 * import { getDevice, LLAMA_CONFIGS, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { ...LLAMA_CONFIGS.tiny, dim: 32, heads: 2, kvHeads: 2, hiddenDim: 64 };
 * const host = { config, mode: "full", dtype: "f32", device: getDevice(), batch: 1, seq: 4 } as const;
 * const options = {
 *   mode: "full", dtype: "f32", rank: 8, alpha: 16, loraDropout: 0, checkpointing: false, std: 0.02, seed: 0,
 *   targetModules: [],
 * } as const;
 * const block = new Block(host, 0, options);
 * try {
 *   using x = Tensor.randn([4, 32]);
 *   using y = block.forward(x);
 *   assertEquals(y.shape, [4, 32]);
 * } finally {
 *   block.dispose();
 * }
 * ```
 */
export class Block {
  readonly attnNorm: Tensor;
  readonly mlpNorm: Tensor;
  readonly proj: Record<TargetModule, Proj>;
  attnNormGrad: Tensor | null = null;
  mlpNormGrad: Tensor | null = null;
  saved: BlockSaved | null = null;

  constructor(
    readonly model: BlockHost,
    index: number,
    options: Required<Omit<LlamaOptions, "device" | "weights" | "offloadCheckpoints" | "lossChunk">> & {
      weights?: WeightSource;
    },
  ) {
    const c = model.config, dtype = model.dtype, device = model.device;
    const prefix = `model.layers.${index}`;
    const norm = (name: string) =>
      initial(
        options.weights,
        `${prefix}.${name}.weight`,
        [c.dim],
        () => Tensor.from(new Float32Array(c.dim).fill(1), { dtype, category: "weights", device }),
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
      const shapes = linearShapes(c);
      TARGET_MODULES.forEach((name, j) => {
        const seed = options.seed + 1000 * index + j;
        proj[name] = makeProjection(model, `${prefix}.${MODULE_PATHS[name]}.weight`, shapes[name], {
          ...options,
          seed,
          adapter: model.mode !== "full" && options.targetModules.includes(name),
        });
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

  /**
   * The forward for generation, keeping nothing: q, k and v of the new tokens turned to their positions,
   * k and v appended to layer `index` of the cache (at its `length`), the queries attending over the cache.
   * x is `[batch · tokens, dim]`; returns the block's output, like x.
   */
  infer(x: Tensor, cache: KVCache, index: number, step: InferStep): Tensor {
    const c = this.model.config, p = this.proj, headDim = c.dim / c.heads;
    let out: Tensor;
    {
      using x2 = (() => {
        const n1 = rmsnormForward(x, this.attnNorm, c.normEps);
        using n1out = n1.out, _rstd = n1.rstd;
        using att = (() => {
          using q = p.q_proj.infer(n1out), k = p.k_proj.infer(n1out), v = p.v_proj.infer(n1out);
          ropeAt(q, step.positions, c.heads, headDim, c.ropeTheta);
          ropeAt(k, step.positions, c.kvHeads, headDim, c.ropeTheta);
          cache.append(index, k, v, step.tokens);
          const s = {
            batch: cache.batch,
            tokens: step.tokens,
            past: cache.length,
            capacity: cache.capacity,
            heads: c.heads,
            kvHeads: c.kvHeads,
            headDim,
          };
          return attentionCached(q, cache.keys(index), cache.values(index), s, cache.firstKeyTensor);
        })();
        const x2 = p.o_proj.infer(att);
        return fillOrDispose(x2, () => axpby(1, x, 1, x2)); // x2 = x + o
      })();
      const n2 = rmsnormForward(x2, this.mlpNorm, c.normEps);
      using n2out = n2.out, _rstd = n2.rstd;
      using act = (() => {
        using gate = p.gate_proj.infer(n2out), up = p.up_proj.infer(n2out);
        return swigluForward(gate, up);
      })();
      out = p.down_proj.infer(act);
      fillOrDispose(out, () => axpby(1, x2, 1, out)); // out = x2 + mlp
    }
    return out;
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
