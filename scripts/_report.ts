/**
 * The tables and the HTML report of `./deno task table` (see table.ts): the comparison table (the seed
 * document's rows, filled with measured values, then measured rows by ledger category), the claims
 * table, markdown and HTML renderings, and an offline report with plotly charts.
 *
 * @module
 */

import {
  CATEGORIES,
  type Category,
  estimateMemory,
  type Figure,
  formatBytes,
  gpuProfile,
  lineChart,
  LLAMA_CONFIGS,
  type MemoryEstimate,
  plot,
  type PlotlyTrace,
  willItFit,
} from "../mod.ts";
import { writeFileAtomic } from "../lib/atomic_file.ts";
import type { Measurement, Precisions, ShapeCell, TableResult, TinyRun, Variant } from "./table.ts";

/** A table: a header row and rows of cells, plus notes printed under it. */
export interface Table {
  /** Title. */
  title: string;
  /** Column headers. */
  headers: string[];
  /** Rows of cells (the first cell is the row label). */
  rows: string[][];
  /** Footnotes. */
  notes: string[];
}

/** What the tables are built from: a run's result before the tables. */
export type TableInput = Omit<TableResult, "comparison" | "claims">;

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

/** Tolerance of "about X" claims. */
const TOLERANCE = 0.2;

/** "13.48 GB", "40.0 MB", "512 kB" (decimal units, as the claims use). */
export function fmtBytes(bytes: number): string {
  const a = Math.abs(bytes);
  if (a >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (a >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (a >= 1e3) return `${(bytes / 1e3).toFixed(0)} kB`;
  return `${bytes} B`;
}

function fmtCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function pct(x: number, digits = 1): string {
  return `${(100 * x).toFixed(digits)}%`;
}

function signedPct(measured: number, estimate: number): string {
  if (estimate === 0) return measured === 0 ? "=" : "n/a";
  const d = (measured - estimate) / estimate;
  return `${d >= 0 ? "+" : ""}${(100 * d).toFixed(1)}%`;
}

function tps(x: number): string {
  return x >= 100 ? `${Math.round(x).toLocaleString("en-US")} tok/s` : `${x.toFixed(1)} tok/s`;
}

/** One column of the comparison table: figures at the main scale. */
interface Column {
  bytes: Record<Category, number>;
  totalPeak: number;
  estimate: MemoryEstimate;
  parameters: number;
  trainable: number;
  precisions: Precisions | null;
  trainTps: number;
  inferTps: number;
  tag: string;
  missing?: string;
}

const TAGS: Record<ShapeCell["how"], string> = {
  whole: "whole",
  extrapolated: "extrapolated",
  "does not fit": "does not fit",
  "not run": "not run",
};

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
    inferTps: v ? v.tokens / v.inferSeconds : 0,
    tag: TAGS[cell.how],
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
    inferTps: run.inferTokensPerSecond,
    tag: "whole",
    missing: run.oom,
  };
}

const baseBytes = (b: Record<Category, number>) => b.weights + b.quantized_weights;

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

