/**
 * The large scale of `./deno task table`: one training step of real LLaMA-2 shapes (synthetic bf16
 * weights) in every variant, measured on 1- and N-block models, extrapolated linearly in the layer count,
 * then measured whole where memory and the time limit allow.
 *
 * @module
 */

import {
  AdamW,
  CATEGORIES,
  type Device,
  estimateMemory,
  KVCache,
  ledgerCoverage,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  type MemoryEstimate,
  OutOfMemoryError,
  PagedAdamW,
  Tensor,
  type TrainMode,
} from "../../mod.ts";
import { UsageError } from "../_cli.ts";
import { ALPHA, freeMemory, merge, oomText, precisionsOf, RANK, zeroBytes } from "./common.ts";
import { measureGeneration } from "./inference.ts";
import type {
  InferenceTimes,
  Measurement,
  Precisions,
  ShapeCell,
  ShapeName,
  ShapeResult,
  TableOptions,
  Variant,
} from "./types.ts";
import { VARIANTS } from "./types.ts";

/**
 * Builds a model of `config` in `mode` (bf16, synthetic weights) and measures training steps at
 * (batch, seq) per optimizer policy (one policy per entry of `masters`; the model is shared), then
 * forward passes for inference: a warm-up, then `reps` timed ones of which the fastest counts (the
 * least disturbed by other work on the machine). Throws OutOfMemoryError when the budget is too small.
 */
async function measureModel(
  config: LlamaConfig,
  mode: TrainMode,
  masters: boolean[],
  seq: number,
  batch: number,
  device: Device,
  reps: number,
  o: Pick<TableOptions, "prefill" | "decodeSteps">,
): Promise<{ measurements: Measurement[]; precisions: Precisions }> {
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
    let stepSeconds = Infinity, coverage = NaN;
    for (let step = 0; step <= reps; step++) {
      const s0 = performance.now();
      model.zeroGrad();
      const before = step === reps ? device.memory() : null;
      model.forward(tokens, targets);
      if (before) coverage = ledgerCoverage(before, device.memory());
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
      inference: { prefill: [], decodeSeconds: 0, decodeSteps: 0, bytes: zeroBytes(), cacheRows: 0 },
      tokens: n,
      coverage,
    });
  }
  const precisions = precisionsOf(model);
  if (mode === "lora") merge(model);
  const inference = await measureGeneration(model, device, o, reps);
  for (const m of measurements) m.inference = inference;
  return { measurements, precisions };
}

/** The progress line's generation figures. */
function inferenceLine(m: Measurement): string {
  const t = m.inference;
  return t.prefill.map((p) => `prefill ${p.tokens} ${p.seconds.toFixed(2)} s`).join(", ") +
    `, decode ${(1000 * t.decodeSeconds).toFixed(0)} ms/token`;
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
    inference: extrapolateInference(a.inference, b.inference, f, linear),
    tokens: b.tokens,
    // Measured, not extrapolated: the lower of the two models'.
    coverage: Math.min(a.coverage ?? NaN, b.coverage ?? NaN),
  };
}

/** Generation's figures extrapolated as the step's: seconds by `f`, bytes by `linear`. */
function extrapolateInference(
  a: InferenceTimes,
  b: InferenceTimes,
  f: (va: number, vb: number) => number,
  linear: (va: number, vb: number) => number,
): InferenceTimes {
  const bytes = zeroBytes();
  for (const c of CATEGORIES) bytes[c] = linear(a.bytes[c], b.bytes[c]);
  return {
    prefill: b.prefill.map((p, i) => ({ tokens: p.tokens, seconds: f(a.prefill[i].seconds, p.seconds) })),
    decodeSeconds: f(a.decodeSeconds, b.decodeSeconds),
    decodeSteps: b.decodeSteps,
    bytes,
    cacheRows: b.cacheRows,
  };
}

