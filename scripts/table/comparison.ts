/**
 * The comparison table of `./deno task table`: the seed document's rows filled with measured values, then
 * measured rows by ledger category, at the main scale and the tiny scale.
 *
 * @module
 */

import {
  CATEGORIES,
  type Category,
  estimateInference,
  kvCacheBytes,
  type MemoryEstimate,
} from "../../mod.ts";
import { RANK } from "./common.ts";
import { fmtBytes, fmtCount, pct, signedPct, TAGS, tps } from "./format.ts";
import type { InferenceTimes, Precisions, ShapeCell, Table, TableInput, TinyRun, Variant } from "./types.ts";

/** The seed document's row labels, in order. */
export const SEED_ROWS = [
  "Trainable Parameters",
  "Base Model Precision",
  "Adapter Precision",
  "Memory Bottleneck Solved",
  "Inference Speed",
] as const;

/** The comparison table's columns. */
export const MODE_COLUMNS = ["Full Fine-Tuning", "LoRA", "QLoRA"] as const;

interface Column {
  bytes: Record<Category, number>;
  totalPeak: number;
  estimate: MemoryEstimate;
  parameters: number;
  trainable: number;
  precisions: Precisions | null;
  trainTps: number;
  /** Generation at batch 1 (null: not measured). */
  inference: InferenceTimes | null;
  tag: string;
  missing?: string;
  /** The ledger's coverage of the process's memory over a forward pass (NaN: not measured). */
  coverage: number;
}

function shapeColumn(cell: ShapeCell): Column {
  const v = cell.value;
  const zero = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<Category, number>;
  return {
    bytes: v?.bytes ?? zero,
    totalPeak: v?.totalPeak ?? 0,
    estimate: cell.estimate,
    parameters: v?.parameters ?? cell.estimate.parameters,
    trainable: v?.trainable ?? cell.estimate.trainable,
    precisions: cell.precisions,
    trainTps: v ? v.tokens / v.stepSeconds : 0,
    inference: v?.inference ?? null,
    tag: TAGS[cell.how],
    coverage: v?.coverage ?? NaN,
    missing: v ? undefined : `${cell.how}${cell.note ? `: ${cell.note}` : ""}`,
  };
}

function tinyColumn(run: TinyRun): Column {
  return {
    bytes: run.bytes,
    totalPeak: run.totalPeak,
    estimate: run.estimate,
    parameters: run.parameters,
    trainable: run.trainable,
    precisions: run.precisions,
    trainTps: run.trainTokensPerSecond,
    inference: run.inference,
    tag: "whole",
    missing: run.oom,
    coverage: NaN,
  };
}

const baseBytes = (b: Record<Category, number>) => b.weights + b.quantized_weights;

/** Prefill tokens per second of the `i`-th prompt length (0 when not measured). */
const prefillTps = (c: Column, i: number) => {
  const p = c.inference?.prefill[i];
  return p ? p.tokens / p.seconds : 0;
};
/** Decode tokens per second at batch 1 (0 when not measured). */
const decodeTps = (c: Column) => c.inference ? 1 / c.inference.decodeSeconds : 0;

/** QLoRA's figure against merged LoRA's, as "1.37x merged LoRA" (empty for the other columns). */
function ratioToMerged(cols: Column[], i: number, f: (c: Column) => number): string {
  const merged = f(cols[1]);
  return i === 2 && merged > 0 && f(cols[2]) > 0 ? `, ${(f(cols[2]) / merged).toFixed(2)}x merged LoRA` : "";
}

function memCell(col: Column, measured: number, estimated: number): string {
  if (col.missing) return col.missing;
  return `${fmtBytes(measured)} (est ${fmtBytes(estimated)}, ${signedPct(measured, estimated)})`;
}

type Groups = { "base weights": number; gradients: number; "optimizer states": number; activations: number };

function groups(col: Column): Groups {
  return {
    "base weights": col.bytes.weights + col.bytes.quantized_weights + col.bytes.quant_constants,
    gradients: col.bytes.gradients,
    "optimizer states": col.bytes.optimizer_states,
    activations: col.bytes.activations,
  };
}