/** Builds the comparison table: the seed rows with measured values, then measured rows. */
export function comparisonTable(r: TableInput): Table {
  const shape = r.shape;
  const tinyCols = r.tiny.runs.map(tinyColumn);
  const cols = shape
    ? (["full", "lora", "qlora"] as Variant[]).map((v) => shapeColumn(shape.cells[v]))
    : tinyCols;
  const mixed = shape ? shapeColumn(shape.cells["full-mixed"]) : null;
  const scale = shape
    ? `LLaMA-2-${shape.name.toUpperCase()} shapes (synthetic bf16 weights), one step of ${shape.batch}x${shape.seq} tokens`
    : `tiny LLaMA (f32), ${r.tiny.batch}x${r.tiny.seq} tokens`;
  const tagged = (c: Column, s: string) => (c.missing ? c.missing : shape ? `${s} [${c.tag}]` : s);
  const prec = precisionCells(cols);
  const rows: string[][] = [];
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
  const merged = cols[1].inferTps;
  rows.push([
    SEED_ROWS[4],
    ...cols.map((c, i) => {
      if (c.missing) return c.missing;
      const dtype = cols[0].precisions?.base ?? "16-bit";
      const what =
        [`dense ${dtype}`, `adapters merged into the ${dtype} base`, "NF4 base dequantized tile by tile"][i];
      const ratio = i === 2 && merged > 0 ? `, ${(c.inferTps / merged).toFixed(2)}x merged LoRA` : "";
      return tagged(c, `${tps(c.inferTps)} (${what}${ratio})`);
    }),
  ]);
  const at = shape ? ` (${shape.name})` : "";
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
  if (shape) {
    rows.push([`Training tokens/s${at}`, ...cols.map((c) => tagged(c, tps(c.trainTps)))]);
    rows.push([`Inference tokens/s${at}`, ...cols.map((c) => tagged(c, tps(c.inferTps)))]);
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
  rows.push(["Inference tokens/s (tiny)", ...tinyCols.map((c) => c.missing ?? tps(c.inferTps))]);
  rows.push([
    `Validation loss (tiny, SOTU, before -> after ${tiny.steps} steps)`,
    ...tiny.runs.map((t) => t.oom ?? `${t.lossBefore.toFixed(3)} -> ${t.lossAfter.toFixed(3)}`),
  ]);
  const notes = [
    `Main scale: ${scale}. Memory in decimal GB/MB from the ledger (peak per category during ` +
    `the training steps); "est" is lib/estimate.ts for the same setup, with the difference.`,
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
      "Timings: the fastest of 3 repeats on the partial models (1 on whole models), after a warm-up step; " +
        "other work on a shared machine makes them noisy, and extrapolated seconds are the least precise " +
        "figures here (full fine-tuning's forward pass is the same dense computation as merged LoRA's).",
    );
  }
  notes.push(
    `Tiny: base ${tiny.base}; fine-tuned on ${tiny.tokens.train.toLocaleString("en-US")} SOTU tokens, ` +
      `validation on ${tiny.tokens.validation.toLocaleString("en-US")} held-out tokens; f32 weights.`,
  );
  return {
    title: "Full fine-tuning vs LoRA vs QLoRA, measured",
    headers: ["", ...MODE_COLUMNS],
    rows,
    notes,
  };
}

interface Figure7B {
  value: number;
  text: string;
  estimated: boolean;
}

/** A figure of the 7B shapes: measured when the run measured them, else the estimator's. */
function at7b(
  r: TableInput,
  v: Variant,
  pick: (m: Measurement | MemoryEstimate, isEstimate: boolean) => number,
): Figure7B {
  const cell = r.shape?.name === "7b" ? r.shape.cells[v] : null;
  if (cell?.value) {
    const value = pick(cell.value, false);
    return { value, text: `${fmtBytes(value)} [${TAGS[cell.how]}]`, estimated: false };
  }
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const e = estimateMemory(LLAMA_CONFIGS["7b"], {
    mode: v === "full-mixed" ? "full" : v,
    seq,
    batch,
    masterWeights: v !== "full",
  });
  const value = pick(e, true);
  return { value, text: `${fmtBytes(value)} (estimate only: 7B not measured in this run)`, estimated: true };
}

const peakOf = (m: Measurement | MemoryEstimate, est: boolean) =>
  est ? (m as MemoryEstimate).peak : (m as Measurement).totalPeak;
const catOf = (c: Category) => (m: Measurement | MemoryEstimate) => m.bytes[c];

function about(claimed: number, f: Figure7B, because: string): string {
  const ok = Math.abs(f.value - claimed) <= TOLERANCE * claimed;
  const v = ok ? "holds" : `does not hold, because ${because}`;
  return f.estimated ? `${v} (estimate)` : v;
}

