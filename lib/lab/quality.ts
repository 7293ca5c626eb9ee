/**
 * The quality study of `./deno task table` and notebook 03, after the QLoRA paper's Table 2: the pretrained tiny base with
 * its linear weights stored in bf16, NF4, NF4 + double quantization, FP4 and Int4; perplexity on held-out
 * State of the Union text before fine-tuning, and after LoRA (bf16 base) and QLoRA (each 4-bit base)
 * fine-tuning with one learning rate for all (chosen by a small sweep on other held-out batches), over
 * several seeds.
 *
 * Each data type is applied by rounding the base's linear weights through it (`quantize` then
 * `dequantize` of {@linkcode quantize}'s result, or a cast to bf16): the values a QLoRA layer computes with. Everything
 * else (embeddings, norms, LM head, adapters, activations) stays f32, so the data type is the only
 * difference between columns. The study checks this against the library's own QLoRA model (mode "qlora":
 * an NF4 + double-quantization base) before fine-tuning.
 *
 * @module
 */

import { type Batch, datasetSource, type TextDataset } from "../data/mod.ts";
import {
  type LlamaConfig,
  LlamaModel,
  MODULE_PATHS,
  TARGET_MODULES,
  type WeightSource,
} from "../llama/mod.ts";
import { quantize, type QuantType, Tensor } from "../core/mod.ts";
import { compare, type Difference, type Spread, spread } from "./stats.ts";
import { Trainer } from "../train/mod.ts";

/** The adapters of every run: rank 8, alpha 16, on all seven linear layers (the table's LoRA and QLoRA). */
const RANK = 8, ALPHA = 16;

/** A storage format of the base's linear weights. */
export type WeightFormat = "bf16" | "nf4" | "nf4-dq" | "fp4" | "int4";

/** Every format, in table order. */
export const WEIGHT_FORMATS: readonly WeightFormat[] = ["bf16", "nf4", "nf4-dq", "fp4", "int4"];

/** Column labels of the formats. */
export const FORMAT_LABELS: Record<WeightFormat, string> = {
  bf16: "bf16 (LoRA)",
  nf4: "NF4 (QLoRA)",
  "nf4-dq": "NF4 + DQ (QLoRA)",
  fp4: "FP4 (QLoRA)",
  int4: "Int4 (QLoRA)",
};

const QUANT: Record<Exclude<WeightFormat, "bf16">, { quantType: QuantType; doubleQuant: boolean }> = {
  nf4: { quantType: "nf4", doubleQuant: false },
  "nf4-dq": { quantType: "nf4", doubleQuant: true },
  fp4: { quantType: "fp4", doubleQuant: false },
  int4: { quantType: "int4", doubleQuant: false },
};