/** Which memory groups a column cuts by half or more against the previous one, from the ledger. */
function bottleneck(cols: Column[], i: number): string {
  const col = cols[i];
  if (col.missing) return col.missing;
  const g = groups(col);
  if (i === 0) {
    const training = g.gradients + g["optimizer states"];
    return `none (the baseline): gradients + optimizer states are ${fmtBytes(training)}, ` +
      `${pct(training / col.totalPeak, 0)} of the ${fmtBytes(col.totalPeak)} peak`;
  }
  const prev = cols[i - 1];
  if (prev.missing) return "not compared: the previous column was not measured";
  const p = groups(prev);
  const solved = (Object.keys(g) as (keyof Groups)[]).filter((k) => p[k] > 0 && g[k] <= 0.5 * p[k]);
  if (solved.length === 0) return "none measured";
  const before = solved.reduce((s, k) => s + p[k], 0), after = solved.reduce((s, k) => s + g[k], 0);
  const largest = (Object.keys(g) as (keyof Groups)[]).reduce((a, b) => (g[a] >= g[b] ? a : b));
  return `${solved.join(" and ")}: ${fmtBytes(before)} -> ${fmtBytes(after)} (${signedPct(after, before)} ` +
    `vs ${MODE_COLUMNS[i - 1]}); largest left: ${largest}, ${pct(g[largest] / col.totalPeak, 0)} of the peak`;
}

function precisionCells(cols: Column[]): { base: string[]; adapter: string[] } {
  const base = cols.map((c, i) => {
    if (!c.precisions) return c.missing ?? "not measured";
    const frozen = i === 0 ? "trained" : "frozen";
    const rest = c.precisions.base === c.precisions.embeddings
      ? ""
      : `; embeddings, LM head, norms ${c.precisions.embeddings}`;
    return `${c.precisions.base} (${frozen})${rest}`;
  });
  const adapter = cols.map((c) => {
    if (!c.precisions) return c.missing ?? "not measured";
    return c.precisions.adapter
      ? `${c.precisions.adapter}, rank 8 on all 7 linears of every block`
      : "no adapters";
  });
  return { base, adapter };
}

/** What the row builders of {@linkcode comparisonTable} share. */
interface Columns {
  r: TableInput;
  /** The main scale's columns (full, LoRA, QLoRA). */
  cols: Column[];
  /** The tiny scale's columns. */
  tinyCols: Column[];
  /** Full fine-tuning in mixed precision (large scale only). */
  mixed: Column | null;
  /** " (7b)" at the large scale, "" at the tiny one. */
  at: string;
  /** A cell with its how-obtained tag at the large scale. */
  tagged: (c: Column, s: string) => string;
}

/** Builds the comparison table: the seed rows with measured values, then measured rows. */
export function comparisonTable(r: TableInput): Table {
  const shape = r.shape;
  const tinyCols = r.tiny.runs.map(tinyColumn);
  const cols = shape
    ? (["full", "lora", "qlora"] as Variant[]).map((v) => shapeColumn(shape.cells[v]))
    : tinyCols;
  const k: Columns = {
    r,
    cols,
    tinyCols,
    mixed: shape ? shapeColumn(shape.cells["full-mixed"]) : null,
    at: shape ? ` (${shape.name})` : "",
    tagged: (c, s) => (c.missing ? c.missing : shape ? `${s} [${c.tag}]` : s),
  };
  return {
    title: "Full fine-tuning vs LoRA vs QLoRA, measured",
    headers: ["", ...MODE_COLUMNS],
    rows: [...seedRows(k), ...memoryRows(k), ...budgetRows(k), ...speedAndLossRows(k)],
    notes: comparisonNotes(r),
  };
}

/** The seed document's rows: trainable parameters, precisions, the bottleneck solved, inference speed. */
function seedRows({ cols, tagged }: Columns): string[][] {
  const rows: string[][] = [];
  const prec = precisionCells(cols);
  rows.push([
    SEED_ROWS[0],
    ...cols.map((c) =>
      tagged(
        c,
        `${fmtCount(c.trainable)} of ${fmtCount(c.parameters)} (${pct(c.trainable / c.parameters, 2)})`,
      )
    ),
  ]);
  rows.push([SEED_ROWS[1], ...prec.base]);
  rows.push([SEED_ROWS[2], ...prec.adapter]);
  rows.push([SEED_ROWS[3], ...cols.map((_, i) => bottleneck(cols, i))]);
  const last = (c: Column) => (c.inference?.prefill.length ?? 1) - 1;
  rows.push([
    SEED_ROWS[4],
    ...cols.map((c, i) => {
      if (c.missing || !c.inference) return c.missing ?? "not measured";
      const dtype = cols[0].precisions?.base ?? "16-bit";
      const what = [
        `dense ${dtype}`,
        `adapters merged into the ${dtype} base`,
        "NF4 base and unmerged adapters, one fused call per layer: W decoded in registers at one token, in " +
        "cache-sized panels or tiles for a prompt",
      ][i];
      const prefill = (x: Column) => prefillTps(x, last(x));
      return tagged(
        c,
        `decode ${tps(decodeTps(c))}${ratioToMerged(cols, i, decodeTps)}; prefill of ` +
          `${c.inference.prefill[last(c)].tokens} tokens ${tps(prefill(c))}${
            ratioToMerged(cols, i, prefill)
          } ` +
          `(${what})`,
      );
    }),
  ]);
  return rows;
}

