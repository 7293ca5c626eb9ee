/**
 * Helpers shared by the experiments of `./deno task table`: the LoRA setup, empty byte counts, the
 * precisions read from a model, free memory, adapter merging, out-of-memory messages.
 *
 * @module
 */

import {
  CATEGORIES,
  type Category,
  type Device,
  type LlamaModel,
  LoRALinear,
  type OutOfMemoryError,
} from "../../mod.ts";
import type { Precisions } from "./types.ts";

/** LoRA rank of every experiment. */
export const RANK = 8;
/** LoRA alpha of every experiment. */
export const ALPHA = 16;

export function zeroBytes(): Record<Category, number> {
  return Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
}

/** The precisions of a model's tensors: the first block's q_proj, its adapters and the model dtype. */
export function precisionsOf(model: LlamaModel): Precisions {
  const layer = model.block(0).q_proj;
  if (layer instanceof LoRALinear) {
    const q = layer.quantized;
    const base = q
      ? `${q.quantType}, ${q.bitsPerParameter.toFixed(3)} bits/param${q.nested ? " (double-quant)" : ""}`
      : layer.base!.dtype;
    return { base, adapter: layer.loraA.dtype, embeddings: model.dtype };
  }
  return { base: layer.weight.dtype, adapter: null, embeddings: model.dtype };
}

export function freeMemory(device: Device): number {
  const snap = device.memory();
  if (device.backend === "cuda" && snap.deviceFree > 0) return snap.deviceFree;
  return Deno.systemMemoryInfo().available;
}

export function merge(model: LlamaModel): void {
  for (let i = 0; i < model.config.layers; i++) {
    for (const layer of Object.values(model.block(i))) if (layer instanceof LoRALinear) layer.merge();
  }
}
export function oomText(e: OutOfMemoryError, what: string): string {
  return `${what} ran out of the ${(e.details.budget / 2 ** 30).toFixed(2)} GiB budget`;
}
