/**
 * A model's weights in a safetensors file: {@linkcode saveWeights} writes the base weights (f32,
 * Hugging Face names) with the config and the RoPE layout in the metadata; {@linkcode loadWeights} reads
 * them back (or any F32/BF16/F16 file with Hugging Face LLaMA names) as a {@linkcode WeightSource}.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import type { LlamaConfig, WeightSource } from "./llama_config.ts";
import type { LlamaModel } from "./model.ts";
import { floatValues, readSafetensors, SafetensorsReader, writeSafetensors } from "../io/mod.ts";

/**
 * Saves a model's base weights (f32, Hugging Face names) to a safetensors file, with its config in the
 * metadata.
 *
 * @example
 * ```ts
 * import { LlamaModel, readSafetensors, saveWeights } from "../../mod.ts";
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
 * import { LlamaModel, loadWeights, saveWeights } from "../../mod.ts";
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
    const values = floatValues(t.info.dtype, t.data.slice());
    if (!values) {
      throw new InvalidArgumentError(`Cannot load ${name}: dtype ${t.info.dtype} is not a float type`);
    }
    return values;
  };
  return { weights, config, ropeLayout };
}
