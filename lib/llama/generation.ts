/**
 * Text generation with a key/value cache, one step at a time: the prompts' tokens go through the model at
 * once (prefill: compute-bound, like a training step's forward), then each new token alone (decode:
 * memory-bound, every weight read once per token), each sequence's keys and values kept in a
 * {@linkcode KVCache} that the ledger counts under `kv_cache`. {@linkcode Generation} is the async iterator
 * {@linkcode LlamaModel.generate} returns: a notebook streams its steps as they come, and its `stats`
 * give the prefill and decode speeds afterwards.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import { KVCache } from "./kv_cache.ts";
import type { LlamaModel } from "./model.ts";
import { Sampler, type SamplingOptions } from "./sampling.ts";
import { Tensor } from "../core/mod.ts";

/** A prompt: its token ids (BOS included where the model wants one). */
export type Prompt = ArrayLike<number>;

/** Options of {@linkcode LlamaModel.generate}: when to stop, how to pick tokens, how the cache grows. */
export interface GenerateOptions extends SamplingOptions {
  /** New tokens per sequence at most (default 32). */
  maxNewTokens?: number;
  /** Tokens that end a sequence (it is yielded, then the sequence stops), e.g. a tokenizer's `stopIds`. */
  stopTokens?: readonly number[];
  /** Id fed where a prompt is padded on the left and after a sequence stopped (default 0; never attended). */
  padToken?: number;
  /**
   * Only ids below this are picked (default: the model's vocabulary). A tokenizer with fewer ids than the
   * embedding has rows (a vocabulary padded to a round size) passes its own size, so that no id it cannot
   * decode comes out.
   */
  vocabLimit?: number;
  /**
   * Rows per sequence the cache allocates up front (default: the longest prompt + `maxNewTokens`). With
   * `growBy`, the cache starts at the prompt and grows in chunks of `growBy` rows up to this.
   */
  maxTokens?: number;
  /** Grow the cache in chunks of this many rows (0, default: allocate `maxTokens` rows at once). */
  growBy?: number;
}

/** One step: a new token for every sequence. */
export interface GenerationStep {
  /** 0 for the first new token (the prefill's), then 1, 2, ... */
  readonly step: number;
  /** The new token of each sequence, -1 where the sequence had already stopped. */
  readonly tokens: Int32Array;
  /** The first sequence's new token (`tokens[0]`): the one of a single prompt. */
  readonly token: number;
  /** Rows per sequence in the cache after this step. */
  readonly cachedTokens: number;
  /** Bytes the cache holds after this step (the ledger's `kv_cache`). */
  readonly cacheBytes: number;
}

/** Speeds and sizes of a finished generation. */
export interface GenerationStats {
  /** Sequences. */
  batch: number;
  /** Prompt tokens per sequence after left padding (the longest prompt). */
  promptTokens: number;
  /** Seconds of the prefill: the prompts' forward pass and the first token's choice. */
  prefillSeconds: number;
  /** Prompt tokens per second of prefill (batch · promptTokens / prefillSeconds). */
  prefillTokensPerSecond: number;
  /** Decode steps after the prefill (each one token per sequence still running). */
  decodeSteps: number;
  /** Seconds of the decode steps (model and sampling; not the time the consumer of the steps took). */
  decodeSeconds: number;
  /** New tokens per second of decode, every sequence counted (0 without a decode step). */
  decodeTokensPerSecond: number;
  /** New tokens per sequence (a stop token included). */
  newTokens: number[];
  /** Rows per sequence filled at the end (the prompt and every new token but the last). */
  cacheRows: number;
  /** Rows per sequence allocated at the end (what `cacheBytes` pays for). */
  cacheCapacity: number;
  /** Most bytes the cache held. */
  cacheBytes: number;
}

