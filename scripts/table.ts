/**
 * `./deno task table [--model tiny|7b|13b|70b] [--layers N] [--seq N] [--batch N] [--steps N]
 * [--budget 6GiB] [--json] [--out DIR] [--max-seconds S] [--base WEIGHTS] [--pretrain-steps N]`:
 * measures what full fine-tuning, LoRA and QLoRA cost and deliver, and prints the comparison table (with
 * measured values) and the table of claims checked against the measurements; writes `DIR/report.html`
 * (offline, plotly.js inlined) and `DIR/table.json`.
 *
 * Two scales:
 * - tiny: the tiny LLaMA pretrained on the Brown corpus (loaded from `--base` when it exists with the
 *   tiny config, else pretrained for `--pretrain-steps`, and saved there when no file exists; `--base none`
 *   neither loads nor saves), then fine-tuned on State of the Union addresses in each mode for
 *   `--steps` steps (default 40; batch 8, seq 128): loss, tokens/s, ledger.
 * - the real shapes of `--model` (default 7b) with synthetic weights, one step of (`--batch`, `--seq`):
 *   every mode is measured on 1- and N-block real-size models (`--layers N`, default 2) and extrapolated
 *   linearly to the real layer count; then the whole model is measured (QLoRA first, then LoRA, full)
 *   where the memory of this machine and the time limit (`--max-seconds`, default 420) allow it. With
 *   `--model tiny` only the tiny scale runs, and `--seq`/`--batch` apply to it.
 *
 * Every memory figure comes from the ledger; the estimator (lib/estimate.ts) stands beside it. Progress
 * goes to stderr, the tables to stdout (`--json`: the whole result as JSON). The command sets
 * `OMP_WAIT_POLICY=passive` unless it is set: on a shared machine, spinning OpenMP threads slow small
 * ops down tenfold.
 *
 * @module
 */

import {
  AdamW,
  ByteTokenizer,
  CATEGORIES,
  type Category,
  datasetSource,
  type Device,
  estimateMemory,
  getDevice,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  loadDocuments,
  loadWeights,
  LoRALinear,
  type MemoryEstimate,
  OutOfMemoryError,
  PagedAdamW,
  parseBytes,
  quantize,
  ROPE_LAYOUT,
  saveWeights,
  Tensor,
  TextDataset,
  Trainer,
  type TrainMode,
  type WeightSource,
} from "../mod.ts";
import { writeFileAtomic } from "../lib/atomic_file.ts";
import { intFlags, parseArgs, runMain, UsageError } from "./_cli.ts";
import { claimsTable, comparisonTable, type Table, toMarkdown, writeReport } from "./_report.ts";

/** The model shapes the large scale can use. */
export type ShapeName = "7b" | "13b" | "70b";

/** A training setup of the large scale: full fine-tuning has two precision policies. */
export type Variant = "full" | "full-mixed" | "lora" | "qlora";

/** Every variant, in table order. */
export const VARIANTS: readonly Variant[] = ["full", "full-mixed", "lora", "qlora"];

/** What a variant is. */
export const VARIANT_LABELS: Record<Variant, string> = {
  full: "full fine-tuning (bf16 weights and gradients, f32 Adam m and v)",
  "full-mixed": "full fine-tuning, mixed precision (plus f32 master weights)",
  lora: "LoRA (frozen bf16 base, bf16 adapters, f32 Adam and master)",
  qlora: "QLoRA (NF4 base with double quantization, bf16 adapters, paged f32 Adam)",
};

/** Options of {@linkcode runTable}. */
export interface TableOptions {
  /** "tiny" (tiny scale only) or the real shapes measured beside it (default "7b"). */
  model: "tiny" | ShapeName;
  /** Real-size blocks of the larger partial model (default 2; the fit uses 1 and this many). */
  layers: number;
  /** Sequence length of the large-scale step (of the tiny runs with model "tiny"). */
  seq: number;
  /** Batch of the large-scale step (of the tiny runs with model "tiny"). */
  batch: number;
  /** Fine-tuning steps per mode at the tiny scale. */
  steps: number;
  /** Device memory budget in bytes (0: none). */
  budget: number;
  /** Whole-model runs start only when projected to end within this many seconds of the start. */
  maxSeconds: number;
  /** Pretrained tiny base: loaded when present with the tiny config, else pretrained and saved (null: neither). */
  base: string | null;
  /** Pretraining steps on Brown when there is no base to load. */
  pretrainSteps: number;
  /** Progress lines (default: stderr with the elapsed time). */
  log?: (line: string) => void;
}

