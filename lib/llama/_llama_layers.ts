/**
 * The weights and linear layers of a decoder block, made from loaded weights or synthetic ones: what a
 * block needs of its model, the shapes of its seven projections, and each projection as a plain or a
 * LoRA layer. Internal to `_llama_block.ts` and `model.ts`.
 *
 * @module
 */

import { type Device, Tensor } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import type { LlamaConfig, TrainMode, WeightSource } from "./llama_config.ts";
import { Linear, LoRALinear } from "../nn/mod.ts";

/** What a block reads from the model it belongs to (a {@linkcode LlamaModel}). */
export interface BlockHost {
  /** The shape. */
  readonly config: LlamaConfig;
  /** Training mode. */
  readonly mode: TrainMode;
  /** Weight and activation dtype. */
  readonly dtype: "f32" | "bf16";
  /** Device. */
  readonly device: Device;
  /** Batch of the last forward. */
  readonly batch: number;
  /** Sequence length of the last forward. */
  readonly seq: number;
}

/**
 * A weight from `source` by its Hugging Face name (checked against its shape), else `make()`.
 *
 * @example
 * ```ts
 * import { initial } from "./_llama_layers.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const source = (name: string) => name === "a" ? new Float32Array([1, 2]) : undefined;
 * using a = initial(source, "a", [2], () => Tensor.zeros([2]), "f32", getDevice(), "weights");
 * using b = initial(source, "b", [2], () => Tensor.zeros([2]), "f32", getDevice(), "weights");
 * assertEquals([...a.toFloat32(), ...b.toFloat32()], [1, 2, 0, 0]);
 * ```
 */
export function initial(
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

/** A linear layer of a block: plain, or with LoRA adapters. */
export type Proj = Linear | LoRALinear;

/** How {@linkcode makeProjection} makes one linear layer. */
export interface ProjectionOptions {
  /** A frozen base with LoRA adapters (16-bit, or NF4 in qlora mode), or a plain layer. */
  adapter: boolean;
  /** Seed of the synthetic weight and of the adapters. */
  seed: number;
  /** Standard deviation of the synthetic weight. */
  std: number;
  /** LoRA rank. */
  rank: number;
  /** LoRA alpha. */
  alpha: number;
  /** LoRA dropout. */
  loraDropout: number;
  /** Where loaded weights come from (else synthetic ones). */
  weights?: WeightSource;
}

/**
 * One linear layer of a block: a {@linkcode LoRALinear} over a frozen base (the loaded or synthetic
 * weight, quantized in qlora mode) when `adapter`, else a {@linkcode Linear} (trainable in full mode)
 * holding the loaded weight when there is one.
 *
 * @example
 * ```ts
 * import { makeProjection } from "./_llama_layers.ts";
 * import { getDevice, LLAMA_CONFIGS, LoRALinear } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const host = { config: LLAMA_CONFIGS.tiny, mode: "qlora", dtype: "f32", device: getDevice(), batch: 0, seq: 0 } as const;
 * using layer = makeProjection(host, "q", [64, 64], { adapter: true, seed: 1, std: 0.02, rank: 4, alpha: 8, loraDropout: 0 });
 * assert(layer instanceof LoRALinear && layer.base === null); // the base is NF4
 * ```
 */
export function makeProjection(
  model: BlockHost,
  name: string,
  [out, inp]: [number, number],
  o: ProjectionOptions,
): Proj {
  const dtype = model.dtype, device = model.device;
  if (o.adapter) {
    using w = initial(
      o.weights,
      name,
      [out, inp],
      () => Tensor.randn([out, inp], { std: o.std, seed: o.seed, dtype, device, category: "workspace" }),
      dtype,
      device,
      "workspace",
    );
    return LoRALinear.fromWeight(w, {
      rank: o.rank,
      alpha: o.alpha,
      dropout: o.loraDropout,
      base: model.mode === "qlora" ? "nf4" : dtype,
      computeDtype: dtype,
      seed: o.seed,
    });
  }
  const layer = new Linear(inp, out, {
    dtype,
    std: o.std,
    seed: o.seed,
    device,
    trainable: model.mode === "full",
  });
  const values = o.weights?.(name, [out, inp]);
  if (values) {
    try {
      using w = initial(() => values, name, [out, inp], () => layer.weight, dtype, device, "workspace");
      layer.weight.copyFrom(w);
    } catch (e) {
      layer.dispose();
      throw e;
    }
  }
  return layer;
}
