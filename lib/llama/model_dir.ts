/**
 * Hugging Face model directories: a LLaMA-architecture checkpoint as transformers saves it
 * (`config.json`, and `model.safetensors` or shards listed by `model.safetensors.index.json`) opened as a
 * {@linkcode LlamaConfig} and a {@linkcode WeightSource} that reads one weight at a time, so that a QLoRA
 * model quantizes each weight to NF4 as it is read and never holds a 16-bit copy of more than one.
 *
 * Weights may be f32, bf16, f16, or 4-bit in the bitsandbytes layout that `deno task quantize` writes
 * (restored as they are read; a QLoRA model quantizes them again to the same codes).
 *
 * Everything is checked before a byte of weights is read: the config's fields (an unsupported one, such as
 * a `rope_scaling` type, is refused by name), and every tensor of the files against the names and shapes
 * the config implies (a missing, extra or mis-shaped weight is an error naming it). RoPE is computed in
 * transformers' half-split layout (`qlora_rope`), so the weights are used as they are stored.
 *
 * @module
 */

import {
  floatValues,
  loadQuantGroup,
  parseGroup,
  type QuantGroup,
  safetensorsDtypeOf,
  SafetensorsReader,
  SafetensorsWriter,
  STATE_KEY,
  type TensorInfo,
  writeFileAtomic,
} from "../io/mod.ts";
import { getDevice } from "../core/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import type { LlamaConfig, WeightSource } from "./llama_config.ts";
import type { LlamaModel } from "./model.ts";

/** The float type of the stored weights (`torch_dtype`). */
export type StoredDtype = "f32" | "bf16" | "f16";

/** What a model directory's `config.json` says, in this library's terms. */
export interface HfConfig {
  /** The model's shape. `maxSeq` is `max_position_embeddings`. */
  config: LlamaConfig;
  /** The LM head is the embedding matrix (no `lm_head.weight` is stored). */
  tieWordEmbeddings: boolean;
  /** `torch_dtype`, where given. */
  dtype?: StoredDtype;
  /** Special token ids, where given. */
  bosTokenId?: number;
  /** End-of-sequence id(s), where given. */
  eosTokenId?: number | number[];
  /** The parsed `config.json` as it was (kept for exports). */
  json: Record<string, unknown>;
}

const DTYPES: Record<string, StoredDtype> = { float32: "f32", bfloat16: "bf16", float16: "f16" };

/**
 * Reads a transformers `LlamaConfig` (the parsed `config.json`). Refuses, by name, what this library does
 * not compute: another architecture, a `rope_scaling` of any type, attention or MLP biases, another
 * activation than SiLU, a `head_dim` other than `hidden_size / num_attention_heads`, `pretraining_tp` > 1.
 *
 * @example
 * ```ts
 * import { hfConfig } from "./model_dir.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const json = { model_type: "llama", hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32,
 *   num_attention_heads: 32, num_key_value_heads: 32, vocab_size: 32000, rms_norm_eps: 1e-5,
 *   max_position_embeddings: 4096, torch_dtype: "float16" };
 * const hf = hfConfig(json);
 * assertEquals([hf.config.dim, hf.config.kvHeads, hf.config.ropeTheta, hf.dtype], [4096, 32, 10000, "f16"]);
 * assertThrows(() => hfConfig({ ...json, rope_scaling: { rope_type: "yarn", factor: 4 } }), Error, "rope_scaling");
 * ```
 */