/** The defaults of the command. */
export const DEFAULT_OPTIONS: TableOptions = {
  model: "7b",
  layers: 2,
  seq: 64,
  batch: 1,
  steps: 40,
  budget: 0,
  maxSeconds: 420,
  base: "build/tiny-base.safetensors",
  pretrainSteps: 300,
};

/** One measured run: ledger peaks during training steps, timings, parameter counts. */
export interface Measurement {
  /** Blocks of the model measured (or extrapolated to). */
  layers: number;
  /** Peak bytes per category during the training steps. */
  bytes: Record<Category, number>;
  /** Peak of the total during the training steps. */
  totalPeak: number;
  /** All weights, adapters included. */
  parameters: number;
  /** Trained weights. */
  trainable: number;
  /** Seconds to build the model. */
  buildSeconds: number;
  /** Seconds of one training step (forward, backward, optimizer), after a first step. */
  stepSeconds: number;
  /** Seconds of one forward pass without backward (merged adapters for LoRA, NF4 base for QLoRA). */
  inferSeconds: number;
  /** Tokens per step. */
  tokens: number;
}

/** The precisions of the tensors of a model, read from them. */
export interface Precisions {
  /** Base weight of the block linears: "bf16", "f32" or "nf4, 4.127 bits/param (double-quant)". */
  base: string;
  /** Adapters' dtype, or null without adapters. */
  adapter: string | null;
  /** Embeddings and LM head dtype. */
  embeddings: string;
}

/** A variant at the large scale: measured whole, extrapolated from blocks, or neither. */
export interface ShapeCell {
  /** Which variant. */
  variant: Variant;
  /** How the value was obtained. */
  how: "whole" | "extrapolated" | "does not fit" | "not run";
  /** Where the value comes from, in words. */
  source: string;
  /** Partial-model measurements (1 and N blocks). */
  points: Measurement[];
  /** The extrapolation of the points to the real layer count. */
  extrapolated: Measurement | null;
  /** The whole-model measurement. */
  whole: Measurement | null;
  /** The figures the table shows: whole when measured, else extrapolated. */
  value: Measurement | null;
  /** The estimator's figures for the whole model. */
  estimate: MemoryEstimate;
  /** Read from the measured model's tensors. */
  precisions: Precisions | null;
  /** Why something did not run or fit. */
  note?: string;
}

/** The large scale. */
export interface ShapeResult {
  /** Which shapes. */
  name: ShapeName;
  /** Their config. */
  config: LlamaConfig;
  /** Step size. */
  seq: number;
  /** Step batch. */
  batch: number;
  /** Blocks of the larger partial model (the fit uses 1 and this many). */
  partialLayers: number;
  /** Per variant. */
  cells: Record<Variant, ShapeCell>;
}

/** One mode at the tiny scale. */
export interface TinyRun {
  /** Mode. */
  mode: TrainMode;
  /** Peak ledger bytes per category during training. */
  bytes: Record<Category, number>;
  /** Peak total. */
  totalPeak: number;
  /** The estimator's figures. */
  estimate: MemoryEstimate;
  /** All weights. */
  parameters: number;
  /** Trained weights. */
  trainable: number;
  /** Training tokens per second: the median of the steps (evaluations not counted). */
  trainTokensPerSecond: number;
  /** Forward-only tokens per second, fastest of 5 (merged adapters for LoRA, NF4 base for QLoRA). */
  inferTokensPerSecond: number;
  /** Validation loss before fine-tuning. */
  lossBefore: number;
  /** Validation loss after. */
  lossAfter: number;
  /** Training loss per step, and evaluation loss where evaluated. */
  history: { step: number; loss: number; evalLoss?: number }[];
  /** Read from the model's tensors (null when it did not fit). */
  precisions: Precisions | null;
  /** Set when the run did not fit the budget. */
  oom?: string;
}

