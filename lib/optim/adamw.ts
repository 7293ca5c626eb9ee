/**
 * AdamW with decoupled weight decay and f32 states: two f32 tensors per parameter (m and v, 8 bytes),
 * plus the f32 master copy of a bf16 parameter (see `optimizer.ts`). One fused native call updates every
 * tensor of the group.
 *
 * @module
 */

import type * as ffi from "../native/mod.ts";
import type { Trainable } from "../nn/mod.ts";
import { type AdamWOptions, OptimizerBase, type StateTensor, type StepResult } from "./optimizer.ts";
import { Tensor } from "../core/mod.ts";

/**
 * AdamW with decoupled weight decay (as torch.optim.AdamW), f32 states, optional clipping by global norm,
 * one fused native call per step.
 *
 * @example
 * ```ts
 * import { AdamW, Linear, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using layer = new Linear(16, 8);
 * using opt = new AdamW(layer.trainables(), { lr: 1e-2 });
 * using x = Tensor.randn([4, 16]);
 * using y = layer.forward(x);
 * layer.backward(y).dispose();
 * opt.step();
 * assert(opt.stepCount === 1);
 * ```
 */
export class AdamW extends OptimizerBase {
  readonly #m: Tensor[] = [];
  readonly #v: Tensor[] = [];

  /** Allocates m and v (zeros, f32, category optimizer_states) and master copies of bf16 parameters. */
  constructor(params: Trainable[], options: AdamWOptions = {}) {
    super(params, options);
    try {
      for (const p of this.params) {
        this.#m.push(Tensor.zeros(p.value.shape, { category: "optimizer_states", device: this.device }));
        this.#v.push(Tensor.zeros(p.value.shape, { category: "optimizer_states", device: this.device }));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** One update of every parameter from its gradient. */
  step(): StepResult {
    const result = this.clip();
    this.stepCount++;
    const segments = this.params.map((p, i): ffi.AdamwSegment => {
      const g = this.gradOf(p);
      return {
        param: p.value,
        grad: g,
        m: this.#m[i],
        v: this.#v[i],
        master: this.masters[i],
        n: p.value.numel,
        paramDtype: p.value.dtype,
        gradDtype: g.dtype,
      };
    });
    this.fused(segments, result.clipScale);
    return result;
  }

  /** m and v of every parameter (f32), then the master copies. */
  stateTensors(): StateTensor[] {
    return [
      ...this.params.flatMap((_, i) => [
        this.tensorState(this.stateName(i, "m"), this.#m[i]),
        this.tensorState(this.stateName(i, "v"), this.#v[i]),
      ]),
      ...this.masterStates(),
    ];
  }

  /** Frees m, v and master copies. */
  dispose(): void {
    for (const t of [...this.#m, ...this.#v]) t.dispose();
    for (const m of this.masters) m?.dispose();
  }
}
