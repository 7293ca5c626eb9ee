/**
 * Linear layers for the three ways of fine-tuning: `Linear` (full fine-tuning: the weight is trained, so
 * it has a gradient) and `LoRALinear` (a frozen base weight in f32, bf16 or NF4, plus a trainable
 * low-rank bypass B·A as in LoRA and QLoRA). Forward and backward sit side by side, llm.c style:
 *
 *     y  = x Wᵀ + s · dropout(x) Aᵀ Bᵀ          s = alpha / rank
 *     dB = s · dyᵀ h                            h = dropout(x) Aᵀ   (kept from the forward pass)
 *     dA = (s · dy B)ᵀ dropout(x)               (the dropout mask is recomputed from its seed)
 *     dx = dy W + dropout'(s · dy B A)          never dW: the base is frozen
 *
 * Inputs are 2-D: [tokens, features]. Every buffer is allocated through the ledger under its category:
 * weights (or quantized_weights and quant_constants), adapters, gradients, activations, workspace.
 *
 * @module
 */

import {
  axpby,
  type Device,
  dropout,
  fillOrDispose,
  fillUniform,
  getDevice,
  matmul,
  matmul4bit,
  quantize,
  type QuantizedTensor,
  Tensor,
} from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";

/** Compute dtypes of the layers. */
export type ComputeDType = "f32" | "bf16";

/**
 * A trainable tensor and its gradient, as optimizers see it. The gradient is null until the first
 * backward pass.
 */
export interface Trainable {
  /** A name for reports ("weight", "lora_A", ...). */
  readonly name: string;
  /** The values the optimizer updates. */
  readonly value: Tensor;
  /** The gradient of the loss with respect to `value`, same shape. */
  readonly grad: Tensor | null;
}

function checkFeatures(inFeatures: number, outFeatures: number, what: string): void {
  for (const [name, v] of [["inFeatures", inFeatures], ["outFeatures", outFeatures]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new InvalidArgumentError(`Cannot create ${what}: ${name} must be a positive integer, got ${v}`);
    }
  }
}

function checkInput(x: Tensor, inFeatures: number, dtype: ComputeDType, what: string): number {
  if (x.shape.length !== 2 || x.shape[1] !== inFeatures) {
    throw new InvalidArgumentError(
      `Cannot run ${what}: input must be [tokens, ${inFeatures}], got [${x.shape.join(", ")}]`,
    );
  }
  if (x.dtype !== dtype) {
    throw new InvalidArgumentError(`Cannot run ${what}: input is ${x.dtype}, the layer computes in ${dtype}`);
  }
  return x.shape[0];
}

function checkGrad(dy: Tensor, rows: number, outFeatures: number, dtype: ComputeDType, what: string): void {
  if (dy.shape.length !== 2 || dy.shape[0] !== rows || dy.shape[1] !== outFeatures || dy.dtype !== dtype) {
    throw new InvalidArgumentError(
      `Cannot run ${what} backward: dy must be ${dtype}[${rows}, ${outFeatures}], got ${dy.dtype}[${
        dy.shape.join(", ")
      }]`,
    );
  }
}

function checkComputeDType(dtype: string, what: string): asserts dtype is ComputeDType {
  if (dtype !== "f32" && dtype !== "bf16") {
    throw new InvalidArgumentError(
      `Cannot create ${what}: dtype must be f32 or bf16, got ${JSON.stringify(dtype)}`,
    );
  }
}

/** Options of {@linkcode Linear}. */
export interface LinearOptions {
  /** Weight and compute dtype (default f32). */
  dtype?: ComputeDType;
  /** Device (default: the `QLORA_BACKEND` device). */
  device?: Device;
  /** Standard deviation of the random initial weight (default 0.02). */
  std?: number;
  /** Seed of the initial weight (default 0). */
  seed?: number;
  /** Whether the weight is trained (default true). A frozen layer's backward gives dx only. */
  trainable?: boolean;
}

/** Options of a layer's backward. */
export interface BackwardOptions {
  /**
   * Whether to compute dx (default true). False where nothing needs the gradient of the layer's input
   * (the first block when the embeddings are frozen): backward then only adds the parameters'
   * gradients, skips the products for dx, and returns null.
   */
  inputGrad?: boolean;
}