/** One row per ledger category group, and the peak; full fine-tuning's mixed precision beside it. */
function memoryRows({ cols, mixed, at, tagged }: Columns): string[][] {
  const rows: string[][] = [];
  const memRow = (
    label: string,
    m: (b: Record<Category, number>) => number,
    e: (x: MemoryEstimate) => number,
  ) => {
    const cells = cols.map((c) => tagged(c, memCell(c, m(c.bytes), e(c.estimate))));
    if (mixed && !mixed.missing && m(mixed.bytes) !== m(cols[0].bytes)) {
      cells[0] += `; mixed precision: ${memCell(mixed, m(mixed.bytes), e(mixed.estimate))}`;
    }
    rows.push([label + at, ...cells]);
  };
  memRow("Memory: base weights", baseBytes, (e) => e.bytes.weights + e.bytes.quantized_weights);
  memRow("Memory: quant constants", (b) => b.quant_constants, (e) => e.bytes.quant_constants);
  memRow("Memory: adapters", (b) => b.adapters, (e) => e.bytes.adapters);
  memRow("Memory: gradients", (b) => b.gradients, (e) => e.bytes.gradients);
  memRow("Memory: optimizer states", (b) => b.optimizer_states, (e) => e.bytes.optimizer_states);
  memRow("Memory: activations (peak)", (b) => b.activations, (e) => e.bytes.activations);
  const peakCells = cols.map((c) => tagged(c, memCell(c, c.totalPeak, c.estimate.peak)));
  if (mixed && !mixed.missing) {
    peakCells[0] += `; mixed precision: ${memCell(mixed, mixed.totalPeak, mixed.estimate.peak)}`;
  }
  rows.push([`Memory: peak${at}`, ...peakCells]);
  return rows;
}

/** Whether each column fits the `--budget` (none without one). */
function budgetRows({ r, cols, tinyCols, at }: Columns): string[][] {
  const rows: string[][] = [];
  const shape = r.shape;
  const budget = r.options.budget;
  if (budget) {
    const label = `Fits the ${(budget / 2 ** 30).toFixed(2)} GiB budget`;
    const fits = (c: Column, how: string) => {
      if (c.missing) return `no: ${c.missing.replace(/^does not fit: /, "")}`;
      const over = c.totalPeak > budget;
      if (how === "whole") return over ? "no" : `yes: ran whole within it (peak ${fmtBytes(c.totalPeak)})`;
      return over
        ? `no: extrapolated peak ${fmtBytes(c.totalPeak)} is over it`
        : `yes (extrapolated peak ${fmtBytes(c.totalPeak)})`;
    };
    if (shape) {
      const hows = (["full", "lora", "qlora"] as Variant[]).map((v) => shape.cells[v].how);
      rows.push([label + at, ...cols.map((c, i) => fits(c, hows[i]))]);
    }
    rows.push([`${label} (tiny)`, ...tinyCols.map((c) => fits(c, "whole"))]);
  }
  return rows;
}