function checkInt(what: string, name: string, v: number, min: number): number {
  if (!Number.isSafeInteger(v) || v < min) {
    throw new InvalidArgumentError(`Cannot ${what}: ${name} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

/**
 * A generation in progress: an async iterator of {@linkcode GenerationStep}s (iterate it once), made by
 * {@linkcode LlamaModel.generate}. Everything is checked when it is made (prompt ids, lengths, options);
 * the cache is allocated when iteration starts and freed when it ends, also when the loop stops early.
 *
 * @example
 * ```ts
 * import { LlamaModel } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 2, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 32,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "qlora", rank: 2, std: 0.5 });
 * // Two prompts of different lengths in one batch, sampled: the same seed gives the same tokens.
 * const run = () => model.generate([[1, 2, 3], [4]], { maxNewTokens: 5, temperature: 0.8, seed: 3 });
 * const g = run();
 * const out = await g.collect();
 * assertEquals(out, await run().collect());
 * assertEquals(out.map((s) => s.length), [5, 5]);
 * assert(g.stats!.cacheBytes > 0 && g.stats!.decodeSteps === 4);
 * ```
 */
export class Generation implements AsyncIterable<GenerationStep> {
  /** The model generating. */
  readonly model: LlamaModel;
  /** Each sequence: its prompt, then the tokens generated so far. */
  readonly sequences: number[][];
  /** Prompt lengths (before padding). */
  readonly promptLengths: readonly number[];
  /** The options, defaults filled in. */
  readonly options: Readonly<Required<Omit<GenerateOptions, keyof SamplingOptions>>>;
  #samplers: Sampler[];
  #started = false;
  #cache: KVCache | null = null;
  #stats: GenerationStats | null = null;

  /** Checks the prompts and options; see {@linkcode LlamaModel.generate}. */
  constructor(model: LlamaModel, prompts: Prompt | readonly Prompt[], options: GenerateOptions = {}) {
    const what = "generate";
    const list: Prompt[] = isPromptList(prompts) ? [...prompts] : [prompts];
    if (list.length === 0) throw new InvalidArgumentError(`Cannot ${what}: no prompt`);
    const vocab = model.config.vocabSize;
    list.forEach((p, b) => {
      if (p.length === 0) throw new InvalidArgumentError(`Cannot ${what}: prompt ${b} is empty`);
      for (let i = 0; i < p.length; i++) {
        if (!Number.isInteger(p[i]) || p[i] < 0 || p[i] >= vocab) {
          throw new InvalidArgumentError(
            `Cannot ${what}: prompt ${b} token ${i} is ${p[i]}, outside the vocabulary [0, ${vocab})`,
          );
        }
      }
    });
    const maxNewTokens = checkInt(what, "maxNewTokens", options.maxNewTokens ?? 32, 1);
    const longest = Math.max(...list.map((p) => p.length));
    const maxTokens = checkInt(what, "maxTokens", options.maxTokens ?? longest + maxNewTokens, 1);
    if (longest + maxNewTokens > maxTokens || maxTokens > model.config.maxSeq) {
      throw new InvalidArgumentError(
        `Cannot ${what}: the longest prompt (${longest} tokens) + maxNewTokens ${maxNewTokens} needs ${
          longest + maxNewTokens
        } rows; maxTokens is ${maxTokens} and the model's maxSeq ${model.config.maxSeq}`,
      );
    }
    const stopTokens = [...(options.stopTokens ?? [])];
    for (const t of stopTokens) checkInt(what, "a stop token", t, 0);
    const padToken = options.padToken ?? 0;
    if (!Number.isInteger(padToken) || padToken < 0 || padToken >= vocab) {
      throw new InvalidArgumentError(`Cannot ${what}: padToken ${padToken} is outside [0, ${vocab})`);
    }
    const growBy = checkInt(what, "growBy", options.growBy ?? 0, 0);
    const vocabLimit = checkInt(what, "vocabLimit", options.vocabLimit ?? vocab, 1);
    if (vocabLimit > vocab) {
      throw new InvalidArgumentError(
        `Cannot ${what}: vocabLimit ${vocabLimit} is above the vocabulary ${vocab}`,
      );
    }
    this.model = model;
    this.sequences = list.map((p) => Array.from(p));
    this.promptLengths = Object.freeze(list.map((p) => p.length));
    this.options = Object.freeze({ maxNewTokens, stopTokens, padToken, vocabLimit, maxTokens, growBy });
    this.#samplers = list.map((_, b) => new Sampler({ ...options, seed: (options.seed ?? 0) + b }));
  }

  /** The cache while the generation runs (null before and after). */
  get cache(): KVCache | null {
    return this.#cache;
  }

  /** Speeds and sizes, once the generation has finished (null before). */
  get stats(): GenerationStats | null {
    return this.#stats;
  }

  /** Runs the generation to its end; returns the new tokens of each sequence (stop tokens included). */
  async collect(): Promise<number[][]> {
    for await (const _ of this) { /* each step extends this.sequences */ }
    return this.sequences.map((s, b) => s.slice(this.promptLengths[b]));
  }

  /** The steps; iterate once. */
  [Symbol.asyncIterator](): AsyncIterator<GenerationStep> {
    if (this.#started) {
      throw new InvalidArgumentError("Cannot generate: this generation was already iterated");
    }
    this.#started = true;
    return this.#run();
  }

  async *#run(): AsyncGenerator<GenerationStep> {
    const model = this.model, batch = this.sequences.length, o = this.options;
    const longest = Math.max(...this.promptLengths);
    const firstKey = this.promptLengths.map((n) => longest - n);
    const cache = new KVCache(model.config, {
      batch,
      capacity: o.growBy > 0 ? Math.min(o.maxTokens, Math.ceil(longest / o.growBy) * o.growBy) : o.maxTokens,
      maxCapacity: o.maxTokens,
      growBy: o.growBy,
      dtype: model.dtype,
      device: model.device,
      firstKey,
    });
    this.#cache = cache;
    const stopped = new Array<boolean>(batch).fill(false);
    const stops = new Set(o.stopTokens);
    let cacheBytes = cache.bytes, prefillSeconds = 0, decodeSeconds = 0, decodeSteps = 0;
    try {
      for (let step = 0; step < o.maxNewTokens && !stopped.every((s) => s); step++) {
        const t0 = performance.now();
        const n = step === 0 ? longest : 1;
        const ids = new Int32Array(batch * n).fill(o.padToken);
        this.sequences.forEach((seq, b) => {
          if (step === 0) ids.set(seq, b * n + firstKey[b]);
          else if (!stopped[b]) ids[b] = seq[seq.length - 1];
        });
        const chosen = new Int32Array(batch).fill(-1);
        {
          using tokens = Tensor.from(ids, { shape: [batch, n], device: model.device, category: "workspace" });
          using logits = model.infer(tokens, cache, { lastOnly: true });
          const rows = logits.toFloat32(), vocab = model.config.vocabSize;
          for (let b = 0; b < batch; b++) {
            if (stopped[b]) continue;
            const row = rows.subarray(b * vocab, b * vocab + o.vocabLimit);
            chosen[b] = this.#samplers[b].next(row, this.sequences[b]);
            this.sequences[b].push(chosen[b]);
            if (stops.has(chosen[b])) stopped[b] = true;
          }
        }
        const seconds = (performance.now() - t0) / 1000;
        if (step === 0) prefillSeconds = seconds;
        else decodeSeconds += seconds, decodeSteps++;
        cacheBytes = Math.max(cacheBytes, cache.bytes);
        this.#stats = this.#summary(
          longest,
          prefillSeconds,
          decodeSteps,
          decodeSeconds,
          cache,
          cacheBytes,
        );
        yield {
          step,
          tokens: chosen,
          token: chosen[0],
          cachedTokens: cache.length,
          cacheBytes: cache.bytes,
        };
      }
    } finally {
      cache.dispose();
      this.#cache = null;
    }
  }

  #summary(
    promptTokens: number,
    prefillSeconds: number,
    decodeSteps: number,
    decodeSeconds: number,
    cache: KVCache,
    cacheBytes: number,
  ): GenerationStats {
    const batch = this.sequences.length;
    const newTokens = this.sequences.map((s, b) => s.length - this.promptLengths[b]);
    const decoded = newTokens.reduce((a, n) => a + Math.max(0, n - 1), 0);
    return {
      batch,
      promptTokens,
      prefillSeconds,
      prefillTokensPerSecond: prefillSeconds > 0 ? batch * promptTokens / prefillSeconds : 0,
      decodeSteps,
      decodeSeconds,
      decodeTokensPerSecond: decodeSeconds > 0 ? decoded / decodeSeconds : 0,
      newTokens,
      cacheRows: cache.length,
      cacheCapacity: cache.capacity,
      cacheBytes,
    };
  }
}

function isPromptList(p: Prompt | readonly Prompt[]): p is readonly Prompt[] {
  return p.length > 0 && typeof (p as ArrayLike<unknown>)[0] !== "number";
}