export function hfConfig(json: Record<string, unknown>, where = "config.json"): HfConfig {
  const refuse = (what: string) => new InvalidArgumentError(`Cannot use ${where}: ${what}`);
  const int = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw refuse(`${key} must be a positive integer, got ${JSON.stringify(json[key])}`);
    }
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !(v > 0)) {
      throw refuse(`${key} must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const type = json.model_type;
  const archs = json.architectures;
  if (type !== undefined && type !== "llama") {
    throw refuse(`model_type ${JSON.stringify(type)} is not supported (only "llama")`);
  }
  if (Array.isArray(archs) && !archs.every((a) => a === "LlamaForCausalLM")) {
    throw refuse(`architectures ${JSON.stringify(archs)} is not supported (only LlamaForCausalLM)`);
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    const r = json.rope_scaling as Record<string, unknown>;
    throw refuse(`rope_scaling of type ${JSON.stringify(r.rope_type ?? r.type)} is not implemented`);
  }
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (json[key] === true) throw refuse(`${key}: true is not supported (LLaMA has no biases)`);
  }
  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    throw refuse(`hidden_act ${JSON.stringify(json.hidden_act)} is not supported (only silu)`);
  }
  if (json.pretraining_tp !== undefined && json.pretraining_tp !== 1) {
    throw refuse(`pretraining_tp ${JSON.stringify(json.pretraining_tp)} is not supported (only 1)`);
  }
  const dim = int("hidden_size"), heads = int("num_attention_heads");
  const kvHeads = int("num_key_value_heads", heads);
  if (dim % heads !== 0 || heads % kvHeads !== 0 || (dim / heads) % 2 !== 0) {
    throw refuse(`hidden_size ${dim}, ${heads} heads and ${kvHeads} key-value heads do not divide evenly`);
  }
  if (json.head_dim !== undefined && json.head_dim !== null && json.head_dim !== dim / heads) {
    throw refuse(`head_dim ${json.head_dim} differs from hidden_size / num_attention_heads = ${dim / heads}`);
  }
  const dtypeName = json.torch_dtype ?? json.dtype;
  if (dtypeName !== undefined && !(String(dtypeName) in DTYPES)) {
    throw refuse(`torch_dtype ${JSON.stringify(dtypeName)} is not float32, bfloat16 or float16`);
  }
  const tie = json.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") throw refuse("tie_word_embeddings must be true or false");
  return {
    config: {
      vocabSize: int("vocab_size"),
      dim,
      layers: int("num_hidden_layers"),
      heads,
      kvHeads,
      hiddenDim: int("intermediate_size"),
      maxSeq: int("max_position_embeddings", 2048),
      normEps: num("rms_norm_eps", 1e-6),
      ropeTheta: num("rope_theta", 10000),
    },
    tieWordEmbeddings: tie,
    dtype: dtypeName === undefined ? undefined : DTYPES[String(dtypeName)],
    bosTokenId: typeof json.bos_token_id === "number" ? json.bos_token_id : undefined,
    eosTokenId: typeof json.eos_token_id === "number" || Array.isArray(json.eos_token_id)
      ? json.eos_token_id as number | number[]
      : undefined,
    json,
  };
}

/**
 * The name and shape of every weight a LLaMA of this config stores, in transformers' names
 * (`lm_head.weight` only when the embeddings are not tied).
 *
 * @example
 * ```ts
 * import { expectedWeights } from "./model_dir.ts";
 * import { assertEquals } from "@std/assert";
 * const c = { vocabSize: 10, dim: 8, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 16, maxSeq: 8, normEps: 1e-5,
 *   ropeTheta: 10000 };
 * const w = expectedWeights(c, true);
 * assertEquals(w.size, 11);
 * assertEquals(w.get("model.layers.0.self_attn.k_proj.weight"), [4, 8]);
 * ```
 */
export function expectedWeights(c: LlamaConfig, tieWordEmbeddings: boolean): Map<string, number[]> {
  const hd = c.dim / c.heads;
  const w = new Map<string, number[]>([["model.embed_tokens.weight", [c.vocabSize, c.dim]]]);
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    w.set(`${p}.input_layernorm.weight`, [c.dim]);
    w.set(`${p}.self_attn.q_proj.weight`, [c.heads * hd, c.dim]);
    w.set(`${p}.self_attn.k_proj.weight`, [c.kvHeads * hd, c.dim]);
    w.set(`${p}.self_attn.v_proj.weight`, [c.kvHeads * hd, c.dim]);
    w.set(`${p}.self_attn.o_proj.weight`, [c.dim, c.heads * hd]);
    w.set(`${p}.post_attention_layernorm.weight`, [c.dim]);
    w.set(`${p}.mlp.gate_proj.weight`, [c.hiddenDim, c.dim]);
    w.set(`${p}.mlp.up_proj.weight`, [c.hiddenDim, c.dim]);
    w.set(`${p}.mlp.down_proj.weight`, [c.dim, c.hiddenDim]);
  }
  w.set("model.norm.weight", [c.dim]);
  if (!tieWordEmbeddings) w.set("lm_head.weight", [c.vocabSize, c.dim]);
  return w;
}

// Buffers transformers may store that carry no weights (older checkpoints save RoPE's inv_freq).
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/** An opened model directory; {@linkcode ModelDir.dispose} closes its files. */
export interface ModelDir extends Disposable {
  /** The directory. */
  readonly path: string;
  /** The config and what else `config.json` said. */
  readonly hf: HfConfig;
  /** The weight files, in the order of the index (one for an unsharded model). */
  readonly files: readonly string[];
  /** Bytes of stored weights. */
  readonly bytes: number;
  /**
   * Reads one weight by name, as f32 (bf16 and f16 are widened exactly); `lm_head.weight` of a tied model
   * is the embedding. Pass to `new LlamaModel(config, { weights })`.
   */
  readonly weights: WeightSource;
  /** Closes the files. */
  dispose(): void;
}

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new InvalidArgumentError(`Cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw new InvalidArgumentError(`Cannot parse ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Opens a Hugging Face LLaMA model directory and checks it whole (config, names, shapes, dtypes) before
 * any weight is read. The weights are read later, one at a time, by `weights(name, shape)`.
 *
 * @throws {InvalidArgumentError} naming the file and the field or tensor that is wrong.
 *
 * @example
 * ```ts
 * import { LlamaModel, openModelDir } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using dir = await openModelDir(new URL("../../tests/data/hf/gqa_untied_f32", import.meta.url).pathname);
 * assertEquals([dir.hf.config.heads, dir.hf.config.kvHeads, dir.files.length], [4, 2, 1]);
 * using model = new LlamaModel(dir.hf.config, { mode: "qlora", rank: 4, weights: dir.weights });
 * assertEquals(model.config.vocabSize, 67);
 * ```
 */
export async function openModelDir(path: string): Promise<ModelDir> {
  const hf = hfConfig(readJson(`${path}/config.json`), `${path}/config.json`);
  const index = `${path}/model.safetensors.index.json`;
  let files: string[];
  let weightMap: Record<string, string> | null = null;
  try {
    Deno.statSync(index);
    const json = readJson(index);
    if (typeof json.weight_map !== "object" || json.weight_map === null) {
      throw new InvalidArgumentError(`Cannot use ${index}: no weight_map`);
    }
    weightMap = json.weight_map as Record<string, string>;
    files = [...new Set(Object.values(weightMap))];
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    files = ["model.safetensors"];
  }
  for (const f of files) {
    if (f.includes("/") || f.includes("..")) {
      throw new InvalidArgumentError(`Cannot use ${index}: file name ${f}`);
    }
    try {
      Deno.statSync(`${path}/${f}`);
    } catch (e) {
      throw new InvalidArgumentError(
        weightMap
          ? `Cannot open the model directory ${path}: ${f}, listed by model.safetensors.index.json, is missing`
          : `Cannot open the model directory ${path}: no model.safetensors or model.safetensors.index.json`,
        { cause: e },
      );
    }
  }
  const readers: SafetensorsReader[] = [];
  try {
    for (const f of files) readers.push(await SafetensorsReader.open(`${path}/${f}`));
  } catch (e) {
    readers.forEach((r) => r.close());
    throw e;
  }
  const fail = (what: string) => {
    readers.forEach((r) => r.close());
    return new InvalidArgumentError(`Cannot use the model directory ${path}: ${what}`);
  };
  // 4-bit weights in the layout `deno task quantize` writes (transformers' bnb-4bit serialization): a
  // weight with its companions (absmax, quant_map, nested constants, quant state) in the same file.
  const groups = new Map<string, { reader: SafetensorsReader; group: QuantGroup }>();
  for (const reader of readers) {
    for (const info of reader.tensors) {
      const m = STATE_KEY.exec(info.name);
      if (!m) continue;
      try {
        groups.set(m[1], {
          reader,
          group: parseGroup(reader, m[1], m[2] as "nf4" | "fp4", reader.readSync(info.name)),
        });
      } catch (e) {
        throw fail((e as Error).message);
      }
    }
  }
  const owned = new Set(
    [...groups.values()].flatMap(({ group }) => group.keys.filter((k) => k !== group.name)),
  );
  const where = new Map<string, { reader: SafetensorsReader; info: TensorInfo }>();
  for (const reader of readers) {
    for (const info of reader.tensors) {
      if (weightMap && weightMap[info.name] !== reader.path.slice(path.length + 1)) {
        throw fail(
          `${info.name} is in ${reader.path}, but the index says ${weightMap[info.name] ?? "nothing"}`,
        );
      }
      if (owned.has(info.name)) continue;
      if (where.has(info.name)) throw fail(`${info.name} is stored twice`);
      where.set(info.name, { reader, info });
    }
  }
  const expected = expectedWeights(hf.config, hf.tieWordEmbeddings);
  let bytes = 0;
  for (const [name, shape] of expected) {
    const found = where.get(name);
    if (!found) throw fail(`the weight ${name} is missing`);
    const q = groups.get(name)?.group;
    const stored = q ? q.shape : found.info.shape;
    if (stored.join() !== shape.join()) {
      throw fail(`${name} has shape [${stored.join(", ")}], the config implies [${shape.join(", ")}]`);
    }
    if (!q && !["F32", "BF16", "F16"].includes(found.info.dtype)) {
      throw fail(`${name} is ${found.info.dtype}, not F32, BF16 or F16 (nor 4-bit with a quant state)`);
    }
    bytes += q ? q.keys.reduce((sum, k) => sum + found.reader.info(k).byteLength, 0) : found.info.byteLength;
  }
  for (const name of where.keys()) {
    if (!expected.has(name) && !IGNORED.test(name)) {
      throw fail(
        name === "lm_head.weight"
          ? "lm_head.weight is stored although tie_word_embeddings is true"
          : `${name} is not a weight of a LLaMA with this config`,
      );
    }
  }
  const weights: WeightSource = (name, shape) => {
    const key = name === "lm_head.weight" && hf.tieWordEmbeddings ? "model.embed_tokens.weight" : name;
    const found = where.get(key);
    if (!found) return undefined;
    const q = groups.get(key);
    const stored = q ? q.group.shape : found.info.shape;
    if (stored.join() !== shape.join()) {
      throw new InvalidArgumentError(
        `Cannot load ${name}: shape [${stored.join(", ")}], expected [${shape.join(", ")}]`,
      );
    }
    if (q) {
      // Restored to f32 on the default device; a QLoRA model quantizes it again to the same NF4 codes.
      using quantized = loadQuantGroup(getDevice(), q.group, (k) => q.reader.readSync(k));
      using restored = quantized.dequantize({ dtype: "f32", category: "workspace" });
      return restored.toFloat32();
    }
    return floatValues(found.info.dtype, found.reader.readSync(key))!; // F32, BF16 or F16: checked above
  };
  const dispose = () => readers.forEach((r) => r.close());
  return { path, hf, files, bytes, weights, dispose, [Symbol.dispose]: dispose };
}

/**
 * The `config.json` of a LLaMA in transformers' terms: `base` (another config.json's fields: special
 * tokens, names) with the shape fields of `c`, the tie and the dtype.
 *
 * @example
 * ```ts
 * import { hfConfig, hfConfigJson, LLAMA_CONFIGS } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const json = hfConfigJson(LLAMA_CONFIGS["7b"], { dtype: "bf16" });
 * assertEquals(json.torch_dtype, "bfloat16");
 * assertEquals(hfConfig(json).config, LLAMA_CONFIGS["7b"]);
 * ```
 */
export function hfConfigJson(
  c: LlamaConfig,
  options: { base?: Record<string, unknown>; tieWordEmbeddings?: boolean; dtype?: StoredDtype } = {},
): Record<string, unknown> {
  const names: Record<StoredDtype, string> = { f32: "float32", bf16: "bfloat16", f16: "float16" };
  return {
    ...(options.base ?? { architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_act: "silu" }),
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeq,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: options.tieWordEmbeddings ?? false,
    torch_dtype: names[options.dtype ?? "bf16"],
  };
}

/** Options of {@linkcode saveModelDir}. */
export interface SaveModelDirOptions {
  /** The source's `config.json` to carry over (special tokens, names); the shape fields are the model's. */
  config?: Record<string, unknown>;
  /** Weight type of the file (default bf16, as transformers saves a LLaMA). */
  dtype?: "bf16" | "f32";
  /** Store no `lm_head.weight` (default: the source config's `tie_word_embeddings`, else false). */
  tieWordEmbeddings?: boolean;
}

/**
 * Writes a model as a Hugging Face model directory that transformers loads: `config.json` and
 * `model.safetensors`, one weight at a time (a merged LoRA weight where the model is merged, an NF4 base
 * dequantized), each file written atomically. Returns the files written.
 *
 * @example
 * ```ts
 * import { LlamaModel, openModelDir, saveModelDir } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 2 });
 * const dir = await Deno.makeTempDir();
 * try {
 *   await saveModelDir(model, dir);
 *   using back = await openModelDir(dir);
 *   assertEquals(back.hf.config, config);
 *   assertEquals(back.hf.dtype, "bf16");
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function saveModelDir(
  model: LlamaModel,
  dir: string,
  options: SaveModelDirOptions = {},
): Promise<string[]> {
  const c = model.config, dtype = options.dtype ?? "bf16";
  const tie = options.tieWordEmbeddings ?? options.config?.tie_word_embeddings === true;
  await Deno.mkdir(dir, { recursive: true });
  const shapes = expectedWeights(c, tie);
  const entries = [...shapes].map(([name, shape]) => ({
    name,
    dtype: safetensorsDtypeOf(dtype),
    shape,
  }));
  const weightsPath = `${dir}/model.safetensors`;
  await using writer = await SafetensorsWriter.create(weightsPath, entries, { format: "pt" });
  for (const [name, t] of model.weights()) {
    if (!shapes.has(name)) continue; // a tied LM head
    using cast = t.dtype === dtype ? null : t.cast(dtype);
    const values = (cast ?? t).toArray() as Float32Array | Uint16Array;
    await writer.write(name, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }
  await writer.close();
  const json = hfConfigJson(c, { base: options.config, tieWordEmbeddings: tie, dtype });
  const configPath = `${dir}/config.json`;
  await writeFileAtomic(configPath, JSON.stringify(json, null, 2) + "\n");
  return [configPath, weightsPath];
}