/**
 * A linear layer `y = x Wᵀ` whose weight is trained (full fine-tuning): backward accumulates dW.
 *
 * @example
 * ```ts
 * import { Linear, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using layer = new Linear(64, 32);
 * using x = Tensor.randn([4, 64]);
 * using y = layer.forward(x);
 * using dy = Tensor.randn([4, 32]);
 * using dx = layer.backward(dy);
 * assert(layer.grad!.shape[1] === 64 && dx.shape[1] === 64);
 * ```
 */
export class Linear implements Disposable {
  /** Input features. */
  readonly inFeatures: number;
  /** Output features. */
  readonly outFeatures: number;
  /** Weight and compute dtype. */
  readonly dtype: ComputeDType;
  /** The weight, [out, in], category weights. */
  readonly weight: Tensor;
  /** Whether backward computes dW. */
  readonly trainable: boolean;
  #grad: Tensor | null = null;
  #overwriteGrad = true;
  #input: Tensor | null = null;

  /** A layer with a random N(0, std²) weight. */
  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    checkFeatures(inFeatures, outFeatures, "a linear layer");
    const dtype = options.dtype ?? "f32";
    checkComputeDType(dtype, "a linear layer");
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.dtype = dtype;
    this.trainable = options.trainable ?? true;
    this.weight = Tensor.randn([outFeatures, inFeatures], {
      dtype,
      std: options.std ?? 0.02,
      seed: options.seed ?? 0,
      category: "weights",
      device: options.device,
    });
  }

  /** dW, [out, in], category gradients (null before the first backward). */
  get grad(): Tensor | null {
    return this.#grad;
  }

  /** All weights. */
  get parameters(): number {
    return this.inFeatures * this.outFeatures;
  }

  /** Trainable weights: all of them, or none when frozen. */
  get trainableParameters(): number {
    return this.trainable ? this.parameters : 0;
  }

  /** What an optimizer trains: the weight. */
  trainables(): Trainable[] {
    if (!this.trainable) return [];
    const grad = () => this.#grad;
    return [{
      name: "weight",
      value: this.weight,
      get grad() {
        return grad();
      },
    }];
  }

  /** `y = x Wᵀ`; keeps a reference to x for backward (keep x alive until then). */
  forward(x: Tensor): Tensor {
    checkInput(x, this.inFeatures, this.dtype, "a linear layer");
    this.#input = x;
    return matmul(x, this.weight, { transB: true });
  }

  /** `y = x Wᵀ` for inference: keeps nothing for backward. */
  infer(x: Tensor): Tensor {
    checkInput(x, this.inFeatures, this.dtype, "a linear layer");
    return matmul(x, this.weight, { transB: true });
  }

  /** Accumulates `dW += dyᵀ x` and returns `dx = dy W` (null with `inputGrad: false`). */
  backward(dy: Tensor, options?: BackwardOptions & { inputGrad?: true }): Tensor;
  /** Accumulates `dW += dyᵀ x` and returns `dx = dy W`, or null with `inputGrad: false`. */
  backward(dy: Tensor, options: BackwardOptions): Tensor | null;
  backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const x = this.#input;
    if (!x) throw new InvalidArgumentError("Cannot run a linear layer backward: call forward first");
    checkGrad(dy, x.shape[0], this.outFeatures, this.dtype, "a linear layer");
    if (this.trainable) {
      this.#grad ??= Tensor.empty(this.weight.shape, {
        dtype: this.dtype,
        category: "gradients",
        device: this.weight.device,
      });
      matmul(dy, x, { transA: true, beta: this.#overwriteGrad ? 0 : 1, out: this.#grad });
      this.#overwriteGrad = false;
    }
    this.#input = null;
    return options.inputGrad === false ? null : matmul(dy, this.weight);
  }

  /** The next backward overwrites the gradient instead of adding to it. */
  zeroGrad(): void {
    this.#overwriteGrad = true;
  }
  /** Drops what forward kept for backward (after a forward that will not be followed by backward). */
  releaseActivations(): void {
    this.#input = null;
  }

  /** Frees the weight and the gradient. */
  dispose(): void {
    this.weight.dispose();
    this.#grad?.dispose();
    this.#input = null;
  }

  /** Same as {@linkcode Linear.dispose}. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The precision of a LoRA layer's frozen base weight. */