/** Tokens per second at both scales, the tiny peak, and the tiny validation loss. */
function speedAndLossRows({ r, cols, tinyCols, at, tagged }: Columns): string[][] {
  const rows: string[][] = [];
  const shape = r.shape;
  if (shape) {
    rows.push([`Training tokens/s${at}`, ...cols.map((c) => tagged(c, tps(c.trainTps)))]);
    for (const [i, p] of (cols.find((c) => c.inference)?.inference?.prefill ?? []).entries()) {
      rows.push([
        `Prefill tokens/s${at} (${p.tokens} tokens, batch 1)`,
        ...cols.map((c, j) =>
          c.inference
            ? tagged(c, tps(prefillTps(c, i)) + ratioToMerged(cols, j, (x) => prefillTps(x, i)))
            : c.missing ?? "-"
        ),
      ]);
    }
    rows.push([
      `Decode tokens/s${at} (batch 1, KV cache)`,
      ...cols.map((c, j) =>
        c.inference ? tagged(c, tps(decodeTps(c)) + ratioToMerged(cols, j, decodeTps)) : c.missing ?? "-"
      ),
    ]);
    rows.push([
      `Memory: KV cache${at}`,
      ...cols.map((c, j) => {
        if (!c.inference) return c.missing ?? "-";
        const rows = c.inference.cacheRows, mode = (["full", "lora", "qlora"] as const)[j];
        const est = estimateInference(shape.config, { mode, context: rows, prompt: rows - 1, rank: RANK });
        const max = shape.kvCache;
        const whole = max
          ? `; ${max.rows.toLocaleString("en-US")} tokens: ${fmtBytes(max.bytes)} (est ${
            fmtBytes(kvCacheBytes(shape.config, { rows: max.rows, dtype: "bf16" }))
          }, allocated)`
          : "";
        return tagged(
          c,
          `${memCell(c, c.inference.bytes.kv_cache, est.bytes.kv_cache)} at ${rows} tokens${whole}`,
        );
      }),
    ]);
    const covered = (c: Column) =>
      c.missing ??
        (Number.isFinite(c.coverage)
          ? `${pct(c.coverage, 2)} of what the process took over a forward pass`
          : "not measured");
    rows.push([`Ledger coverage${at} (measured)`, ...cols.map(covered)]);
    rows.push([
      "Memory: peak (tiny)",
      ...tinyCols.map((c) => memCell(c, c.totalPeak, c.estimate.peak)),
    ]);
  }
  const tiny = r.tiny;
  rows.push([
    `Training tokens/s (tiny, ${tiny.batch}x${tiny.seq})`,
    ...tinyCols.map((c) => c.missing ?? tps(c.trainTps)),
  ]);
  rows.push([
    `Prefill tokens/s (tiny, ${
      tinyCols.find((c) => c.inference)?.inference?.prefill[0].tokens ?? 64
    } tokens)`,
    ...tinyCols.map((c) => c.missing ?? tps(prefillTps(c, 0))),
  ]);
  rows.push(["Decode tokens/s (tiny, batch 1)", ...tinyCols.map((c) => c.missing ?? tps(decodeTps(c)))]);
  rows.push([
    `Validation loss (tiny, SOTU, before -> after ${tiny.steps} steps)`,
    ...tiny.runs.map((t) => t.oom ?? `${t.lossBefore.toFixed(3)} -> ${t.lossAfter.toFixed(3)}`),
  ]);
  return rows;
}

/** The notes under the comparison table: scale, how each cell was obtained, timings, the tiny base. */
function comparisonNotes(r: TableInput): string[] {
  const shape = r.shape, tiny = r.tiny;
  const scale = shape
    ? `LLaMA-2-${shape.name.toUpperCase()} shapes (synthetic bf16 weights), one step of ${shape.batch}x${shape.seq} tokens`
    : `tiny LLaMA (f32), ${r.tiny.batch}x${r.tiny.seq} tokens`;
  const notes = [
    `Main scale: ${scale}. Memory in decimal GB/MB from the ledger (peak per category during ` +
    `the training steps); "est" is lib/estimate/estimate.ts for the same setup, with the difference.`,
  ];
  if (shape) {
    for (const v of ["full", "full-mixed", "lora", "qlora"] as Variant[]) {
      const c = shape.cells[v];
      notes.push(`${v}: ${c.how}${c.source ? ` (${c.source})` : ""}${c.note ? `; ${c.note}` : ""}.`);
    }
    notes.push(
      `[extrapolated] = measured on models of 1 and ${shape.partialLayers} real-size blocks (real embeddings and ` +
        `LM head), extrapolated linearly to ${shape.config.layers} blocks (bytes and seconds); [whole] = the ` +
        `whole model measured.`,
      "Ledger coverage: over the forward pass of the last measured step, the growth of the ledger's total " +
        "against the growth of the memory the process holds (its native heap by glibc's mallinfo2 on the CPU, " +
        "which also sees oneDNN's and Deno's allocations; the driver's used bytes on CUDA); below 100%, " +
        "memory the ledger did not see; slightly above, other memory the process released meanwhile.",
      "Timings: the fastest of 3 repeats on the partial models (1 on whole models), after a warm-up step; " +
        "other work on a shared machine makes them noisy, and extrapolated seconds are the least precise " +
        "figures here (full fine-tuning's forward pass is the same dense computation as merged LoRA's).",
    );
  }
  notes.push(
    `Tiny: base ${tiny.base}; fine-tuned on ${tiny.tokens.train.toLocaleString("en-US")} SOTU tokens, ` +
      `validation on ${tiny.tokens.validation.toLocaleString("en-US")} held-out tokens; f32 weights.`,
  );
  return notes;
}