/** The tiny scale. */
export interface TinyResult {
  /** The config. */
  config: LlamaConfig;
  /** Where the base came from. */
  base: string;
  /** Sequence length. */
  seq: number;
  /** Batch. */
  batch: number;
  /** Steps per mode. */
  steps: number;
  /** Tokens of SOTU for training and validation. */
  tokens: { train: number; validation: number };
  /** One per mode. */
  runs: TinyRun[];
}

/** Storage of the 4-bit constants of one real-size weight, measured by quantizing it both ways. */
export interface ConstantsMeasurement {
  /** The weight's shape. */
  shape: [number, number];
  /** Constant bits per parameter without double quantization. */
  plainBits: number;
  /** With double quantization. */
  doubleQuantBits: number;
  /** All bits per parameter (codes and constants) with double quantization. */
  totalBits: number;
  /** Trainable parameters of a rank-8 adapter on that weight. */
  adapterParameters: number;
}

/** Everything one run of the command measured, and the two tables. */
export interface TableResult {
  /** The options used. */
  options: Omit<TableOptions, "log">;
  /** The device. */
  device: string;
  /** The tiny scale. */
  tiny: TinyResult;
  /** The large scale (null with model "tiny"). */
  shape: ShapeResult | null;
  /** Constants storage, measured on a 4096 x 4096 weight. */
  constants: ConstantsMeasurement;
  /** The comparison table. */
  comparison: Table;
  /** The claims table. */
  claims: Table;
  /** Seconds the run took. */
  seconds: number;
}

const RANK = 8, ALPHA = 16;

