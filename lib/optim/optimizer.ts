/**
 * What every optimizer of this library shares: the options ({@linkcode AdamWOptions}), what a step
 * returns ({@linkcode StepResult}), a state tensor as a resumable checkpoint stores it
 * ({@linkcode StateTensor}), and {@linkcode OptimizerBase}: hyperparameters, step count, clipping by
 * global norm, f32 master copies of bf16 parameters, zeroing.
 *
 * Adam keeps two states per parameter; with bf16 parameters a full fine-tuning run also keeps an f32
 * master copy (4 bytes per parameter, counted with the states as ZeRO does): the precision policy is
 * explicit (`masterWeights`) and visible in the ledger under optimizer_states. The optimizers
 * themselves: `adamw.ts`, `adamw8bit.ts`, `paged_adamw.ts`.
 *
 * @module
 */

import { type Device, hostArray, type Tensor } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Trainable } from "../nn/mod.ts";

/** Options of {@linkcode AdamW}, {@linkcode PagedAdamW} and {@linkcode AdamW8bit}. */
export interface AdamWOptions {
  /** Learning rate (default 1e-3); may be changed between steps through `lr`. */
  lr?: number;
  /** beta1 and beta2 (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to the denominator (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (default 0.01, as torch.optim.AdamW). */
  weightDecay?: number;
  /** Clip gradients to this global L2 norm before the update (default: no clipping). */
  maxGradNorm?: number;
  /** Keep an f32 master copy of bf16 parameters (default true: mixed precision). false: update bf16 directly. */
  masterWeights?: boolean;
}

/** What one step did. */
export interface StepResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** The factor the gradients were scaled by (1 when not clipped). */
  clipScale: number;
}

/**
 * One tensor of an optimizer's state as a resumable checkpoint stores it (m, v, master copies, 8-bit
 * codes and block absmax): `read` copies its bytes from wherever it lives (device memory, or the host pool
 * for an evicted page) without moving anything; `write` puts bytes back in the same place.
 */
export interface StateTensor {
  /** Unique within the optimizer: `NNNN.param.m`, `.v`, `.master`, `.m_codes`, `.m_absmax`, ... */
  name: string;
  /** Element type, as safetensors names it. */
  dtype: "F32" | "U8";
  /** Shape. */
  shape: number[];
  /** The bytes, copied to the host. */
  read(): Uint8Array;
  /** Overwrites the state with bytes of the same length. */
  write(bytes: Uint8Array): void;
}

interface Hyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number | undefined;
  masterWeights: boolean;
}

function hyper(options: AdamWOptions): Hyper {
  const h = {
    lr: options.lr ?? 1e-3,
    beta1: options.betas?.[0] ?? 0.9,
    beta2: options.betas?.[1] ?? 0.999,
    eps: options.eps ?? 1e-8,
    weightDecay: options.weightDecay ?? 0.01,
    maxGradNorm: options.maxGradNorm,
    masterWeights: options.masterWeights ?? true,
  };
  const bad = (what: string) => new InvalidArgumentError(`Cannot create an optimizer: ${what}`);
  if (!(h.lr >= 0) || !Number.isFinite(h.lr)) throw bad(`lr ${h.lr} must be finite and >= 0`);
  if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) throw bad("betas must be in [0, 1)");
  if (!(h.eps > 0) || !Number.isFinite(h.eps)) throw bad(`eps ${h.eps} must be finite and > 0`);
  if (!(h.weightDecay >= 0) || !Number.isFinite(h.weightDecay)) {
    throw bad("weightDecay must be finite and >= 0");
  }
  if (h.maxGradNorm !== undefined && !(h.maxGradNorm > 0)) throw bad("maxGradNorm must be > 0");
  return h;
}

function checkTrainables(params: Trainable[]): Device {
  if (params.length === 0) throw new InvalidArgumentError("Cannot create an optimizer: no parameters");
  const device = params[0].value.device;
  for (const p of params) {
    if (p.value.dtype !== "f32" && p.value.dtype !== "bf16") {
      throw new InvalidArgumentError(
        `Cannot optimize ${p.name}: dtype must be f32 or bf16, got ${p.value.dtype}`,
      );
    }
    if (p.value.device !== device) {
      throw new InvalidArgumentError(`Cannot optimize ${p.name}: on another device`);
    }
  }
  return device;
}

/**
 * Shared by every optimizer: hyperparameters, step count, clipping, master weights, zeroing, and the
 * helpers that name and copy state tensors. A subclass allocates its states, implements `step`,
 * `stateTensors` and `dispose`.
 *
 * @example
 * ```ts
 * import { AdamW, Linear, OptimizerBase } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * using layer = new Linear(8, 4);
 * using opt: OptimizerBase = new AdamW(layer.trainables());
 * assertEquals(opt.parameterCount, 8 * 4);
 * assertEquals(opt.stateTensors().map((s) => s.name), ["0000.weight.m", "0000.weight.v"]);
 * assert(opt.policy.includes("8 bytes of optimizer state per parameter"));
 * ```
 */
export abstract class OptimizerBase implements Disposable {
  /** The tensors trained. */
  readonly params: readonly Trainable[];
  /** The device of the parameters. */
  readonly device: Device;
  /** Learning rate of the next step (a schedule may change it). */
  lr: number;
  /** Steps taken. */
  stepCount = 0;
  /**
   * The hyperparameters, defaults filled in and checked.
   *
   * @internal
   */
  protected readonly h: Hyper;
  /** f32 master copies of bf16 parameters (null for f32 ones, or when masterWeights is false). */
  protected readonly masters: (Tensor | null)[];