export type LoRABase = "f32" | "bf16" | "nf4";

/** Options of {@linkcode LoRALinear}. */
export interface LoRAOptions {
  /** Rank r of the bypass (A is r x in, B is out x r). */
  rank: number;
  /** Scale numerator: the bypass is multiplied by alpha / rank (default: rank, a scale of 1). */
  alpha?: number;
  /** Dropout probability on the bypass input (default 0). */
  dropout?: number;
  /** Base weight precision (default "bf16"). "nf4" is QLoRA. */
  base?: LoRABase;
  /** NF4 base: double-quantize the constants (default true). */
  doubleQuant?: boolean;
  /** NF4 base: the 4-bit type (default "nf4"). */
  quantType?: "nf4" | "fp4";
  /** NF4 base: values per constant (default 64). */
  blocksize?: number;
  /** NF4 base: compute dtype of inputs, outputs and adapters (default bf16, as QLoRA); otherwise the base's. */
  computeDtype?: ComputeDType;
  /** Seed of A's initialisation and of the dropout masks (default 0). */
  seed?: number;
  /** Device (default: the weight's, or the `QLORA_BACKEND` device). */
  device?: Device;
}

/**
 * A frozen linear layer with a trainable low-rank bypass: LoRA on an f32 or bf16 base, QLoRA on an NF4
 * base. A is initialised Kaiming-uniform (bound 1/sqrt(in), as PEFT) and B to zero, so a new layer
 * computes exactly its base.
 *
 * @example
 * ```ts
 * import { LoRALinear, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using w = Tensor.randn([256, 128], { std: 0.02 });
 * using layer = LoRALinear.fromWeight(w, { rank: 8, alpha: 16, base: "nf4", computeDtype: "f32" });
 * assert(layer.trainableParameters === 8 * (128 + 256));
 * using x = Tensor.randn([4, 128]);
 * using y = layer.forward(x);
 * using dy = Tensor.randn([4, 256]);
 * using dx = layer.backward(dy);
 * assert(layer.gradA!.shape[0] === 8 && dx.shape[1] === 128);
 * ```
 */
export class LoRALinear implements Disposable {
  /** Input features. */
  readonly inFeatures: number;
  /** Output features. */
  readonly outFeatures: number;
  /** Rank of the bypass. */
  readonly rank: number;
  /** alpha / rank. */
  readonly scaling: number;
  /** Dropout probability of the bypass input. */
  readonly dropoutP: number;
  /** Base precision. */
  readonly baseKind: LoRABase;
  /** Compute dtype of inputs, outputs and adapters. */
  readonly dtype: ComputeDType;
  /** The 16/32-bit base, [out, in], category weights (null for an NF4 base). */
  readonly base: Tensor | null;
  /** The 4-bit base (null for a 16/32-bit base). */
  readonly quantized: QuantizedTensor | null;
  /** A, [rank, in], category adapters. */
  readonly loraA: Tensor;
  /** B, [out, rank], category adapters. */
  readonly loraB: Tensor;
  /** Whether dropout is applied (training) or not (evaluation). */
  training = true;
  #gradA: Tensor | null = null;
  #gradB: Tensor | null = null;
  #overwriteGrad = true;
  #merged: Tensor | null = null;
  #seed: number;
  #step = 0;
  #saved: { x: Tensor; h: Tensor; seed: number; p: number } | null = null;

  /**
   * Wraps a weight [out, in] (f32 or bf16; copied, cast or quantized as `base` says; the argument stays
   * the caller's).
   */
  static fromWeight(weight: Tensor, options: LoRAOptions): LoRALinear {
    if (weight.shape.length !== 2) {
      throw new InvalidArgumentError(
        `Cannot create a LoRA layer: the weight must be 2-D, got [${weight.shape.join(", ")}]`,
      );
    }
    return new LoRALinear(weight.shape[1], weight.shape[0], { ...options, device: weight.device }, weight);
  }