/** Seconds of generation's measurements: the prefills and the decode steps. */
function inferenceSeconds(t: InferenceTimes): number {
  return t.prefill.reduce((s, p) => s + p.seconds, 0) + t.decodeSeconds * t.decodeSteps;
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
/** What the three steps of {@linkcode runShape} share. */
interface ShapeRun {
  o: TableOptions;
  name: ShapeName;
  config: LlamaConfig;
  device: Device;
  started: number;
  log: (line: string) => void;
  cells: Record<Variant, ShapeCell>;
  /** Blocks of the larger partial model. */
  N: number;
}

/** The models built per mode, and which variants (optimizer policies) each measures. */
const GROUPS: readonly { mode: TrainMode; variants: Variant[] }[] = [
  { mode: "full", variants: ["full", "full-mixed"] },
  { mode: "lora", variants: ["lora"] },
  { mode: "qlora", variants: ["qlora"] },
];

/**
 * Measures every variant of `name`'s shapes: partial models of 1 and N real-size blocks, the
 * extrapolation to the real layer count, then whole models where memory and the time limit allow.
 */
export async function runShape(
  o: TableOptions,
  name: ShapeName,
  device: Device,
  started: number,
): Promise<ShapeResult> {
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
  const run: ShapeRun = { o, name, config, device, started, log: o.log!, cells, N };
  await measurePartials(run);
  settleCells(run);
  await measureWholes(run);
  return { name, config, seq, batch, partialLayers: N, cells, kvCache: allocateKVCache(config, device) };
}

/**
 * The ledger's bytes of a bf16 KV cache for the model's whole context (allocated, not filled: the cache of
 * a 4,096-token generation without the minutes of running it), or undefined where it does not fit.
 */
function allocateKVCache(config: LlamaConfig, device: Device): { rows: number; bytes: number } | undefined {
  const before = device.memory().current.kv_cache;
  try {
    using cache = new KVCache(config, { capacity: config.maxSeq, dtype: "bf16", device });
    return { rows: cache.capacity, bytes: device.memory().current.kv_cache - before };
  } catch (e) {
    if (e instanceof OutOfMemoryError) return undefined;
    throw e;
  }
}

/** Partial models: 1 and N real-size blocks, as far as this machine's memory allows. */
async function measurePartials(run: ShapeRun): Promise<void> {
  const { o: { seq, batch }, name, config, device, log, cells, N } = run;
  for (const g of GROUPS) {
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
        const { measurements, precisions } = await measureModel(
          partial,
          g.mode,
          g.mode === "full" ? [false, true] : [true],
          seq,
          batch,
          device,
          3,
          run.o,
        );
        g.variants.forEach((v, i) => {
          cells[v].points.push(measurements[i]);
          cells[v].precisions = precisions;
        });
        const m = measurements[measurements.length - 1];
        log(
          `  built in ${m.buildSeconds.toFixed(1)} s, step ${m.stepSeconds.toFixed(2)} s, ${
            inferenceLine(m)
          }, ` +
            `peak ${(m.totalPeak / 1e9).toFixed(2)} GB`,
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
}

/** Each cell's value: the extrapolation from two partial models, or the one partial that is whole. */
function settleCells(run: ShapeRun): void {
  const { o, config, cells, N } = run;
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
}

/** Whole models, cheapest first, where memory and the time limit allow. */
async function measureWholes(run: ShapeRun): Promise<void> {
  const { o, o: { seq, batch }, name, config, device, started, log, cells, N } = run;
  for (const g of [...GROUPS].reverse()) {
    const c = cells[g.variants[0]];
    if (c.how !== "extrapolated" || !c.extrapolated) continue;
    const x = c.extrapolated;
    const projected =
      1.3 * (x.buildSeconds + 2 * x.stepSeconds * g.variants.length + 2 * inferenceSeconds(x.inference)) +
      5;
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
      const { measurements, precisions } = await measureModel(
        config,
        g.mode,
        g.mode === "full" ? [false, true] : [true],
        seq,
        batch,
        device,
        1,
        o,
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
        `  built in ${m.buildSeconds.toFixed(1)} s, step ${m.stepSeconds.toFixed(2)} s, ${
          inferenceLine(m)
        }, ` +
          `peak ${(m.totalPeak / 1e9).toFixed(2)} GB`,
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
}