function zeroBytes(): Record<Category, number> {
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

function freeMemory(device: Device): number {
  const snap = device.memory();
  if (device.backend === "cuda" && snap.deviceFree > 0) return snap.deviceFree;
  return Deno.systemMemoryInfo().available;
}

function merge(model: LlamaModel): void {
  for (let i = 0; i < model.config.layers; i++) {
    for (const layer of Object.values(model.block(i))) if (layer instanceof LoRALinear) layer.merge();
  }
}

/**
 * Builds a model of `config` in `mode` (bf16, synthetic weights) and measures training steps at
 * (batch, seq) per optimizer policy (one policy per entry of `masters`; the model is shared), then
 * forward passes for inference: a warm-up, then `reps` timed ones of which the fastest counts (the
 * least disturbed by other work on the machine). Throws OutOfMemoryError when the budget is too small.
 */
function measureModel(
  config: LlamaConfig,
  mode: TrainMode,
  masters: boolean[],
  seq: number,
  batch: number,
  device: Device,
  reps: number,
): { measurements: Measurement[]; precisions: Precisions } {
  const t0 = performance.now();
  using model = new LlamaModel(config, { mode, dtype: "bf16", rank: RANK, alpha: ALPHA, seed: 1 });
  const buildSeconds = (performance.now() - t0) / 1000;
  const n = seq * batch;
  const ids = new Int32Array(n).map((_, i) => (i * 7919 + 13) % config.vocabSize);
  using tokens = Tensor.from(ids, { shape: [batch, seq] });
  using targets = Tensor.from(ids.map((v) => (v * 31 + 1) % config.vocabSize), { shape: [batch, seq] });
  const measurements: Measurement[] = [];
  for (const masterWeights of masters) {
    const Opt = mode === "qlora" ? PagedAdamW : AdamW;
    using opt = new Opt(model.trainables(), { lr: 1e-5, masterWeights, weightDecay: 0 });
    device.resetPeak();
    let stepSeconds = Infinity;
    for (let step = 0; step <= reps; step++) {
      const s0 = performance.now();
      model.zeroGrad();
      model.forward(tokens, targets);
      model.backward();
      opt.step();
      if (step > 0) stepSeconds = Math.min(stepSeconds, (performance.now() - s0) / 1000);
    }
    const snap = device.memory();
    measurements.push({
      layers: config.layers,
      bytes: { ...snap.peak },
      totalPeak: snap.totalPeak,
      parameters: model.parameters,
      trainable: model.trainableParameters,
      buildSeconds,
      stepSeconds,
      inferSeconds: 0,
      tokens: n,
    });
  }
  const precisions = precisionsOf(model);
  if (mode === "lora") merge(model);
  model.forward(tokens, targets, { backward: false }); // warm-up (first touch of merged weights)
  model.releaseActivations();
  let inferSeconds = Infinity;
  for (let i = 0; i < reps; i++) {
    const i0 = performance.now();
    model.forward(tokens, targets, { backward: false });
    model.releaseActivations();
    inferSeconds = Math.min(inferSeconds, (performance.now() - i0) / 1000);
  }
  for (const m of measurements) m.inferSeconds = inferSeconds;
  return { measurements, precisions };
}

/** Extrapolates a measurement linearly in the layer count from two partial models (a, b blocks). */
export function extrapolate(a: Measurement, b: Measurement, layers: number): Measurement {
  // Bytes and counts are exact: linear in the layer count, so a category that does not grow with the
  // blocks (embeddings, the LM head, the largest scratch buffer) stays what it is.
  const linear = (va: number, vb: number) =>
    Math.max(0, Math.round(vb + ((layers - b.layers) * (vb - va)) / (b.layers - a.layers)));
  const f = (va: number, vb: number) => {
    const slope = (vb - va) / (b.layers - a.layers);
    // Timings are noisy on a shared machine: a non-increasing pair scales in proportion instead.
    return slope > 0 ? vb + (layers - b.layers) * slope : vb * (layers / b.layers);
  };
  const bytes = zeroBytes();
  for (const c of CATEGORIES) bytes[c] = linear(a.bytes[c], b.bytes[c]);
  return {
    layers,
    bytes,
    totalPeak: linear(a.totalPeak, b.totalPeak),
    parameters: linear(a.parameters, b.parameters),
    trainable: linear(a.trainable, b.trainable),
    buildSeconds: f(a.buildSeconds, b.buildSeconds),
    stepSeconds: f(a.stepSeconds, b.stepSeconds),
    inferSeconds: f(a.inferSeconds, b.inferSeconds),
    tokens: b.tokens,
  };
}

function variantMode(v: Variant): TrainMode {
  return v === "full-mixed" ? "full" : v;
}

function estimateFor(config: LlamaConfig, v: Variant, seq: number, batch: number): MemoryEstimate {
  return estimateMemory(config, {
    mode: variantMode(v),
    seq,
    batch,
    dtype: "bf16",
    rank: RANK,
    masterWeights: v !== "full",
  });
}

function oomText(e: OutOfMemoryError, what: string): string {
  return `${what} ran out of the ${(e.details.budget / 2 ** 30).toFixed(2)} GiB budget`;
}

async function runShape(
  o: TableOptions,
  name: ShapeName,
  device: Device,
  started: number,
): Promise<ShapeResult> {
  const log = o.log!;
  const config = { ...LLAMA_CONFIGS[name] };
  const { seq, batch } = o;
  if (seq > config.maxSeq) throw new UsageError(`--seq ${seq} exceeds the model's maxSeq ${config.maxSeq}`);
  const cells = {} as Record<Variant, ShapeCell>;
  for (const v of VARIANTS) {
    cells[v] = {
      variant: v,
      how: "not run",
      source: "",
      points: [],
      extrapolated: null,
      whole: null,
      value: null,
      estimate: estimateFor(config, v, seq, batch),
      precisions: null,
    };
  }
  const N = Math.min(Math.max(2, o.layers), config.layers);
  const groups: { mode: TrainMode; variants: Variant[] }[] = [
    { mode: "full", variants: ["full", "full-mixed"] },
    { mode: "lora", variants: ["lora"] },
    { mode: "qlora", variants: ["qlora"] },
  ];
  // Partial models: 1 and N real-size blocks, as far as this machine's memory allows.
  for (const g of groups) {
    for (const layers of N < config.layers ? [1, N] : [N]) {
      const partial = { ...config, layers };
      const need = Math.max(...g.variants.map((v) => estimateFor(partial, v, seq, batch).peak));
      if (need > 0.8 * freeMemory(device)) {
        for (const v of g.variants) {
          cells[v].note = `a ${layers}-block model needs about ${(need / 1e9).toFixed(1)} GB (estimate), ` +
            `more than this machine has free`;
        }
        break;
      }
      log(
        `${name} ${g.mode}: ${layers} real-size block${
          layers > 1 ? "s" : ""
        }, step of ${batch}x${seq} tokens`,
      );
      try {
        const { measurements, precisions } = measureModel(
          partial,
          g.mode,
          g.mode === "full" ? [false, true] : [true],
          seq,
          batch,
          device,
          3,
        );
        g.variants.forEach((v, i) => {
          cells[v].points.push(measurements[i]);
          cells[v].precisions = precisions;
        });
        const m = measurements[measurements.length - 1];
        log(
          `  built in ${m.buildSeconds.toFixed(1)} s, step ${m.stepSeconds.toFixed(2)} s, forward ` +
            `${m.inferSeconds.toFixed(2)} s, peak ${(m.totalPeak / 1e9).toFixed(2)} GB`,
        );
      } catch (e) {
        if (!(e instanceof OutOfMemoryError)) throw e;
        for (const v of g.variants) {
          cells[v].how = "does not fit";
          cells[v].note = oomText(e, `a ${layers}-block model`);
        }
        log(`  does not fit: ${cells[g.variants[0]].note}`);
        break;
      }
      await new Promise((r) => setTimeout(r, 0));
    }
  }
  for (const v of VARIANTS) {
    const c = cells[v];
    if (c.points.length === 2) {
      c.extrapolated = extrapolate(c.points[0], c.points[1], config.layers);
      c.value = c.extrapolated;
      c.how = "extrapolated";
      c.source = `extrapolated linearly in the layer count from 1- and ${N}-block real-size models`;
    } else if (c.points.length === 1 && c.points[0].layers === config.layers) {
      c.whole = c.value = c.points[0];
      c.how = "whole";
      c.source = "measured whole";
    }
    if (c.value && o.budget && c.how === "extrapolated" && c.value.totalPeak > o.budget) {
      c.note = `extrapolated peak ${(c.value.totalPeak / 1e9).toFixed(1)} GB is over the budget`;
    }
  }
  // Whole models, cheapest first, where memory and the time limit allow.
  for (const g of [...groups].reverse()) {
    const c = cells[g.variants[0]];
    if (c.how !== "extrapolated" || !c.extrapolated) continue;
    const x = c.extrapolated;
    const projected = 1.3 * (x.buildSeconds + 2 * x.stepSeconds * g.variants.length + 2 * x.inferSeconds) + 5;
    const elapsed = (performance.now() - started) / 1000;
    const need = Math.max(...g.variants.map((v) => cells[v].estimate.peak));
    if (need > 0.8 * freeMemory(device)) {
      log(`${name} ${g.mode} whole: not run (needs about ${(need / 1e9).toFixed(1)} GB, more than is free)`);
      continue;
    }
    if (o.budget && Math.min(...g.variants.map((v) => cells[v].estimate.peak)) > 1.2 * o.budget) {
      log(`${name} ${g.mode} whole: not run (the estimate is far over the budget)`);
      continue;
    }
    if (elapsed + projected > o.maxSeconds) {
      log(
        `${name} ${g.mode} whole: not run (projected ${projected.toFixed(0)} s would end past ` +
          `--max-seconds ${o.maxSeconds})`,
      );
      continue;
    }
    log(
      `${name} ${g.mode}: the whole model, ${config.layers} blocks (projected ${projected.toFixed(0)} s; ` +
        `the build prints nothing until done)`,
    );
    try {
      const { measurements, precisions } = measureModel(
        config,
        g.mode,
        g.mode === "full" ? [false, true] : [true],
        seq,
        batch,
        device,
        1,
      );
      g.variants.forEach((v, i) => {
        const cell = cells[v];
        cell.whole = cell.value = measurements[i];
        cell.how = "whole";
        cell.source = `measured whole; the extrapolation from 1- and ${N}-block models predicted a ` +
          `${(cell.extrapolated!.totalPeak / 1e9).toFixed(2)} GB peak and ` +
          `${(cell.extrapolated!.tokens / cell.extrapolated!.stepSeconds).toFixed(1)} training tok/s`;
        cell.precisions = precisions;
        cell.note = undefined;
      });
      const m = measurements[0];
      log(
        `  built in ${m.buildSeconds.toFixed(1)} s, step ${m.stepSeconds.toFixed(2)} s, forward ` +
          `${m.inferSeconds.toFixed(2)} s, peak ${(m.totalPeak / 1e9).toFixed(2)} GB`,
      );
    } catch (e) {
      if (!(e instanceof OutOfMemoryError)) throw e;
      // The cell keeps its extrapolated figures, tagged as such; it never shows them under "does not fit".
      for (const v of g.variants) {
        cells[v].note = `the whole model does not fit here (${oomText(e, "the whole model")})`;
      }
      log(`  the whole model does not fit: ${cells[g.variants[0]].note}; the figures stay extrapolated`);
    }
    await new Promise((r) => setTimeout(r, 0));
  }
  return { name, config, seq, batch, partialLayers: N, cells };
}

/** Whether `path` exists (a file or anything else); other errors than "not found" propagate. */
async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function tinyBase(
  o: TableOptions,
  config: LlamaConfig,
  tokenizer: ByteTokenizer,
): Promise<{ weights?: WeightSource; base: string }> {
  const log = o.log!;
  let save = Boolean(o.base); // only where there is no file: another config's base is not overwritten
  if (o.base && await exists(o.base)) {
    const loaded = await loadWeights(o.base);
    save = false;
    if (loaded.ropeLayout !== ROPE_LAYOUT) {
      log(
        `tiny: ${o.base} was trained with ${loaded.ropeLayout} RoPE pairs (an earlier version); pretraining again`,
      );
      save = true; // our own cache, of no use to this version
    } else if (JSON.stringify(loaded.config) === JSON.stringify(config)) {
      log(`tiny: loaded the pretrained base from ${o.base}`);
      return { weights: loaded.weights, base: `loaded from ${o.base}` };
    } else {
      log(`tiny: ${o.base} has another config; pretraining a new base`);
    }
  }
  const docs = await loadDocuments("brown");
  const brown = TextDataset.fromDocuments(docs, { tokenizer, seed: 0 });
  log(`tiny: pretraining the base on Brown, full mode, ${o.pretrainSteps} steps of 8x128 tokens`);
  using model = new LlamaModel(config, { mode: "full" });
  using trainer = new Trainer(model, datasetSource(brown, 0), {
    steps: o.pretrainSteps,
    batchSize: 8,
    seq: 128,
    lr: 3e-3,
    evalBatches: 4,
    onStep: (i) => {
      if (i.step % 50 === 0 || i.step === i.steps) {
        log(`  pretrain ${i.step}/${i.steps} loss ${i.loss.toFixed(3)}`);
      }
    },
  });
  const r = await trainer.train();
  const values = model.namedWeights();
  if (save && o.base) {
    await Deno.mkdir(o.base.includes("/") ? o.base.slice(0, o.base.lastIndexOf("/")) : ".", {
      recursive: true,
    });
    await saveWeights(model, o.base);
  }
  const base =
    `pretrained here on Brown (${o.pretrainSteps} steps, validation loss ${r.evalLoss.toFixed(3)})` +
    (save ? `, saved to ${o.base}` : "");
  return { weights: (name) => values.get(name)?.values, base };
}

/** Fine-tunes the tiny base in one mode and measures it; throws OutOfMemoryError past the budget. */
async function tinyRun(
  o: TableOptions,
  mode: TrainMode,
  config: LlamaConfig,
  weights: WeightSource | undefined,
  sotu: TextDataset,
  seq: number,
  batch: number,
  estimate: MemoryEstimate,
): Promise<TinyRun> {
  const log = o.log!;
  using model = new LlamaModel(config, { mode, rank: RANK, alpha: ALPHA, weights, seed: 0 });
  const precisions = precisionsOf(model);
  using trainer = new Trainer(model, datasetSource(sotu, 1), {
    steps: o.steps,
    batchSize: batch,
    seq,
    evalEvery: Math.max(1, Math.floor(o.steps / 4)),
    evalBatches: 8,
    onStep: (i) => {
      if (i.evalLoss === undefined) return;
      log(
        `tiny ${mode}: step ${i.step}/${i.steps} loss ${i.loss.toFixed(3)} eval ${i.evalLoss.toFixed(3)} ` +
          `${Math.round(i.tokensPerSecond)} tok/s`,
      );
    },
  });
  const before = trainer.evaluate();
  log(
    `tiny ${mode}: fine-tuning on SOTU, ${o.steps} steps of ${batch}x${seq}, loss before ${
      before.loss.toFixed(3)
    }`,
  );
  const r = await trainer.train();
  const bytes = zeroBytes();
  for (const h of r.history) for (const c of CATEGORIES) bytes[c] = Math.max(bytes[c], h.memory.peak[c]);
  // Inference: forward passes only, with merged adapters for LoRA and the NF4 base for QLoRA.
  if (mode === "lora") merge(model);
  const ids = new Int32Array(seq * batch).map((_, i) => (i * 7919 + 13) % config.vocabSize);
  using x = Tensor.from(ids, { shape: [batch, seq] });
  using y = Tensor.from(ids, { shape: [batch, seq] });
  model.forward(x, y, { backward: false });
  model.releaseActivations();
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const i0 = performance.now();
    model.forward(x, y, { backward: false });
    model.releaseActivations();
    best = Math.min(best, (performance.now() - i0) / 1000);
  }
  const perStep = r.history.map((h) => h.tokensPerSecond).sort((a, b) => a - b);
  return {
    mode,
    bytes,
    totalPeak: r.peakBytes,
    estimate,
    parameters: model.parameters,
    trainable: model.trainableParameters,
    trainTokensPerSecond: perStep[Math.floor(perStep.length / 2)],
    inferTokensPerSecond: (seq * batch) / best,
    lossBefore: before.loss,
    lossAfter: r.evalLoss,
    history: r.history.map((h) => ({ step: h.step, loss: h.loss, evalLoss: h.evalLoss })),
    precisions,
  };
}