/** Builds the claims table: each numeric claim beside the measurement and a verdict. */
export function claimsTable(r: TableInput): Table {
  const GB = 1e9;
  const seed = "seed document", paper = "QLoRA paper";
  const full = at7b(r, "full", peakOf);
  const mixed = at7b(r, "full-mixed", peakOf);
  const fw = at7b(r, "full", catOf("weights"));
  const fg = at7b(r, "full", catOf("gradients"));
  const fo = at7b(r, "full", catOf("optimizer_states"));
  const lora = at7b(r, "lora", peakOf);
  const qlora = at7b(r, "qlora", peakOf);
  const p7 = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "full", seq: 1, batch: 1 }).parameters;
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const rows: string[][] = [];
  const add = (claim: string, source: string, claimed: string, measured: string, verdict: string) =>
    rows.push([claim, source, claimed, measured, verdict]);
  add(
    "Full fine-tuning of a 7B model needs ~56 GB",
    seed,
    "56 GB",
    `${full.text}; mixed precision ${mixed.text}`,
    about(
      56 * GB,
      full,
      `Adam keeps m and v in f32, 8 bytes per parameter (${
        fmtBytes(fo.value)
      } alone), and mixed precision adds ` +
        `an f32 master copy (${fmtBytes(mixed.value)} in all); activations come on top`,
    ),
  );
  add(
    "... of which weights 14 GB (16-bit)",
    seed,
    "14 GB",
    fw.text,
    about(14 * GB, fw, "the weights are not 2 bytes each"),
  );
  add(
    "... gradients 14 GB (16-bit)",
    seed,
    "14 GB",
    fg.text,
    about(14 * GB, fg, "the gradients are not 2 bytes each"),
  );
  add(
    "... optimizer states 28 GB",
    seed,
    "28 GB",
    fo.text,
    about(
      28 * GB,
      fo,
      `Adam has two states per parameter in f32: ${(fo.value / p7).toFixed(1)} bytes per parameter, not 4 ` +
        `(28 GB would be one f32 state, or two 16-bit states)`,
    ),
  );
  add(
    "LoRA fine-tuning of a 7B model needs ~15 GB",
    seed,
    "15 GB",
    lora.text,
    about(15 * GB, lora, "the frozen 16-bit base alone is 13.5 GB and the rest is small"),
  );
  add(
    "QLoRA fine-tuning of a 7B model needs ~4.5 GB",
    seed,
    "4.5 GB",
    qlora.text,
    about(4.5 * GB, qlora, "see the base weights row: NF4 blocks, 16-bit embeddings and LM head"),
  );
  // Judged by `deno task fit`'s logic: the estimate with the CUDA backend's 4-bit workspace, plus the
  // typical CUDA context of an RTX 3060 (what the device takes before the first tensor). Where the 7B
  // QLoRA step was measured, the measured peak (with CUDA's workspace in place of the CPU's) must fit too.
  const gpu = gpuProfile("rtx3060-6gb");
  const fit = willItFit(LLAMA_CONFIGS["7b"], { mode: "qlora", seq, batch }, gpu);
  const cpuWorkspace = estimateMemory(LLAMA_CONFIGS["7b"], { mode: "qlora", seq, batch }).bytes.workspace;
  const measuredNeed = qlora.estimated
    ? null
    : qlora.value - cpuWorkspace + fit.estimate.bytes.workspace + fit.context.bytes;
  const fits = fit.fits && (measuredNeed === null || measuredNeed <= gpu.memory);
  const maxSeq = fit.largest.qlora.seq;
  add(
    "QLoRA fits a 6 GB RTX 3060",
    seed,
    "peak <= 6 GiB",
    `${qlora.text} at ${batch}x${seq} tokens${
      r.options.budget ? `, run under a ${(r.options.budget / 2 ** 30).toFixed(2)} GiB budget` : ""
    }; deno task fit: ${formatBytes(fit.estimate.peak)} (CUDA workspace) + CUDA context ${
      formatBytes(fit.context.bytes)
    } (${fit.context.source}) = ${formatBytes(fit.required)} of ${formatBytes(gpu.memory)}${
      measuredNeed === null ? "" : ` (measured peak + context: ${formatBytes(measuredNeed)})`
    }; fits up to seq ${maxSeq.toLocaleString("en-US")} at batch ${batch}`,
    (fits
      ? `holds at this sequence length (${fit.verdict}; up to seq ~${
        maxSeq.toLocaleString("en-US")
      } at batch ${batch}, the CUDA context counted)`
      : `does not hold, because at ${batch}x${seq} tokens deno task fit says: ${fit.verdict}`) +
      (qlora.estimated ? " (estimate)" : ""),
  );
  const c = r.constants;
  const dense = c.shape[0] * c.shape[1];
  add(
    "LoRA rank 8 on a 4096x4096 layer trains 65,536 parameters",
    seed,
    "65,536",
    `${c.adapterParameters.toLocaleString("en-US")} (LoRALinear on a ${c.shape.join("x")} weight)`,
    c.adapterParameters === 65536 ? "holds" : `does not hold, because r(in + out) = ${c.adapterParameters}`,
  );
  const fewer = 1 - c.adapterParameters / dense;
  const loraCell = r.shape?.cells.lora.value ?? null;
  const whole = loraCell
    ? `; whole ${r.shape!.name}: ${pct(1 - loraCell.trainable / loraCell.parameters, 2)} fewer`
    : "";
  add(
    "... that is 99.6% fewer than the layer's 16.8M",
    seed,
    "99.6%",
    `${pct(fewer, 2)} fewer (65,536 of ${dense.toLocaleString("en-US")})${whole}`,
    Math.abs(fewer - 0.996) < 0.0005 ? "holds" : `does not hold, because it is ${pct(fewer, 2)}`,
  );
  const saved = c.plainBits - c.doubleQuantBits;
  const per65 = (saved * 65e9) / 8;
  add(
    "Double quantization saves 0.37 GB per 65B parameters",
    seed,
    "0.37 GB",
    `${saved.toFixed(3)} bits/param saved (constants ${c.plainBits.toFixed(3)} -> ${
      c.doubleQuantBits.toFixed(3)
    }) ` +
      `= ${fmtBytes(per65)} per 65B parameters`,
    Math.abs(per65 - 0.37e9) <= TOLERANCE * 0.37e9
      ? "holds"
      : `does not hold, because the saving is ${saved.toFixed(3)} bits (not GB) per parameter: ${
        fmtBytes(per65)
      } ` +
        "for 65B parameters, as the paper says (about 3 GB)",
  );
  add(
    "A 4-bit (QLoRA) 7B model trains in about 5 GB",
    paper,
    "~5 GB",
    qlora.text,
    about(5 * GB, qlora, "the measured peak is far from it"),
  );
  add(
    "Double quantization: constants from 0.5 to 0.127 bits per parameter",
    paper,
    "0.5 -> 0.127",
    `${c.plainBits.toFixed(4)} -> ${c.doubleQuantBits.toFixed(4)} bits/param (${
      c.totalBits.toFixed(3)
    } in all)`,
    Math.abs(c.plainBits - 0.5) < 0.001 && Math.abs(c.doubleQuantBits - 0.127) < 0.001
      ? "holds"
      : "does not hold, because the measured storage differs",
  );
  return {
    title: "Claims checked",
    headers: ["Claim", "Source", "Claimed", "Measured", "Verdict"],
    rows,
    notes: [
      `"~X" claims hold within +-${pct(TOLERANCE, 0)}; GB = 1e9 bytes, GiB = 2^30. 7B figures: LLaMA-2-7B ` +
      `shapes (${fmtCount(p7)} parameters), ${batch}x${seq} tokens per step, bf16 weights.`,
      "Constants measured by quantizing a 4096x4096 bf16 weight (NF4, blocksize 64) with and without double quantization.",
    ],
  };
}

