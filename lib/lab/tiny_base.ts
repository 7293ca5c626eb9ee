/**
 * The pretrained base the notebooks and `deno task table` fine-tune: the tiny LLaMA trained in full mode on
 * the Brown corpus, cached in a safetensors file. {@linkcode tinyBase} loads the cache when it holds this
 * configuration, and otherwise pretrains one (and saves it when there was no file), so that everything
 * that starts from it works on a fresh clone.
 *
 * @module
 */

import { ByteTokenizer, datasetSource, loadDocuments, TextDataset } from "../data/mod.ts";
import { InvalidArgumentError } from "../base/mod.ts";
import {
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  loadWeights,
  ROPE_LAYOUT,
  saveWeights,
  type WeightSource,
} from "../llama/mod.ts";
import { type StepInfo, Trainer } from "../train/mod.ts";

/** Where `deno task table` and the notebooks cache the tiny base, relative to the repository root. */
export const TINY_BASE_FILE = "build/tiny-base.safetensors";

/** Options of {@linkcode tinyBase}. */
export interface TinyBaseOptions {
  /**
   * The cache: loaded when it holds `config` (and this version's RoPE layout); written after pretraining
   * when there was no file, or an earlier version's. A file with another configuration is left as it is.
   * `null`: pretrain and keep nothing.
   */
  path: string | null;
  /** The model (default `LLAMA_CONFIGS.tiny`); its vocabulary must hold the tokenizer's. */
  config?: LlamaConfig;
  /** Pretraining steps of 8 sequences of 128 tokens (default 300). */
  steps?: number;
  /** Tokenizes the Brown corpus (default: bytes, vocabulary padded to a multiple of 64). */
  tokenizer?: ByteTokenizer;
  /** Called after every pretraining step (a `TrainingProgress`'s `update`, say). */
  onStep?: (info: StepInfo) => void;
  /** What happened, in one line each (default: nothing). */
  log?: (line: string) => void;
}

/** What {@linkcode tinyBase} produced. */
export interface TinyBase {
  /** The model the weights are for. */
  config: LlamaConfig;
  /** The weights, by Hugging Face name (f32 host copies). */
  weights: WeightSource;
  /** Whether they came from the cache (false: pretrained in this call). */
  loaded: boolean;
  /** Where they came from, in words ("loaded from ...", "pretrained here ..."). */
  source: string;
}

/**
 * The tiny base: loaded from `path` when it holds `config`, else pretrained on Brown in full mode (batch 8,
 * 128 tokens, learning rate 3e-3, a seeded sampler) and saved to `path` when there was no file there.
 * Pretraining the default 300 steps takes about half a minute on two CPU cores.
 *
 * @example
 * ```ts ignore
 * import { LlamaModel, TINY_BASE_FILE, tinyBase } from "../../mod.ts";
 * const base = await tinyBase({ path: TINY_BASE_FILE, log: console.log });
 * using model = new LlamaModel(base.config, { mode: "qlora", weights: base.weights, rank: 8, alpha: 16 });
 * console.log(base.source, model.trainableParameters);
 * ```
 */
export async function tinyBase(options: TinyBaseOptions): Promise<TinyBase> {
  const config = options.config ?? LLAMA_CONFIGS.tiny;
  const steps = options.steps ?? 300;
  const tokenizer = options.tokenizer ?? new ByteTokenizer({ padVocabTo: 64 });
  const log = options.log ?? (() => {});
  const path = options.path;
  if (!Number.isInteger(steps) || steps < 1) {
    throw new InvalidArgumentError(
      `Cannot pretrain the tiny base: steps must be a positive integer, got ${steps}`,
    );
  }
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new InvalidArgumentError(
      `Cannot pretrain the tiny base: the tokenizer has ${tokenizer.vocabSize} tokens, the model ${config.vocabSize}`,
    );
  }
  let save = path !== null;
  if (path !== null && await exists(path)) {
    const loaded = await loadWeights(path);
    save = false;
    if (loaded.ropeLayout !== ROPE_LAYOUT) {
      log(`tiny base: ${path} has ${loaded.ropeLayout} RoPE pairs (an earlier version); pretraining again`);
      save = true; // our own cache, of no use to this version
    } else if (JSON.stringify(loaded.config) === JSON.stringify(config)) {
      log(`tiny base: loaded ${path}`);
      return { config, weights: loaded.weights, loaded: true, source: `loaded from ${path}` };
    } else {
      log(`tiny base: ${path} holds another configuration; pretraining one here (the file is kept)`);
    }
  }
  const brown = TextDataset.fromDocuments(await loadDocuments("brown"), { tokenizer, seed: 0 });
  log(`tiny base: pretraining on Brown (${brown}), full mode, ${steps} steps of 8x128 tokens`);
  using model = new LlamaModel(config, { mode: "full" });
  using trainer = new Trainer(model, datasetSource(brown, 0), {
    steps,
    batchSize: 8,
    seq: 128,
    lr: 3e-3,
    evalBatches: 4,
    onStep: options.onStep,
  });
  const r = await trainer.train();
  if (save && path !== null) {
    const slash = path.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
    await saveWeights(model, path);
  }
  const named = model.namedWeights();
  const source = `pretrained here on Brown (${steps} steps, validation loss ${r.evalLoss.toFixed(3)})` +
    (save ? `, saved to ${path}` : "");
  log(`tiny base: ${source}`);
  return { config, weights: (name) => named.get(name)?.values, loaded: false, source };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