async function runTiny(o: TableOptions, device: Device): Promise<TinyResult> {
  const log = o.log!;
  const config = { ...LLAMA_CONFIGS.tiny };
  const tokenizer = new ByteTokenizer({ padVocabTo: 64 });
  const { weights, base } = await tinyBase(o, config, tokenizer);
  // The budget applies to fine-tuning and the large scale, not to pretraining the base.
  if (o.budget) device.setMemoryBudget(o.budget);
  const seq = o.model === "tiny" ? o.seq : 128, batch = o.model === "tiny" ? o.batch : 8;
  const sotu = TextDataset.fromDocuments(await loadDocuments("sotu"), { tokenizer, seed: 0 });
  const runs: TinyRun[] = [];
  for (const mode of ["full", "lora", "qlora"] as const) {
    const estimate = estimateMemory(config, { mode, seq, batch, dtype: "f32", rank: RANK });
    try {
      runs.push(await tinyRun(o, mode, config, weights, sotu, seq, batch, estimate));
    } catch (e) {
      if (!(e instanceof OutOfMemoryError)) throw e;
      const oom = "does not fit: " + oomText(e, `the tiny model (${mode})`);
      log(`tiny ${mode}: ${oom}`);
      runs.push({
        mode,
        bytes: zeroBytes(),
        totalPeak: 0,
        estimate,
        parameters: estimate.parameters,
        trainable: estimate.trainable,
        trainTokensPerSecond: 0,
        inferTokensPerSecond: 0,
        lossBefore: NaN,
        lossAfter: NaN,
        history: [],
        precisions: null,
        oom,
      });
    }
    await new Promise((r) => setTimeout(r, 0));
  }
  return {
    config,
    base,
    seq,
    batch,
    steps: o.steps,
    tokens: { train: sotu.train.length, validation: sotu.validation.length },
    runs,
  };
}