const escapeMd = (s: string) => s.replace(/\|/g, "\\|");

/** A markdown table with its title and notes. */
export function toMarkdown(t: Table): string {
  const lines = [`## ${t.title}`, "", `| ${t.headers.map(escapeMd).join(" | ")} |`];
  lines.push(`| ${t.headers.map(() => "---").join(" | ")} |`);
  for (const row of t.rows) lines.push(`| ${row.map(escapeMd).join(" | ")} |`);
  if (t.notes.length) lines.push("", ...t.notes.map((n) => `- ${n}`));
  return lines.join("\n");
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** An HTML table with its title and notes. */
export function toHTMLTable(t: Table): string {
  const head = `<tr>${t.headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>`;
  const body = t.rows.map((r) =>
    `<tr>${r.map((c, i) => (i === 0 ? `<th>${esc(c)}</th>` : `<td>${esc(c)}</td>`)).join("")}</tr>`
  ).join("\n");
  const notes = t.notes.length ? `<ul>${t.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : "";
  return `<h2>${esc(t.title)}</h2>\n<table>${head}\n${body}</table>\n${notes}`;
}

const SHORT: Record<Variant, string> = {
  full: "Full (bf16 + f32 Adam)",
  "full-mixed": "Full (mixed precision)",
  lora: "LoRA",
  qlora: "QLoRA",
};

/** The report's figures: memory by category, memory against model size, loss curves. */
export function reportFigures(r: TableInput): Figure[] {
  const figs: Figure[] = [];
  const stack = (
    title: string,
    labels: string[],
    bytes: Record<Category, number>[],
    unit: number,
    u: string,
  ) =>
    plot(
      CATEGORIES.map((c) => ({ type: "bar", name: c, x: labels, y: bytes.map((b) => b[c] / unit) })),
      { title: { text: title }, barmode: "stack", yaxis: { title: { text: u } }, height: 460 },
    );
  if (r.shape) {
    const shape = r.shape;
    const vs = (["full", "full-mixed", "lora", "qlora"] as Variant[]).filter((v) => shape.cells[v].value);
    const labels = vs.map((v) => `${SHORT[v]} [${TAGS[shape.cells[v].how]}]`);
    figs.push(
      stack(
        `Memory by category, LLaMA-2-${shape.name.toUpperCase()} shapes, ${shape.batch}x${shape.seq} tokens (ledger)`,
        labels,
        vs.map((v) => shape.cells[v].value!.bytes),
        1e9,
        "GB",
      ),
    );
  }
  const tinyRuns = r.tiny.runs.filter((t) => !t.oom);
  figs.push(
    stack(
      `Memory by category, tiny model, ${r.tiny.batch}x${r.tiny.seq} tokens (ledger)`,
      tinyRuns.map((t) => t.mode),
      tinyRuns.map((t) => t.bytes),
      1e6,
      "MB",
    ),
  );
  // Memory against model size: the estimator for each size, the measurement where it ran.
  const sizes = ["7b", "13b", "70b"] as const;
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const traces: PlotlyTrace[] = [];
  for (const v of ["full", "full-mixed", "lora", "qlora"] as Variant[]) {
    const params = sizes.map((s) =>
      estimateMemory(LLAMA_CONFIGS[s], { mode: "full", seq: 1, batch: 1 }).parameters / 1e9
    );
    const est = sizes.map((s) =>
      estimateMemory(LLAMA_CONFIGS[s], {
        mode: v === "full-mixed" ? "full" : v,
        seq,
        batch,
        masterWeights: v !== "full",
      })
        .peak / 1e9
    );
    traces.push({
      type: "scatter",
      mode: "lines+markers",
      name: `${SHORT[v]} (estimate)`,
      x: params,
      y: est,
    });
    const cell = r.shape?.cells[v];
    if (cell?.value) {
      traces.push({
        type: "scatter",
        mode: "markers",
        marker: { size: 14, symbol: cell.how === "whole" ? "circle-open" : "diamond-open" },
        name: `${SHORT[v]} (${TAGS[cell.how]})`,
        x: [cell.value.parameters / 1e9],
        y: [cell.value.totalPeak / 1e9],
      });
    }
  }
  traces.push({
    type: "scatter",
    mode: "lines",
    name: "6 GiB (RTX 3060)",
    line: { dash: "dot", color: "gray" },
    x: [5, 75],
    y: [6 * 2 ** 30 / 1e9, 6 * 2 ** 30 / 1e9],
  });
  figs.push(
    plot(traces, {
      title: { text: `Peak training memory against model size (${batch}x${seq} tokens)` },
      xaxis: { title: { text: "parameters (billions)" }, type: "log" },
      yaxis: { title: { text: "GB" }, type: "log" },
      height: 480,
    }),
  );
  if (tinyRuns.length && tinyRuns[0].history.length) {
    const steps = tinyRuns[0].history.map((h) => h.step);
    const series = Object.fromEntries(
      tinyRuns.map((t) => [`${t.mode} (training)`, t.history.map((h) => h.loss)]),
    );
    const fig = lineChart(steps, series, {
      title: "Fine-tuning loss on SOTU (tiny model)",
      xTitle: "step",
      yTitle: "cross-entropy (nats/token)",
    });
    for (const t of tinyRuns) {
      const ev = t.history.filter((h) => h.evalLoss !== undefined);
      fig.data.push({
        type: "scatter",
        mode: "markers",
        name: `${t.mode} (validation)`,
        x: [0, ...ev.map((h) => h.step)],
        y: [t.lossBefore, ...ev.map((h) => h.evalLoss!)],
      });
    }
    figs.push(fig);
  }
  return figs;
}

/** Writes the offline HTML report (plotly.js inlined once) with the figures and both tables. */
export async function writeReport(r: TableResult, path: string): Promise<void> {
  const figs = reportFigures(r);
  const parts: string[] = [];
  for (let i = 0; i < figs.length; i++) parts.push(await figs[i].toHTML({ includePlotlyJs: i === 0 }));
  const html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qlora-lab: full fine-tuning vs LoRA vs QLoRA</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
tr > th:first-child { background: #f4f4f4; }
</style></head><body>
<h1>Full fine-tuning vs LoRA vs QLoRA, measured</h1>
<p>${esc(r.device)}; run took ${r.seconds.toFixed(0)} s. Every memory figure is from the ledger of the native
library (bytes really allocated), beside the analytic estimate.</p>
${toHTMLTable(r.comparison)}
${toHTMLTable(r.claims)}
${parts.join("\n")}
</body></html>
`;
  await writeFileAtomic(path, html);
}