  /** Checks the parameters and options, and allocates the master copies of bf16 parameters. */
  constructor(params: Trainable[], options: AdamWOptions) {
    this.device = checkTrainables(params);
    this.h = hyper(options);
    this.lr = this.h.lr;
    this.params = [...params];
    this.masters = [];
    try {
      for (const p of params) {
        this.masters.push(
          p.value.dtype === "bf16" && this.h.masterWeights
            ? p.value.cast("f32", { category: "optimizer_states" })
            : null,
        );
      }
    } catch (e) {
      for (const m of this.masters) m?.dispose();
      throw e;
    }
  }

  /** "bf16 parameters with f32 master weights and f32 Adam states: 12 bytes per parameter". */
  get policy(): string {
    const dtypes = [...new Set(this.params.map((p) => p.value.dtype))].join("/");
    const masters = this.masters.some((m) => m !== null);
    const perParam = 8 + (masters ? 4 : 0);
    return `${dtypes} parameters${
      masters ? " with f32 master weights" : ""
    } and f32 Adam states: ${perParam} bytes of optimizer state per ${masters ? "bf16 " : ""}parameter`;
  }

  /** Number of parameters trained. */
  get parameterCount(): number {
    return this.params.reduce((s, p) => s + p.value.numel, 0);
  }

  /** Sets every gradient to zero (memset on the device). */
  zeroGrad(): void {
    for (const p of this.params) {
      const g = p.grad;
      if (g) ffi.memset(this.device, g, 0, g.byteLength);
    }
  }

  /** The gradient of a parameter, checked: present, f32 or bf16, as many elements as the parameter. */
  protected gradOf(p: Trainable): Tensor {
    const g = p.grad;
    if (!g) throw new InvalidArgumentError(`Cannot step: ${p.name} has no gradient (run backward first)`);
    if (g.numel !== p.value.numel || (g.dtype !== "f32" && g.dtype !== "bf16")) {
      throw new InvalidArgumentError(
        `Cannot step: the gradient of ${p.name} is ${g.dtype}[${g.numel}], expected f32 or bf16 [${p.value.numel}]`,
      );
    }
    return g;
  }

  /** Global L2 norm of the gradients and the clipping factor. */
  protected clip(): StepResult {
    let total = 0;
    for (const p of this.params) {
      const g = this.gradOf(p);
      total += ffi.sumSquares(this.device, g, g.dtype, g.numel);
    }
    const gradNorm = Math.sqrt(total);
    const max = this.h.maxGradNorm;
    const clipScale = max !== undefined && gradNorm > max ? max / (gradNorm + 1e-6) : 1;
    return { gradNorm, clipScale };
  }

  /**
   * The hyperparameters of the step being taken, as the fused native steps take them.
   *
   * @internal
   */
  protected hyper(clipScale: number): ffi.AdamwHyper {
    const t = this.stepCount;
    return {
      lr: this.lr,
      beta1: this.h.beta1,
      beta2: this.h.beta2,
      eps: this.h.eps,
      weightDecay: this.h.weightDecay,
      biasCorrection1: 1 - Math.pow(this.h.beta1, t),
      biasCorrection2: 1 - Math.pow(this.h.beta2, t),
      gradScale: clipScale,
    };
  }

  /**
   * Runs one fused native AdamW step over the segments.
   *
   * @internal
   */
  protected fused(segments: ffi.AdamwSegment[], clipScale: number): void {
    ffi.adamwStep(this.device, segments, this.hyper(clipScale));
  }

  /**
   * Every tensor of the state, for a checkpoint: with {@linkcode OptimizerBase.stepCount} (bias
   * correction) and the learning rate, what a resumed run needs to continue bit for bit.
   */
  abstract stateTensors(): StateTensor[];

  /**
   * The name of a state of parameter `i`: `0003.lora_A.m` (parameter names repeat across blocks, so
   * their position makes them unique).
   */
  protected stateName(i: number, state: string): string {
    return `${i.toString().padStart(4, "0")}.${this.params[i].name}.${state}`;
  }

  /** A state tensor held whole in one device tensor. */
  protected tensorState(name: string, t: Tensor): StateTensor {
    const dtype = t.dtype === "u8" ? "U8" : "F32";
    return {
      name,
      dtype,
      shape: [...t.shape],
      read() {
        const a = t.toArray();
        return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      },
      write: (bytes) => {
        this.checkStateBytes(name, bytes, t.byteLength);
        const values = hostArray(t.dtype, t.numel);
        new Uint8Array(values.buffer, values.byteOffset, values.byteLength).set(bytes);
        t.copyFrom(values);
      },
    };
  }

  /** Refuses bytes of the wrong length for a state tensor being restored. */
  protected checkStateBytes(name: string, bytes: Uint8Array, expected: number): void {
    if (bytes.byteLength !== expected) {
      throw new InvalidArgumentError(
        `Cannot restore optimizer state ${name}: expected ${expected} bytes, got ${bytes.byteLength}`,
      );
    }
  }

  /** The master copies' state tensors (f32, one per bf16 parameter). */
  protected masterStates(): StateTensor[] {
    return this.masters.flatMap((m, i) => m ? [this.tensorState(this.stateName(i, "master"), m)] : []);
  }

  /** Frees the states. */
  abstract dispose(): void;

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