  /** A layer over a random N(0, 0.02²) base (or over `weight` when given: see {@linkcode LoRALinear.fromWeight}). */
  constructor(inFeatures: number, outFeatures: number, options: LoRAOptions, weight?: Tensor) {
    const what = "a LoRA layer";
    checkFeatures(inFeatures, outFeatures, what);
    const { rank } = options;
    if (!Number.isSafeInteger(rank) || rank <= 0 || rank > Math.min(inFeatures, outFeatures)) {
      throw new InvalidArgumentError(
        `Cannot create ${what}: rank must be an integer in 1..${
          Math.min(inFeatures, outFeatures)
        }, got ${rank}`,
      );
    }
    const alpha = options.alpha ?? rank;
    if (!Number.isFinite(alpha)) {
      throw new InvalidArgumentError(`Cannot create ${what}: alpha must be finite`);
    }
    const p = options.dropout ?? 0;
    if (!(p >= 0 && p < 1)) {
      throw new InvalidArgumentError(`Cannot create ${what}: dropout ${p} is not in [0, 1)`);
    }
    const baseKind = options.base ?? "bf16";
    if (baseKind !== "f32" && baseKind !== "bf16" && baseKind !== "nf4") {
      throw new InvalidArgumentError(
        `Cannot create ${what}: base must be f32, bf16 or nf4, got ${JSON.stringify(baseKind)}`,
      );
    }
    const dtype = baseKind === "nf4" ? options.computeDtype ?? "bf16" : baseKind;
    checkComputeDType(dtype, what);
    if (options.computeDtype && baseKind !== "nf4" && options.computeDtype !== baseKind) {
      throw new InvalidArgumentError(`Cannot create ${what}: a ${baseKind} base computes in ${baseKind}`);
    }
    if (weight && weight.dtype !== "f32" && weight.dtype !== "bf16") {
      throw new InvalidArgumentError(
        `Cannot create ${what}: the weight must be f32 or bf16, got ${weight.dtype}`,
      );
    }
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new InvalidArgumentError(`Cannot create ${what}: bad seed ${seed}`);
    }
    const device = options.device ?? weight?.device ?? getDevice();

    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.rank = rank;
    this.scaling = alpha / rank;
    this.dropoutP = p;
    this.baseKind = baseKind;
    this.dtype = dtype;
    this.#seed = seed;