function measureConstants(device: Device): ConstantsMeasurement {
  const shape: [number, number] = [4096, 4096];
  using w = Tensor.randn(shape, { std: 0.02, dtype: "bf16", category: "workspace", seed: 3, device });
  using plain = quantize(w, { quantType: "nf4", blocksize: 64, doubleQuant: false });
  using dq = quantize(w, { quantType: "nf4", blocksize: 64, doubleQuant: true });
  const n = w.numel;
  // What the ledger holds (the f32 mean of double quantization is a host-side number, 4 bytes).
  const plainBytes = plain.absmax!.byteLength;
  const dqBytes = dq.nested!.codes.byteLength + dq.nested!.absmax.byteLength + 4;
  using lora = LoRALinear.fromWeight(w, { rank: RANK, alpha: ALPHA, base: "bf16" });
  return {
    shape,
    plainBits: (8 * plainBytes) / n,
    doubleQuantBits: (8 * dqBytes) / n,
    totalBits: dq.bitsPerParameter,
    adapterParameters: lora.trainableParameters,
  };
}

/**
 * Runs the experiments and builds both tables.
 *
 * @example
 * ```ts ignore
 * import { DEFAULT_OPTIONS, runTable } from "./table.ts";
 * const r = await runTable({ ...DEFAULT_OPTIONS, model: "tiny", steps: 3, seq: 32, batch: 2, base: null,
 *   pretrainSteps: 3 });
 * console.log(r.comparison.rows.length);
 * ```
 */
