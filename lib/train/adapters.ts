/**
 * A model's trained weights for use after training: the adapters in PEFT's layout (LoRA, QLoRA), or every
 * trainable tensor (full fine-tuning), written by {@linkcode saveCheckpoint} and read back by
 * {@linkcode loadAdapter}. (Resumable checkpoints of a run: `training_checkpoint.ts`; bitsandbytes 4-bit
 * files: `lib/io/bnb4bit_file.ts`.)
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import type { LlamaModel } from "../llama/mod.ts";
import {
  floatValues,
  readSafetensors,
  safetensorsDtypeOf,
  writeFileAtomic,
  writeSafetensors,
} from "../io/mod.ts";
import { Tensor } from "../core/mod.ts";

import { bytesOf, loraLayers, trainableEntries } from "./_peft_entries.ts";

/**
 * Writes a checkpoint into `dir`: for LoRA and QLoRA, the adapters in PEFT's layout
 * (`adapter_model.safetensors` with `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
 * [r, in] and `...lora_B.weight` [out, r], plus `adapter_config.json`); for full fine-tuning, every
 * trainable tensor in `model.safetensors` (named `NNNN.name` by position in `model.trainables()`); then
 * `trainer_state.json` with `info` (any further fields of it included), the mode and the shape. Each file
 * is written to a temporary file and renamed, so an interrupted run leaves the previous file intact.
 * Returns the files written. A resumable checkpoint adds the optimizer's state and a completion marker:
 * see {@linkcode writeTrainingCheckpoint}.
 *
 * @example
 * ```ts
 * import { LlamaModel, readSafetensors, saveCheckpoint } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 4, targetModules: ["q_proj", "v_proj"] });
 * const dir = await Deno.makeTempDir();
 * try {
 *   const files = await saveCheckpoint(model, dir, { step: 1, loss: 2.5 });
 *   assertEquals(files.map((f) => f.slice(dir.length + 1)), [
 *     "adapter_model.safetensors",
 *     "adapter_config.json",
 *     "trainer_state.json",
 *   ]);
 *   const adapters = await readSafetensors(`${dir}/adapter_model.safetensors`);
 *   assertEquals(adapters.size, 4); // lora_A and lora_B of q_proj and v_proj
 *   assertEquals(adapters.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!.info.shape, [
 *     4,
 *     32,
 *   ]);
 *   assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`)).r, 4);
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function saveCheckpoint(
  model: LlamaModel,
  dir: string,
  info: { step: number; loss: number; [key: string]: unknown },
  options: { baseModel?: string } = {},
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const written: string[] = [];
  const tensors = trainableEntries(model).map(({ key, tensor }) => ({
    name: key,
    dtype: safetensorsDtypeOf(tensor.dtype),
    shape: [...tensor.shape],
    data: bytesOf(tensor),
  }));
  if (model.mode === "full") {
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, tensors, { step: String(info.step), loss: String(info.loss) });
    written.push(path);
  } else {
    const layers = loraLayers(model);
    const first = layers[0]?.layer;
    const path = `${dir}/adapter_model.safetensors`;
    await writeSafetensors(path, tensors, { format: "pt" });
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      r: first?.rank ?? 0,
      lora_alpha: first ? first.scaling * first.rank : 0,
      lora_dropout: first?.dropoutP ?? 0,
      target_modules: [...new Set(layers.map((l) => l.module))],
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      base_model_name_or_path: options.baseModel ?? null,
    };
    const cfgPath = `${dir}/adapter_config.json`;
    await writeFileAtomic(cfgPath, JSON.stringify(config, null, 2) + "\n");
    written.push(path, cfgPath);
  }
  const statePath = `${dir}/trainer_state.json`;
  await writeFileAtomic(
    statePath,
    JSON.stringify({ ...info, mode: model.mode, config: model.config }, null, 2) + "\n",
  );
  written.push(statePath);
  return written;
}

/**
 * Loads a PEFT adapter (`adapter_model.safetensors` and `adapter_config.json`, as {@linkcode saveCheckpoint}
 * writes them, or PEFT's own for a LLaMA) into a LoRA or QLoRA model built with the same rank and target
 * modules: every `lora_A`/`lora_B` of the model is set from the file. A missing, extra or mis-shaped
 * tensor, or another rank or alpha, is an error naming it.
 *
 * @example
 * ```ts
 * import { LlamaModel, loadAdapter, saveCheckpoint, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using a = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 * a.block(0).q_proj.trainables()[1].value.copyFrom(new Float32Array(32).fill(0.5)); // a non-zero lora_B
 * const dir = await Deno.makeTempDir();
 * try {
 *   await saveCheckpoint(a, dir, { step: 1, loss: 0 });
 *   using b = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 *   await loadAdapter(b, dir);
 *   using tokens = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
 *   using la = a.logits(tokens), lb = b.logits(tokens);
 *   assertEquals(la.toFloat32(), lb.toFloat32());
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function loadAdapter(model: LlamaModel, dir: string): Promise<void> {
  const fail = (what: string) => new InvalidArgumentError(`Cannot load the adapter in ${dir}: ${what}`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
  } catch (e) {
    throw fail(`adapter_config.json: ${(e as Error).message}`);
  }
  const file = await readSafetensors(`${dir}/adapter_model.safetensors`);
  const used = new Set<string>();
  for (const { layer, prefix } of loraLayers(model)) {
    if (cfg.r !== layer.rank || Math.abs(Number(cfg.lora_alpha) - layer.scaling * layer.rank) > 1e-6) {
      throw fail(
        `r ${cfg.r} and lora_alpha ${cfg.lora_alpha}, the model has ${layer.rank} and ${
          layer.scaling * layer.rank
        }`,
      );
    }
    for (const [suffix, t] of [["lora_A.weight", layer.loraA], ["lora_B.weight", layer.loraB]] as const) {
      const key = `${prefix}.${suffix}`;
      const found = file.get(key);
      if (!found) throw fail(`${key} is missing`);
      if (found.info.shape.join() !== t.shape.join()) {
        throw fail(
          `${key} has shape [${found.info.shape.join(", ")}], the model's is [${t.shape.join(", ")}]`,
        );
      }
      const values = found.info.dtype === "F16" ? null : floatValues(found.info.dtype, found.data.slice());
      if (!values) throw fail(`${key} is ${found.info.dtype}, not F32 or BF16`);
      using v = Tensor.from(values, { shape: [...t.shape], device: t.device, category: "workspace" });
      using cast = v.cast(t.dtype as "f32" | "bf16");
      t.copyFrom(cast);
      used.add(key);
    }
  }
  const extra = [...file.keys()].find((k) => !used.has(k));
  if (extra) throw fail(`${extra} is not an adapter of this model (other target_modules?)`);
}