    const owned: { dispose(): void }[] = [];
    try {
      using source = weight
        ? null
        : Tensor.randn([outFeatures, inFeatures], { std: 0.02, seed, device, category: "workspace" });
      const w = weight ?? source!;
      if (baseKind === "nf4") {
        this.base = null;
        this.quantized = quantize(w, {
          quantType: options.quantType ?? "nf4",
          blocksize: options.blocksize ?? 64,
          doubleQuant: options.doubleQuant ?? true,
        });
        owned.push(this.quantized);
      } else {
        this.quantized = null;
        this.base = w.dtype === baseKind
          ? w.clone({ category: "weights" })
          : w.cast(baseKind, { category: "weights" });
        owned.push(this.base);
      }
      this.loraA = Tensor.empty([rank, inFeatures], { dtype, category: "adapters", device });
      owned.push(this.loraA);
      const bound = 1 / Math.sqrt(inFeatures); // kaiming_uniform_(a = sqrt(5)), as PEFT initialises A
      fillUniform(this.loraA, -bound, bound, seed + 1);
      this.loraB = Tensor.zeros([outFeatures, rank], { dtype, category: "adapters", device });
    } catch (e) {
      for (const t of owned) t.dispose();
      throw e;
    }
  }

  /** dA, [rank, in], category gradients (null before the first backward). */
  get gradA(): Tensor | null {
    return this.#gradA;
  }

  /** dB, [out, rank], category gradients (null before the first backward). */
  get gradB(): Tensor | null {
    return this.#gradB;
  }

  /** Base weights plus adapters. */
  get parameters(): number {
    return this.inFeatures * this.outFeatures + this.trainableParameters;
  }

  /** Adapter weights: rank · (in + out). The base is frozen. */
  get trainableParameters(): number {
    return this.rank * (this.inFeatures + this.outFeatures);
  }

  /** What an optimizer trains: A and B (the base is frozen). */
  trainables(): Trainable[] {
    const gradA = () => this.#gradA, gradB = () => this.#gradB;
    return [
      {
        name: "lora_A",
        value: this.loraA,
        get grad() {
          return gradA();
        },
      },
      {
        name: "lora_B",
        value: this.loraB,
        get grad() {
          return gradB();
        },
      },
    ];
  }

  /** The merged weight `W + s · B A` while merged (see {@linkcode LoRALinear.merge}), else null. */
  get mergedWeight(): Tensor | null {
    return this.#merged;
  }

  /** Whether {@linkcode LoRALinear.merge} is in effect. */
  get merged(): boolean {
    return this.#merged !== null;
  }

  /**
   * Forward calls so far: the position of the layer's dropout stream (each call's mask is seeded from
   * it). A resumable checkpoint saves it and sets it back, so the masks after a resume are the ones an
   * uninterrupted run draws.
   */
  get dropoutStep(): number {
    return this.#step;
  }

  set dropoutStep(step: number) {
    if (!Number.isSafeInteger(step) || step < 0) {
      throw new InvalidArgumentError(`Cannot set the dropout step: expected an integer >= 0, got ${step}`);
    }
    this.#step = step;
  }

  /** `x Wᵀ + s · (x Aᵀ) Bᵀ` over the 4-bit base in one native call, `h = x Aᵀ` written. */
  #fused(x: Tensor, h: Tensor): Tensor {
    return matmul4bit(x, this.quantized!, {
      transW: true,
      lora: { a: this.loraA, b: this.loraB, h, scaling: this.scaling },
    });
  }

  #baseTimes(x: Tensor, transW: boolean, out?: Tensor, beta = 0): Tensor {
    if (this.quantized) return matmul4bit(x, this.quantized, { transW, out, beta });
    return matmul(x, this.base!, { transB: transW, out, beta });
  }

  /**
   * `y = x Wᵀ + s · dropout(x) Aᵀ Bᵀ` (or `x W'ᵀ` when merged). Keeps x (by reference: keep it alive
   * until backward) and h = dropout(x) Aᵀ (activations) for backward. Each call draws a new dropout
   * mask unless `options.dropoutSeed` fixes it.
   */
  forward(x: Tensor, options: { dropoutSeed?: number } = {}): Tensor {
    checkInput(x, this.inFeatures, this.dtype, "a LoRA layer");
    this.#dropSaved();
    if (this.#merged) return matmul(x, this.#merged, { transB: true });
    const p = this.training ? this.dropoutP : 0;
    const seed = options.dropoutSeed ?? this.#seed + 1000003 * ++this.#step;
    if (this.quantized && p === 0) {
      // The 4-bit product and the bypass in one native call (h = x Aᵀ kept for backward).
      const h = Tensor.empty([x.shape[0], this.rank], { dtype: this.dtype, device: x.device });
      try {
        const y = this.#fused(x, h);
        this.#saved = { x, h, seed, p };
        return y;
      } catch (e) {
        h.dispose();
        throw e;
      }
    }
    const y = this.#baseTimes(x, true);
    try {
      using dropped = p > 0 ? dropout(x, p, seed, undefined, "workspace") : null;
      const h = matmul(dropped ?? x, this.loraA, { transB: true });
      this.#saved = { x, h, seed, p };
      matmul(h, this.loraB, { transB: true, alpha: this.scaling, beta: 1, out: y });
    } catch (e) {
      y.dispose();
      this.#dropSaved();
      throw e;
    }
    return y;
  }

  /**
   * `y = x Wᵀ + s · x Aᵀ Bᵀ` (or `x W'ᵀ` when merged) for inference: no dropout, nothing kept for backward,
   * and the dropout stream does not move (generating between training steps leaves training as it was).
   * An NF4 base goes through the fused 4-bit product (a GEMV at one token).
   */
  infer(x: Tensor): Tensor {
    checkInput(x, this.inFeatures, this.dtype, "a LoRA layer");
    if (this.#merged) return matmul(x, this.#merged, { transB: true });
    if (this.quantized) {
      using h = Tensor.empty([x.shape[0], this.rank], {
        dtype: this.dtype,
        category: "workspace",
        device: x.device,
      });
      return this.#fused(x, h);
    }
    const y = this.#baseTimes(x, true);
    return fillOrDispose(y, () => {
      using h = matmul(x, this.loraA, { transB: true, category: "workspace" });
      matmul(h, this.loraB, { transB: true, alpha: this.scaling, beta: 1, out: y });
    });
  }

  /** Accumulates dA and dB and returns dx (null with `inputGrad: false`); W gets no gradient. */
  backward(dy: Tensor, options?: BackwardOptions & { inputGrad?: true }): Tensor;
  /** Accumulates dA and dB and returns dx, or null with `inputGrad: false`; W gets no gradient. */
  backward(dy: Tensor, options: BackwardOptions): Tensor | null;
  backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const saved = this.#saved;
    if (this.#merged) {
      throw new InvalidArgumentError("Cannot run a LoRA layer backward while merged: unmerge() first");
    }
    if (!saved) throw new InvalidArgumentError("Cannot run a LoRA layer backward: call forward first");
    const { x } = saved;
    checkGrad(dy, x.shape[0], this.outFeatures, this.dtype, "a LoRA layer");
    try {
      return this.#backward(dy, saved, options);
    } catch (e) {
      this.#dropSaved(); // a failed backward frees what forward kept: nothing stays counted
      throw e;
    }
  }

  #backward(
    dy: Tensor,
    saved: { x: Tensor; h: Tensor; seed: number; p: number },
    options: BackwardOptions,
  ): Tensor | null {
    const { x, h, seed, p } = saved;
    const device = x.device, dtype = this.dtype;
    const beta = this.#overwriteGrad ? 0 : 1;
    this.#gradA ??= Tensor.empty(this.loraA.shape, { dtype, category: "gradients", device });
    this.#gradB ??= Tensor.empty(this.loraB.shape, { dtype, category: "gradients", device });
    // dB = s · dyᵀ h
    matmul(dy, h, { transA: true, alpha: this.scaling, beta, out: this.#gradB });
    // dh = s · dy B, then dA = dhᵀ dropout(x) with the forward's mask
    using dh = matmul(dy, this.loraB, { alpha: this.scaling, category: "workspace" });
    {
      using dropped = p > 0 ? dropout(x, p, seed, undefined, "workspace") : null;
      matmul(dh, dropped ?? x, { transA: true, beta, out: this.#gradA });
    }
    this.#overwriteGrad = false;
    if (options.inputGrad === false) {
      this.#dropSaved();
      return null;
    }
    // dx = dy W + dropout'(dh A)
    const dx = this.#baseTimes(dy, false);
    try {
      if (p > 0) {
        using bypass = matmul(dh, this.loraA, { category: "workspace" });
        dropout(bypass, p, seed, bypass);
        axpby(1, bypass, 1, dx);
      } else {
        matmul(dh, this.loraA, { beta: 1, out: dx });
      }
    } catch (e) {
      dx.dispose();
      throw e;
    }
    this.#dropSaved();
    return dx;
  }

  /** The next backward overwrites the gradients instead of adding to them. */
  zeroGrad(): void {
    this.#overwriteGrad = true;
  }

  /**
   * Folds the bypass into a weight for inference: `W' = W + s · B A`. A 16/32-bit base is updated in
   * place; an NF4 base is dequantized into a new weight (category weights) and kept beside it.
   */
  merge(): void {
    if (this.#merged) return;
    this.#dropSaved();
    const merged = this.quantized
      ? this.quantized.dequantize({ dtype: this.dtype, category: "weights" })
      : this.base!;
    matmul(this.loraB, this.loraA, { alpha: this.scaling, beta: 1, out: merged });
    this.#merged = merged;
  }

  /** Undoes {@linkcode LoRALinear.merge}: subtracts s · B A again (16/32-bit base) or drops the merged copy (NF4). */
  unmerge(): void {
    const merged = this.#merged;
    if (!merged) return;
    if (this.quantized) merged.dispose();
    else matmul(this.loraB, this.loraA, { alpha: -this.scaling, beta: 1, out: merged });
    this.#merged = null;
  }

  /** Frees what forward kept for backward (h = dropout(x) Aᵀ), as a backward would. */
  releaseActivations(): void {
    this.#dropSaved();
  }

  #dropSaved(): void {
    this.#saved?.h.dispose();
    this.#saved = null;
  }

  /** Frees every buffer of the layer. */
  dispose(): void {
    this.#dropSaved();
    if (this.quantized) this.#merged?.dispose();
    this.#merged = null;
    this.base?.dispose();
    this.quantized?.dispose();
    this.loraA.dispose();
    this.loraB.dispose();
    this.#gradA?.dispose();
    this.#gradB?.dispose();
  }

  /** Same as {@linkcode LoRALinear.dispose}. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