export async function runTable(options: TableOptions): Promise<TableResult> {
  const started = performance.now();
  const o: TableOptions = {
    ...options,
    log: options.log ?? ((line: string) => {
      const t = ((performance.now() - started) / 1000).toFixed(0).padStart(4);
      console.error(`[${t} s] ${line}`);
    }),
  };
  const device = getDevice();
  const previousBudget = device.memory().budget;
  try {
    o.log!(`device ${device}${o.budget ? `, budget ${(o.budget / 2 ** 30).toFixed(2)} GiB` : ""}`);
    const constants = measureConstants(device);
    const tiny = await runTiny(o, device);
    const shape = o.model === "tiny" ? null : await runShape(o, o.model, device, started);
    const seconds = (performance.now() - started) / 1000;
    const { log: _log, ...plain } = o;
    const partial = { options: plain, device: String(device), tiny, shape, constants, seconds };
    return { ...partial, comparison: comparisonTable(partial), claims: claimsTable(partial) };
  } finally {
    device.setMemoryBudget(previousBudget);
  }
}

const USAGE = "usage: ./deno task table [--model tiny|7b|13b|70b] [--layers N] [--seq N] [--batch N] " +
  "[--steps N] [--budget 6GiB] [--json] [--out DIR] [--max-seconds S] [--base WEIGHTS|none] [--pretrain-steps N]";