/** Options of {@linkcode runQuality}. */
export interface QualityOptions {
  /** Fine-tuning seeds per format (adapter initialisation and batch order). */
  seeds: number;
  /** Fine-tuning steps per run. */
  steps: number;
  /** Learning rates of the sweep; the best (mean dev perplexity of bf16 and NF4 + DQ, seed 0) is used. */
  lrs: number[];
  /** Held-out batches the perplexities are measured on (spread evenly over the validation text). */
  testBatches: number;
  /** Other held-out batches the sweep chooses the learning rate on. */
  devBatches: number;
  /** Sequences per batch. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** The defaults of `./deno task table` (about two minutes on 2 CPU cores). */
export const DEFAULT_QUALITY: QualityOptions = {
  seeds: 3,
  steps: 30,
  lrs: [3e-3, 1e-2, 3e-2],
  testBatches: 48,
  devBatches: 8,
  batch: 4,
  seq: 128,
};

/** One format's figures. */
export interface FormatQuality {
  /** Which format. */
  format: WeightFormat;
  /** Bits per parameter of the linear weights (constants included). */
  bits: number;
  /** Held-out perplexity of the base in this format, before fine-tuning (deterministic). */
  before: number;
  /** Held-out perplexity after fine-tuning, one per seed. */
  after: number[];
  /** Mean and standard deviation of `after`. */
  afterSpread: Spread;
}

/** What the study measured. */
export interface QualityResult {
  /** The options used (without the log). */
  options: Omit<QualityOptions, "log">;
  /** The learning rate used for every format. */
  lr: number;
  /** The sweep: dev perplexity after fine-tuning (seed 0) per learning rate and format. */
  sweep: { lr: number; bf16: number; nf4dq: number }[];
  /** Held-out tokens of the test and dev batches. */
  tokens: { test: number; dev: number };
  /** Per format, in {@linkcode WEIGHT_FORMATS} order. */
  formats: FormatQuality[];
  /** The library's own QLoRA model (NF4 + DQ) before fine-tuning, beside the rounded base's figure. */
  qloraCheck: { model: number; rounded: number };
  /** After fine-tuning, b against a: each 4-bit format against bf16, then NF4, NF4 + DQ and FP4 against Int4. */
  differences: { a: WeightFormat; b: WeightFormat; difference: Difference }[];
}

/** Hugging Face names of the base's linear weights. */
function linearNames(config: LlamaConfig): Set<string> {
  const names = new Set<string>();
  for (let i = 0; i < config.layers; i++) {
    for (const m of TARGET_MODULES) names.add(`model.layers.${i}.${MODULE_PATHS[m]}.weight`);
  }
  return names;
}

/**
 * The values of `values` (shape [out, in]) after storage in `format`, and the bits per parameter.
 *
 * @example
 * ```ts
 * import { roundTrip } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const w = Float32Array.from({ length: 64 * 64 }, (_, i) => Math.sin(i) / 10);
 * const nf4 = roundTrip(w, [64, 64], "nf4"), int4 = roundTrip(w, [64, 64], "int4");
 * assert(nf4.bits === 4.5 && nf4.values.some((v, i) => v !== w[i]));
 * assert(int4.values.length === w.length);
 * ```
 */
export function roundTrip(
  values: Float32Array,
  shape: readonly number[],
  format: WeightFormat,
): { values: Float32Array; bits: number } {
  using t = Tensor.from(values, { shape, category: "workspace" });
  if (format === "bf16") {
    using b = t.cast("bf16", { category: "workspace" });
    return { values: b.toFloat32(), bits: 16 };
  }
  using q = quantize(t, { ...QUANT[format], blocksize: 64 });
  using d = q.dequantize({ dtype: "f32", category: "workspace" });
  return { values: d.toFloat32(), bits: q.bitsPerParameter };
}

/** `weights` with the linear weights stored in `format` (rounded once, on first use). */
function inFormat(
  weights: WeightSource,
  config: LlamaConfig,
  format: WeightFormat,
): { source: WeightSource; bits: () => number } {
  const linear = linearNames(config);
  const cache = new Map<string, Float32Array>();
  let bits = 0, count = 0;
  const source: WeightSource = (name, shape) => {
    const values = weights(name, shape);
    if (!values || !linear.has(name)) return values;
    let r = cache.get(name);
    if (!r) {
      const rt = roundTrip(values, shape, format);
      cache.set(name, r = rt.values);
      bits += rt.bits * values.length;
      count += values.length;
    }
    return r;
  };
  return { source, bits: () => (count ? bits / count : NaN) };
}

/** Perplexity over `batches`: exp of the token-weighted mean cross-entropy. */
function perplexity(model: LlamaModel, batches: readonly Batch[]): number {
  let total = 0, rows = 0;
  for (const b of batches) {
    using x = Tensor.from(b.inputs, { shape: [b.batchSize, b.seqLen] });
    using y = Tensor.from(b.targets, { shape: [b.batchSize, b.seqLen] });
    total += model.forward(x, y, { backward: false }) * b.batchSize;
    model.releaseActivations();
    rows += b.batchSize;
  }
  return Math.exp(total / rows);
}

/** Test and dev batches, spread evenly over the validation text and disjoint. */
function heldOut(data: TextDataset, o: QualityOptions): { test: Batch[]; dev: Batch[] } {
  const all = [...data.validationBatches({ batchSize: o.batch, seqLen: o.seq })].filter((b) =>
    b.batchSize === o.batch
  );
  const want = o.testBatches + o.devBatches;
  if (all.length < want) {
    throw new RangeError(`Cannot run the quality study: ${all.length} held-out batches, ${want} wanted`);
  }
  const stride = all.length / want;
  const picked = Array.from({ length: want }, (_, i) => all[Math.floor(i * stride)]);
  // Alternate: every (want / devBatches)-th pick goes to dev, the rest to test.
  const every = want / o.devBatches;
  const dev: Batch[] = [], test: Batch[] = [];
  picked.forEach((b, i) => (dev.length < o.devBatches && i % every < 1 ? dev : test).push(b));
  return { test: test.slice(0, o.testBatches), dev };
}

/** Fine-tunes a LoRA model over `source` and returns it (the caller disposes it). */
async function fineTune(
  config: LlamaConfig,
  source: WeightSource,
  data: TextDataset,
  o: QualityOptions,
  seed: number,
  lr: number,
): Promise<LlamaModel> {
  const model = new LlamaModel(config, { mode: "lora", rank: RANK, alpha: ALPHA, weights: source, seed });
  try {
    using trainer = new Trainer(model, datasetSource(data, 100 + seed), {
      steps: o.steps,
      batchSize: o.batch,
      seq: o.seq,
      lr,
      optimizer: "adamw",
      evalBatches: 1,
    });
    await trainer.train();
    return model;
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/**
 * Runs the study on a pretrained base (`weights`, f32 values by Hugging Face name) and `data` (the
 * fine-tuning corpus, whose validation part is the held-out text).
 *
 * @example
 * ```ts ignore
 * import { ByteTokenizer, DEFAULT_QUALITY, loadDocuments, runQuality, TextDataset, tinyBase } from "../../mod.ts";
 * const base = await tinyBase({ path: "build/tiny-base.safetensors" });
 * const tokenizer = new ByteTokenizer({ padVocabTo: 64 });
 * const sotu = TextDataset.fromDocuments(await loadDocuments("sotu"), { tokenizer, seed: 0 });
 * const q = await runQuality(base.weights, base.config, sotu, { ...DEFAULT_QUALITY, seeds: 2 });
 * console.log(q.formats.map((f) => `${f.format} ${f.before.toFixed(3)}`));
 * ```
 */
export async function runQuality(
  weights: WeightSource,
  config: LlamaConfig,
  data: TextDataset,
  options: QualityOptions,
): Promise<QualityResult> {
  const { log: _log, ...plain } = options;
  const log = options.log ?? (() => {});
  const o = options;
  if (o.seeds < 1 || o.steps < 1 || o.lrs.length < 1 || o.devBatches < 1 || o.testBatches < 1) {
    throw new RangeError("Cannot run the quality study: seeds, steps, lrs, dev and test batches must be > 0");
  }
  const { test, dev } = heldOut(data, o);
  const sources = Object.fromEntries(WEIGHT_FORMATS.map((f) => [f, inFormat(weights, config, f)])) as Record<
    WeightFormat,
    ReturnType<typeof inFormat>
  >;
  // The learning rate: the best mean dev perplexity of LoRA (bf16) and QLoRA (NF4 + DQ), seed 0.
  const sweep: QualityResult["sweep"] = [];
  for (const lr of o.lrs) {
    const ppl = async (f: WeightFormat) => {
      using m = await fineTune(config, sources[f].source, data, o, 0, lr);
      return perplexity(m, dev);
    };
    const entry = { lr, bf16: await ppl("bf16"), nf4dq: await ppl("nf4-dq") };
    sweep.push(entry);
    log(
      `quality: sweep lr ${lr}: dev perplexity bf16 ${entry.bf16.toFixed(3)}, nf4-dq ${
        entry.nf4dq.toFixed(3)
      }`,
    );
  }
  const lr = sweep.reduce((a, b) => (b.bf16 + b.nf4dq < a.bf16 + a.nf4dq ? b : a)).lr;
  const formats: FormatQuality[] = [];
  for (const format of WEIGHT_FORMATS) {
    const { source, bits } = sources[format];
    let before: number;
    {
      using m = new LlamaModel(config, { mode: "lora", rank: RANK, alpha: ALPHA, weights: source, seed: 0 });
      before = perplexity(m, test);
    }
    const after: number[] = [];
    for (let seed = 0; seed < o.seeds; seed++) {
      using m = await fineTune(config, source, data, o, seed, lr);
      after.push(perplexity(m, test));
      await new Promise((r) => setTimeout(r, 0));
    }
    formats.push({ format, bits: bits(), before, after, afterSpread: spread(after) });
    log(
      `quality: ${format}: perplexity ${before.toFixed(3)} before, after ${
        after.map((p) => p.toFixed(3)).join(", ")
      }`,
    );
  }
  let model: number;
  {
    using m = new LlamaModel(config, { mode: "qlora", rank: RANK, alpha: ALPHA, weights, seed: 0 });
    model = perplexity(m, test);
  }
  const by = (f: WeightFormat) => formats.find((x) => x.format === f)!.after;
  const pairs: [WeightFormat, WeightFormat][] = [
    ["bf16", "nf4"],
    ["bf16", "nf4-dq"],
    ["bf16", "fp4"],
    ["bf16", "int4"],
    ["int4", "nf4"],
    ["int4", "nf4-dq"],
    ["int4", "fp4"],
  ];
  return {
    options: plain,
    lr,
    sweep,
    tokens: { test: o.testBatches * o.batch * o.seq, dev: o.devBatches * o.batch * o.seq },
    formats,
    qloraCheck: { model, rounded: formats.find((x) => x.format === "nf4-dq")!.before },
    differences: pairs.map(([a, b]) => ({ a, b, difference: compare(by(a), by(b)) })),
  };
}

const signed = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(3)}`;

/**
 * A difference of mean perplexities in words: the difference, the spread it is weighed against, and the
 * same-seed (paired) difference.
 *
 * @example
 * ```ts
 * import { compare, describeDifference } from "../../mod.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const text = describeDifference(compare([7.0, 7.1, 7.2], [7.5, 7.6, 7.7]));
 * assertStringIncludes(text, "+0.500 (larger than the spread 0.200; same seeds: +0.500");
 * ```
 */
export function describeDifference(d: Difference): string {
  const vs = d.resolved
    ? `larger than the spread ${d.spread.toFixed(3)}`
    : `within the spread ${d.spread.toFixed(3)}`;
  const paired = d.paired && d.paired.n > 1
    ? `; same seeds: ${signed(d.paired.mean)} +- ${d.paired.std.toFixed(3)}${
      d.pairedResolved ? "" : ", within its spread"
    }`
    : "";
  return `${signed(d.diff)} (${vs}${paired})`;
}

/**
 * The measured difference `b - a` after fine-tuning (one of {@linkcode QualityResult}'s pairs: each 4-bit
 * format against bf16, and NF4, NF4 + DQ and FP4 against Int4), or null for a pair not measured.
 *
 * @example
 * ```ts ignore
 * import { differenceOf } from "../../mod.ts";
 * console.log(differenceOf(result, "int4", "nf4")?.resolved); // result: what runQuality returned
 * ```
 */
export function differenceOf(q: QualityResult, a: WeightFormat, b: WeightFormat): Difference | null {
  return q.differences.find((x) => x.a === a && x.b === b)?.difference ?? null;
}

/**
 * The verdict on "NF4 preserves much higher accuracy than Int4", from the measured perplexities: it holds
 * only when NF4's perplexity after fine-tuning is lower than Int4's by more than the seed-to-seed spread.
 *
 * @example
 * ```ts ignore
 * import { nf4VersusInt4 } from "../../mod.ts";
 * console.log(nf4VersusInt4(result)); // result: what runQuality returned
 * ```
 */
export function nf4VersusInt4(q: QualityResult): string {
  const f = (x: WeightFormat) => q.formats.find((y) => y.format === x)!;
  const nf4 = f("nf4"), int4 = f("int4");
  const d = differenceOf(q, "int4", "nf4")!;
  const before = `before fine-tuning NF4 ${nf4.before.toFixed(3)} vs Int4 ${int4.before.toFixed(3)}`;
  const after = `after, NF4 - Int4 = ${describeDifference(d)}`;
  if (d.diff < 0 && d.resolved) {
    return `holds here: NF4's perplexity is lower than Int4's by more than the seed spread (${before}; ${after})`;
  }
  const direction = d.diff < 0 ? "lower, but not by more than the seed spread" : "not lower";
  const edge = d.diff < 0 && d.pairedResolved
    ? "with the same seeds NF4 is consistently lower, by less than the seed spread: a small edge, not " +
      "much higher accuracy"
    : "on this tiny base the 4-bit data types differ by less than fine-tuning noise";
  return `does not hold here: NF4's perplexity is ${direction} (${before}; ${after}); ${edge}`;
}
