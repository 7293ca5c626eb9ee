/**
 * The result types of `./deno task table` (see ../table.ts): options, measurements at both scales, the
 * tables, and the whole result as written to `table.json`.
 *
 * @module
 */

import {
  type Category,
  DEFAULT_QUALITY,
  type LlamaConfig,
  type MemoryEstimate,
  type QualityOptions,
  type QualityResult,
  TINY_BASE_FILE,
  type TrainMode,
} from "../../mod.ts";

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
  /**
   * Whole-model runs start only when projected to end within this many seconds of the start (the quality
   * study's time not counted).
   */
  maxSeconds: number;
  /** Pretrained tiny base: loaded when present with the tiny config, else pretrained and saved (null: neither). */
  base: string | null;
  /** Pretraining steps on Brown when there is no base to load. */
  pretrainSteps: number;
  /** Prompt lengths of the prefill figures (batch 1; capped by a model's maxSeq). */
  prefill: number[];
  /** Decode steps timed after the first prompt length. */
  decodeSteps: number;
  /** The quality study on the tiny base (null: skipped). */
  quality: Omit<QualityOptions, "log"> | null;
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
  maxSeconds: 600,
  base: TINY_BASE_FILE,
  pretrainSteps: 300,
  prefill: [64, 512],
  decodeSteps: 8,
  quality: DEFAULT_QUALITY,
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
  /** Generation at batch 1 (merged adapters for LoRA, the NF4 base and unmerged adapters for QLoRA). */
  inference: InferenceTimes;
  /** Tokens per step. */
  tokens: number;
  /**
   * Of the memory the process took over the forward pass of the last training step (its native heap on
   * the CPU, the driver's used bytes on CUDA), the share the ledger counts (`ledgerCoverage`); measured on
   * the models that ran, never extrapolated. Absent in results saved before it existed.
   */
  coverage?: number;
}

/** Generation at batch 1 with a KV cache (scripts/table/inference.ts). */
export interface InferenceTimes {
  /** Prefills: prompt tokens and the seconds of the fastest run (into an empty cache, the first token chosen). */
  prefill: { tokens: number; seconds: number }[];
  /** Seconds per decode step after the shortest prompt (the fastest run's mean over its steps). */
  decodeSeconds: number;
  /** Decode steps per run. */
  decodeSteps: number;
  /** The ledger's peaks per category over the longest prefill (with its cache). */
  bytes: Record<Category, number>;
  /** Rows of that prefill's cache (allocated: the prompt and its first new token). */
  cacheRows: number;
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
  /** A bf16 KV cache for the model's whole context, allocated once: its rows and the ledger's bytes. */
  kvCache?: { rows: number; bytes: number };
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
  /** Generation at batch 1 (merged adapters for LoRA, the NF4 base and unmerged adapters for QLoRA); null when it did not fit. */
  inference: InferenceTimes | null;
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
  /** The quality study (null when skipped). */
  quality: QualityResult | null;
  /** Its table (null when skipped). */
  qualityTable: Table | null;
  /** Seconds the run took. */
  seconds: number;
}

/** What the tables are built from: a run's result before the tables. */
export type TableInput = Omit<TableResult, "comparison" | "claims" | "qualityTable">;