if (import.meta.main) {
  // On a shared machine, OpenMP threads that spin while waiting slow each other down tenfold on small ops;
  // sleeping threads cost a little on an idle machine. Read by the native library when it loads.
  if (!Deno.env.get("OMP_WAIT_POLICY")) Deno.env.set("OMP_WAIT_POLICY", "passive");
  await runMain(async () => {
    const { flags, positional } = parseArgs(Deno.args, {
      model: "string",
      layers: "string",
      seq: "string",
      batch: "string",
      steps: "string",
      budget: "string",
      json: "boolean",
      out: "string",
      "max-seconds": "string",
      base: "string",
      "pretrain-steps": "string",
    });
    if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
    const model = (flags.model ?? "7b") as TableOptions["model"];
    if (!["tiny", "7b", "13b", "70b"].includes(model)) {
      throw new UsageError("--model must be tiny, 7b, 13b or 70b");
    }
    const int = intFlags(flags);
    const tiny = model === "tiny";
    const options: TableOptions = {
      model,
      layers: int("layers", DEFAULT_OPTIONS.layers),
      seq: int("seq", tiny ? 128 : DEFAULT_OPTIONS.seq),
      batch: int("batch", tiny ? 8 : DEFAULT_OPTIONS.batch),
      steps: int("steps", DEFAULT_OPTIONS.steps),
      budget: flags.budget ? parseBytes(flags.budget as string) : 0,
      maxSeconds: int("max-seconds", DEFAULT_OPTIONS.maxSeconds),
      base: flags.base === "none" ? null : (flags.base as string | undefined) ?? DEFAULT_OPTIONS.base,
      pretrainSteps: int("pretrain-steps", DEFAULT_OPTIONS.pretrainSteps),
    };
    const out = (flags.out as string | undefined) ?? "build/report";
    const result = await runTable(options);
    await Deno.mkdir(out, { recursive: true });
    const report = `${out}/report.html`;
    await writeReport(result, report);
    await writeFileAtomic(`${out}/table.json`, JSON.stringify(result, null, 2) + "\n");
    if (flags.json) {
      console.log(JSON.stringify(result, null, 2));
    } else {
      console.log(toMarkdown(result.comparison));
      console.log();
      console.log(toMarkdown(result.claims));
      console.log();
      console.log(`${result.seconds.toFixed(0)} s on ${result.device}; report: ${report}`);
    }
  }, USAGE);
}
