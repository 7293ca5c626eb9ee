// Shared by the GGUF tests: a tiny LLaMA model directory in transformers' layout with the tiny test
// tokenizer, our own greedy decoding, and log-softmax rows to compare logits with llama.cpp's.
import {
  getDevice,
  type LlamaConfig,
  LlamaModel,
  saveModelDir,
  Tensor,
  unpermuteRope,
  type WeightSource,
} from "../mod.ts";
import { Xorshift128 } from "../lib/base/random.ts";

export const ROOT = new URL("..", import.meta.url).pathname;
export const TOKENIZER = `${ROOT}tests/data/tokenizer/tiny`;

/**
 * Rows multiple of 32 (every block type applies), 3 blocks, grouped-query attention, 320 vocabulary rows
 * (the tiny tokenizer with every byte's token has 282).
 */
export const CONFIG: LlamaConfig = {
  vocabSize: 320,
  dim: 64,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 128,
  maxSeq: 64,
  normEps: 1e-5,
  ropeTheta: 10000,
};

/** N(0, std²) matrices and 1 + N(0, 0.2²) norm scales, from a seed (so that no weight is trivially 1). */
export function randomWeights(seed: number, std: number): WeightSource {
  const rng = new Xorshift128(seed);
  const normal = () =>
    Math.sqrt(-2 * Math.log(1 - rng.nextFloat())) * Math.cos(2 * Math.PI * rng.nextFloat());
  return (_name, shape) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return shape.length === 1
      ? Float32Array.from({ length: n }, () => 1 + 0.2 * normal())
      : Float32Array.from({ length: n }, () => std * normal());
  };
}

/**
 * The tiny test tokenizer's tokenizer.json with a `<0xXX>` token for each of the 256 bytes (ids 29 to 281
 * for the 253 it lacks), as LLaMA's and Mistral's have them: llama.cpp's tokenizer aborts on a byte it has
 * no token for, where transformers falls back to `<unk>`.
 */
export async function tinyTokenizerWithBytes(): Promise<Record<string, unknown>> {
  const json = JSON.parse(await Deno.readTextFile(`${TOKENIZER}/tokenizer.json`));
  const vocab = json.model.vocab as Record<string, number>;
  let next = Math.max(...Object.values(vocab)) + 1;
  for (let b = 0; b < 256; b++) {
    const name = `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
    if (!(name in vocab)) vocab[name] = next++;
  }
  return json;
}

/**
 * Writes a model directory (bf16 weights, as transformers saves a LLaMA) with the tiny tokenizer, with
 * every byte's token (`bytes`, for llama.cpp: 282 tokens padded to the model's 320 rows) or as it is (29
 * tokens; then the config's vocabSize should be 64, as the tokenizer's config.json says).
 */
export async function tinyModelDir(
  dir: string,
  options: { config?: LlamaConfig; seed?: number; std?: number; bytes?: boolean } = {},
): Promise<void> {
  const config = options.config ?? CONFIG;
  const weights = randomWeights(options.seed ?? 7, options.std ?? 0.3);
  using model = new LlamaModel(config, { mode: "full", weights, device: getDevice("cpu") });
  await saveModelDir(model, dir, { config: { bos_token_id: 1, eos_token_id: 2, pad_token_id: 3 } });
  await Deno.copyFile(`${TOKENIZER}/tokenizer_config.json`, `${dir}/tokenizer_config.json`);
  if (options.bytes ?? true) {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(await tinyTokenizerWithBytes()));
  } else {
    await Deno.copyFile(`${TOKENIZER}/tokenizer.json`, `${dir}/tokenizer.json`);
  }
}

/** The logits of every position of `ids` (one sequence), as rows. */
export function logitRows(model: LlamaModel, ids: readonly number[]): Float32Array[] {
  using tokens = Tensor.from(Int32Array.from(ids), { shape: [1, ids.length], device: model.device });
  using logits = model.logits(tokens);
  const all = logits.toFloat32(), v = model.config.vocabSize;
  return ids.map((_, i) => all.slice(i * v, (i + 1) * v));
}

/** Index of the largest value (the first of equals). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Our greedy continuation of `prompt`: `n` tokens from `model.generate` (the KV-cache path, whose logits
 * tests/generation_test.ts checks against full forward passes).
 */
export async function greedyTokens(
  model: LlamaModel,
  prompt: readonly number[],
  n: number,
): Promise<number[]> {
  const [tokens] = await model.generate(prompt, { maxNewTokens: n }).collect();
  return tokens;
}

/** log-softmax of a row. */
export function logSoftmax(row: ArrayLike<number>): number[] {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const lse = max + Math.log(sum);
  return Array.from(row, (x) => x - lse);
}

/**
 * A weight source reading a GGUF export back with Hugging Face names: dequantized, q/k rows un-permuted
 * (the inverse of the export's name mapping given as `names`).
 */
export function ggufWeights(
  read: (ggufName: string) => Float32Array,
  names: (hf: string) => string,
  config: LlamaConfig,
): WeightSource {
  return (hf) => {
    const values = read(names(hf));
    if (hf.endsWith("q_proj.weight")) return unpermuteRope(values, config.heads, config.dim);
    if (hf.endsWith("k_proj.weight")) return unpermuteRope(values, config.kvHeads, config.dim);
    return values;
  };
}
