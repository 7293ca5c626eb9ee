/**
 * AdamW with 8-bit states, as bitsandbytes' blockwise 8-bit Adam: 2.03 bytes of state per parameter
 * instead of 8 (see `optimizer.ts` for what every optimizer shares).
 *
 * @module
 */

import { ADAMW8_BLOCK as BLOCK8 } from "../native/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Trainable } from "../nn/mod.ts";
import { type AdamWOptions, OptimizerBase, type StateTensor, type StepResult } from "./optimizer.ts";
import { Tensor } from "../core/mod.ts";

/**
 * Values per block of the 8-bit states (`QLORA_ADAMW8_BLOCK`): one f32 absmax per block and state.
 *
 * @example
 * ```ts
 * import { ADAMW8_BLOCK } from "./adamw8bit.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ADAMW8_BLOCK, 256);
 * ```
 */
export const ADAMW8_BLOCK: number = BLOCK8;

/**
 * AdamW with 8-bit states, as bitsandbytes' blockwise 8-bit Adam: m and v are stored as 8-bit codes of a
 * dynamic map (signed for m, unsigned for v) with one f32 absmax per block of 256 values, 2.03 bytes per
 * parameter instead of 8. Each step decodes a block, updates it in f32 exactly as {@linkcode AdamW} does,
 * and encodes it again with the block's new absmax. Master weights and clipping as in AdamW.
 *
 * @example
 * ```ts
 * import { AdamW8bit, getDevice, Linear, Tensor } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const device = getDevice();
 * using layer = new Linear(64, 32);
 * const before = device.memory().current.optimizer_states;
 * using opt = new AdamW8bit(layer.trainables(), { lr: 1e-2 });
 * // 2048 weights: two 1-byte codes each, and two f32 absmax per block of 256
 * assertEquals(device.memory().current.optimizer_states - before, 2 * 2048 + 2 * 4 * 8);
 * using x = Tensor.randn([4, 64]);
 * using y = layer.forward(x);
 * layer.backward(y).dispose();
 * const w0 = layer.weight.toFloat32();
 * opt.step();
 * assert(layer.weight.toFloat32().some((w, i) => w !== w0[i]));
 * ```
 */
export class AdamW8bit extends OptimizerBase {
  readonly #mCodes: Tensor[] = [];
  readonly #vCodes: Tensor[] = [];
  readonly #mAbsmax: Tensor[] = [];
  readonly #vAbsmax: Tensor[] = [];

  /** Allocates the codes (u8) and block absmax (f32) of m and v, zero (category optimizer_states). */
  constructor(params: Trainable[], options: AdamWOptions = {}) {
    super(params, options);
    try {
      for (const p of this.params) {
        const n = p.value.numel, blocks = Math.ceil(n / ADAMW8_BLOCK);
        const o = { category: "optimizer_states" as const, device: this.device };
        this.#mCodes.push(Tensor.zeros([n], { ...o, dtype: "u8" }));
        this.#vCodes.push(Tensor.zeros([n], { ...o, dtype: "u8" }));
        this.#mAbsmax.push(Tensor.zeros([blocks], o));
        this.#vAbsmax.push(Tensor.zeros([blocks], o));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** "bf16 parameters with f32 master weights and 8-bit Adam states: 6.03 bytes ...". */
  override get policy(): string {
    const dtypes = [...new Set(this.params.map((p) => p.value.dtype))].join("/");
    const masters = this.masters.some((m) => m !== null);
    const perParam = 2 + 8 / ADAMW8_BLOCK + (masters ? 4 : 0);
    return `${dtypes} parameters${masters ? " with f32 master weights" : ""} and 8-bit Adam states ` +
      `(blocks of ${ADAMW8_BLOCK}): ${perParam.toFixed(2)} bytes of optimizer state per ${
        masters ? "bf16 " : ""
      }parameter`;
  }

  /** One update of every parameter from its gradient (one fused native call). */
  step(): StepResult {
    const result = this.clip();
    this.stepCount++;
    const segments = this.params.map((p, i): ffi.Adamw8Segment => {
      const g = this.gradOf(p);
      return {
        param: p.value,
        grad: g,
        mCodes: this.#mCodes[i],
        vCodes: this.#vCodes[i],
        mAbsmax: this.#mAbsmax[i],
        vAbsmax: this.#vAbsmax[i],
        master: this.masters[i],
        n: p.value.numel,
        paramDtype: p.value.dtype,
        gradDtype: g.dtype,
      };
    });
    ffi.adamw8Step(this.device, segments, this.hyper(result.clipScale));
    return result;
  }

  /** The codes (u8) and block absmax (f32) of m and v for every parameter, then the master copies. */
  stateTensors(): StateTensor[] {
    return [
      ...this.params.flatMap((_, i) => [
        this.tensorState(this.stateName(i, "m_codes"), this.#mCodes[i]),
        this.tensorState(this.stateName(i, "m_absmax"), this.#mAbsmax[i]),
        this.tensorState(this.stateName(i, "v_codes"), this.#vCodes[i]),
        this.tensorState(this.stateName(i, "v_absmax"), this.#vAbsmax[i]),
      ]),
      ...this.masterStates(),
    ];
  }

  /** Frees the codes, the block absmax and master copies. */
  dispose(): void {
    for (const t of [...this.#mCodes, ...this.#vCodes, ...this.#mAbsmax, ...this.#vAbsmax]) t.dispose();
    for (const m of this.masters) m?.dispose();
  }
}
