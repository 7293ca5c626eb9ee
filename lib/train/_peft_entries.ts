/**
 * What the adapter files and the resumable checkpoints both store of a model: its LoRA layers with their
 * PEFT key prefixes, and its trainable tensors by file name. Private to lib/train (not in its mod.ts).
 *
 * @module
 */

import { type LlamaModel, MODULE_PATHS, type TargetModule } from "../llama/mod.ts";
import { LoRALinear } from "../nn/mod.ts";
import type { Tensor } from "../core/mod.ts";

/** A LoRA layer of a model with its PEFT key prefix (`base_model.model.model.layers.N.self_attn.q_proj`). */
export interface LoRAEntry {
  layer: LoRALinear;
  module: string;
  prefix: string;
}

/**
 * The LoRA layers of a model, each with its PEFT key prefix, block by block in TARGET_MODULES order.
 *
 * @example
 * ```ts
 * import { loraLayers } from "./_peft_entries.ts";
 * import { LlamaModel } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using model = new LlamaModel({ vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 32,
 *   maxSeq: 8, normEps: 1e-5, ropeTheta: 10000 }, { mode: "lora", rank: 2, targetModules: ["q_proj"] });
 * assertEquals(loraLayers(model)[0].prefix, "base_model.model.model.layers.0.self_attn.q_proj");
 * ```
 */
export function loraLayers(model: LlamaModel): LoRAEntry[] {
  const out: LoRAEntry[] = [];
  for (let i = 0; i < model.config.layers; i++) {
    for (const [module, layer] of Object.entries(model.block(i))) {
      if (layer instanceof LoRALinear) {
        out.push({
          layer,
          module,
          prefix: `base_model.model.model.layers.${i}.${MODULE_PATHS[module as TargetModule]}`,
        });
      }
    }
  }
  return out;
}

/**
 * The tensors a checkpoint stores for the model, by the name they have in the file: PEFT keys of every
 * `lora_A` and `lora_B` (LoRA, QLoRA), or `NNNN.name` by position in `model.trainables()` (full: names
 * repeat across blocks, the position keeps them unique).
 *
 * @example
 * ```ts
 * import { trainableEntries } from "./_peft_entries.ts";
 * import { LlamaModel } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using model = new LlamaModel({ vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 32,
 *   maxSeq: 8, normEps: 1e-5, ropeTheta: 10000 }, { mode: "lora", rank: 2, targetModules: ["q_proj"] });
 * assertEquals(trainableEntries(model).map((e) => e.key.split(".").at(-2)), ["lora_A", "lora_B"]);
 * ```
 */
export function trainableEntries(model: LlamaModel): { key: string; tensor: Tensor }[] {
  if (model.mode === "full") {
    return model.trainables().map((t, i) => ({
      key: `${i.toString().padStart(4, "0")}.${t.name}`,
      tensor: t.value,
    }));
  }
  return loraLayers(model).flatMap(({ layer, prefix }) => [
    { key: `${prefix}.lora_A.weight`, tensor: layer.loraA },
    { key: `${prefix}.lora_B.weight`, tensor: layer.loraB },
  ]);
}

/**
 * A tensor's bytes, copied to the host.
 *
 * @example
 * ```ts
 * import { bytesOf } from "./_peft_entries.ts";
 * import { Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using t = Tensor.from([1]);
 * assertEquals(bytesOf(t).byteLength, 4);
 * ```
 */
export function bytesOf(t: Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
