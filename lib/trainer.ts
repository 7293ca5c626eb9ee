/**
 * Training loop for {@linkcode LlamaModel}: learning-rate warm-up and cosine decay, clipping by global
 * norm, gradient accumulation, evaluation loss and perplexity, tokens per second, a ledger snapshot per
 * step, progress in a terminal or a notebook, and resumable checkpoints (lib/resume.ts): every N steps and
 * at the end, the last K kept; `resume` continues from the latest complete one and ends bit for bit where
 * an uninterrupted run ends.
 *
 * @module
 */

import { formatBytes } from "./memory.ts";
import type { LlamaModel } from "./model.ts";
import { AdamW } from "./adamw.ts";
import { AdamW8bit } from "./adamw8bit.ts";
import { PagedAdamW } from "./paged_adamw.ts";
import { axpby } from "./ops.ts";
import { LoRALinear } from "./lora.ts";
import { Tensor } from "./tensor.ts";
import { InvalidArgumentError } from "./errors.ts";
import type { TextDataset } from "./dataset.ts";
import { type BatchSampler, fingerprint, type SamplerState } from "./sampler.ts";
import { JUPYTER_DISPLAY } from "./memory.ts";
import {
  type CheckpointEntry,
  dropoutSteps,
  listCheckpoints,
  pauseForTest,
  pruneCheckpoints,
  readTrainingCheckpoint,
  saveCheckpoint,
  type TrainingState,
  writeTrainingCheckpoint,
} from "./resume.ts";

/** A batch of token ids, row-major `[batch, seq]`; targets are the inputs shifted by one. */
export interface TokenBatch {
  /** Input ids. */
  inputs: Int32Array;
  /** Next-token ids (-1 = ignored). */
  targets: Int32Array;
}

/** Where batches come from (see `TextDataset` in lib/data.ts). */
export interface BatchSource {
  /** A random training batch. */
  trainBatch(batch: number, seq: number): TokenBatch;
  /** Up to `max` validation batches, the same every call. */
  validationBatches(batch: number, seq: number, max: number): TokenBatch[];
  /** The training stream's position, as JSON (a resumable checkpoint stores it). */
  getState?(): unknown;
  /** Continues from a {@linkcode BatchSource.getState}: the next batches are those that would have come. */
  setState?(state: unknown): void;
  /** What the data is (kind, sizes, seed, a fingerprint): part of the configuration a resume must match. */
  describe?(): Record<string, string | number | boolean | null>;
}

/**
 * A {@linkcode BatchSource} over a {@linkcode TextDataset}: seeded random training windows, and the first
 * `max` full validation batches in order.
 *
 * @example
 * ```ts
 * import { datasetSource, TextDataset } from "../mod.ts";
 * import { assert } from "@std/assert";
 * const ds = TextDataset.fromText("the quick brown fox jumps over the lazy dog. ".repeat(40));
 * const source = datasetSource(ds, 1);
 * const b = source.trainBatch(2, 8);
 * assert(b.inputs.length === 16 && b.targets[0] === b.inputs[1]);
 * const again = datasetSource(ds, 1);
 * again.setState!(source.getState!()); // a checkpoint's data position: the streams continue alike
 * assert(again.trainBatch(2, 8).inputs.join() === source.trainBatch(2, 8).inputs.join());
 * ```
 */
export function datasetSource(dataset: TextDataset, seed = 0): BatchSource {
  const samplers = new Map<string, BatchSampler>();
  const sampler = (batchSize: number, seqLen: number) => {
    const key = `${batchSize}x${seqLen}`;
    let s = samplers.get(key);
    if (!s) samplers.set(key, s = dataset.batches({ batchSize, seqLen, seed }));
    return s;
  };
  let print: string | undefined;
  return {
    trainBatch(batchSize, seqLen) {
      const b = sampler(batchSize, seqLen).sample();
      return { inputs: b.inputs, targets: b.targets };
    },
    validationBatches(batchSize, seqLen, max) {
      const out: TokenBatch[] = [];
      for (const b of dataset.validationBatches({ batchSize, seqLen })) {
        if (out.length >= max || b.batchSize !== batchSize) break;
        out.push({ inputs: b.inputs, targets: b.targets });
      }
      return out;
    },
    getState() {
      return Object.fromEntries([...samplers].map(([key, s]) => [key, s.getState()]));
    },
    setState(state) {
      for (const [key, s] of Object.entries(state as Record<string, SamplerState>)) {
        const m = /^(\d+)x(\d+)$/.exec(key);
        if (!m) throw new InvalidArgumentError(`Cannot restore the data position: bad sampler key ${key}`);
        sampler(Number(m[1]), Number(m[2])).setState(s);
      }
    },
    describe() {
      print ??= fingerprint(dataset.train, dataset.validation);
      return {
        kind: "text",
        seed,
        trainTokens: dataset.train.length,
        validationTokens: dataset.validation.length,
        fingerprint: print,
      };
    },
  };
}

/** Options of {@linkcode Trainer}. */
export interface TrainerOptions {
  /** Optimizer steps. */
  steps: number;
  /** Sequences per micro-batch. */
  batchSize: number;
  /** Tokens per sequence. */
  seq: number;
  /** Peak learning rate (default 1e-3 for LoRA/QLoRA, 3e-4 for full fine-tuning). */
  lr?: number;
  /** Linear warm-up steps (default 10% of steps). */
  warmupSteps?: number;
  /** The learning rate decays (cosine) to this fraction of the peak (default 0.1). */
  minLrRatio?: number;
  /** Clip to this global gradient norm (default 1). */
  maxGradNorm?: number;
  /** Micro-batches per optimizer step (default 1). */
  gradAccumulation?: number;
  /** Weight decay (default 0 for adapters, 0.01 for full fine-tuning). */
  weightDecay?: number;
  /** "adamw", "paged" or "adamw8bit" (default: paged for QLoRA, as the paper; adamw otherwise). */
  optimizer?: "adamw" | "paged" | "adamw8bit";
  /**
   * bf16 parameters: keep f32 master weights (true, default: mixed precision) or update the bf16 weights
   * directly (false: the 16-bit weights, 16-bit gradients, f32 Adam policy of the seed document).
   */
  masterWeights?: boolean;
  /** Evaluate every this many steps (default: at the end only). */
  evalEvery?: number;
  /** Validation batches per evaluation (default 4). */
  evalBatches?: number;
  /** Called after every step. */
  onStep?: (info: StepInfo) => void;
  /**
   * Write a resumable checkpoint into `checkpointDir/checkpoint-NNNNNN/` every `checkpointEvery` steps and
   * at the end, and the final weights (adapter or model) into `checkpointDir` itself.
   */
  checkpointDir?: string;
  /** Steps between checkpoints (default: only at the end). */
  checkpointEvery?: number;
  /** Complete checkpoints kept, the newest (default 3). */
  checkpointKeep?: number;
  /**
   * Continue from a checkpoint: `true` for the latest complete one in `checkpointDir` (none: start at step
   * 0), or a path (a run's directory, or one `checkpoint-NNNNNN`; `checkpointDir` defaults to its run's).
   * Torn checkpoints are skipped with a message; another configuration is refused, naming the difference.
   */
  resume?: boolean | string;
  /** More of the run's configuration (base model, data files, ...), recorded and compared on resume. */
  runInfo?: Record<string, string | number | boolean | null>;
  /** `base_model_name_or_path` of the adapters written. */
  baseModel?: string;
  /** Where messages go (resumed, skipped a torn checkpoint); default console.log. */
  onMessage?: (message: string) => void;
}

/** What one step measured. */
export interface StepInfo {
  /** 1-based step. */
  step: number;
  /** Of this many. */
  steps: number;
  /** Mean training loss of the step's micro-batches. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Gradient norm before clipping. */
  gradNorm: number;
  /** Training tokens per second in this step. */
  tokensPerSecond: number;
  /** Milliseconds since training began. */
  elapsedMs: number;
  /** Device bytes in use after the step, and the peak during it, by category and in total. */
  memory: {
    current: Record<string, number>;
    peak: Record<string, number>;
    totalCurrent: number;
    totalPeak: number;
  };
  /** Validation loss, when evaluated at this step. */
  evalLoss?: number;
  /** exp(evalLoss). */
  evalPerplexity?: number;
}

/** What a training run produced. */
export interface TrainResult {
  /** One entry per step. */
  history: StepInfo[];
  /** Validation loss at the end. */
  evalLoss: number;
  /** exp(evalLoss). */
  evalPerplexity: number;
  /** Mean training tokens per second. */
  tokensPerSecond: number;
  /** Highest total device bytes during training. */
  peakBytes: number;
  /** The checkpoint this run continued from (null: it started at step 0). */
  resumedFrom: { path: string; step: number } | null;
}

/** What {@linkcode Trainer.resume} did. */
export interface ResumeInfo {
  /** The checkpoint used, or null when there was none (the run starts at step 0). */
  path: string | null;
  /** Steps already done. */
  step: number;
  /** Checkpoints skipped as torn (killed while written), newest first. */
  skipped: CheckpointEntry[];
}

/**
 * Learning rate at a step: linear warm-up to `peak`, then cosine decay to `peak * minRatio`.
 *
 * @example
 * ```ts
 * import { learningRate } from "../mod.ts";
 * import { assert } from "@std/assert";
 * assert(learningRate(0, 100, 10, 1e-3, 0.1) === 1e-3 / 11); // warm-up: (step + 1) / (warmup + 1) of the peak
 * assert(learningRate(10, 100, 10, 1e-3, 0.1) === 1e-3); // warm-up done: the peak
 * assert(Math.abs(learningRate(99, 100, 10, 1e-3, 0.1) - 1e-4) < 1e-15); // the last step: peak * minRatio
 * ```
 */
export function learningRate(
  step: number,
  steps: number,
  warmup: number,
  peak: number,
  minRatio: number,
): number {
  if (step < warmup) return (peak * (step + 1)) / (warmup + 1);
  const progress = steps > warmup ? (step - warmup) / Math.max(1, steps - warmup - 1) : 1;
  const cosine = 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
  return peak * (minRatio + (1 - minRatio) * cosine);
}

/**
 * Trains a model on a batch source.
 *
 * @example
 * ```ts
 * import { datasetSource, LlamaModel, LLAMA_CONFIGS, TextDataset, Trainer } from "../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const config = { ...LLAMA_CONFIGS.tiny, dim: 32, layers: 1, hiddenDim: 64 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 4 });
 * const data = datasetSource(TextDataset.fromText("the quick brown fox jumps over the lazy dog.\n".repeat(20)));
 * using trainer = new Trainer(model, data, { steps: 2, batchSize: 2, seq: 8, lr: 1e-3, evalBatches: 1 });
 * const result = await trainer.train();
 * assertEquals(result.history.map((h) => h.step), [1, 2]);
 * assert(Math.abs(result.history[1].lr - 1e-4) < 1e-12); // cosine decay to minLrRatio * lr at the last step
 * assert(Math.abs(result.evalPerplexity - Math.exp(result.evalLoss)) < 1e-6 * result.evalPerplexity);
 * ```
 */
export class Trainer implements Disposable {
  /** The model. */
  readonly model: LlamaModel;
  /** The optimizer (AdamW, PagedAdamW or AdamW8bit). */
  readonly optimizer: AdamW | PagedAdamW | AdamW8bit;
  readonly #data: BatchSource;
  readonly #o:
    & Required<
      Pick<
        TrainerOptions,
        | "steps"
        | "batchSize"
        | "seq"
        | "lr"
        | "warmupSteps"
        | "minLrRatio"
        | "maxGradNorm"
        | "gradAccumulation"
        | "weightDecay"
        | "optimizer"
        | "masterWeights"
        | "evalBatches"
        | "checkpointKeep"
        | "onMessage"
      >
    >
    & TrainerOptions;
  #checkpointDir: string | undefined;
  #resumed: { state: TrainingState | null; info: ResumeInfo } | null = null;

  /** Prepares the optimizer for the model's trainables. */
  constructor(model: LlamaModel, data: BatchSource, options: TrainerOptions) {
    for (const key of ["steps", "batchSize", "seq"] as const) {
      if (!Number.isSafeInteger(options[key]) || options[key] <= 0) {
        throw new InvalidArgumentError(
          `Cannot train: ${key} must be a positive integer, got ${options[key]}`,
        );
      }
    }
    const full = model.mode === "full";
    this.#o = {
      ...options,
      lr: options.lr ?? (full ? 3e-4 : 1e-3),
      warmupSteps: options.warmupSteps ?? Math.floor(options.steps / 10),
      minLrRatio: options.minLrRatio ?? 0.1,
      maxGradNorm: options.maxGradNorm ?? 1,
      gradAccumulation: options.gradAccumulation ?? 1,
      weightDecay: options.weightDecay ?? (full ? 0.01 : 0),
      optimizer: options.optimizer ?? (model.mode === "qlora" ? "paged" : "adamw"),
      masterWeights: options.masterWeights ?? true,
      evalBatches: options.evalBatches ?? 4,
      checkpointKeep: options.checkpointKeep ?? 3,
      onMessage: options.onMessage ?? ((m: string) => console.log(m)),
    };
    if (!["adamw", "paged", "adamw8bit"].includes(this.#o.optimizer)) {
      throw new InvalidArgumentError(`Cannot train: optimizer must be adamw, paged or adamw8bit`);
    }
    const keep = this.#o.checkpointKeep;
    if (!Number.isSafeInteger(keep) || keep < 1) {
      throw new InvalidArgumentError(`Cannot train: checkpointKeep must be an integer >= 1, got ${keep}`);
    }
    this.#checkpointDir = options.checkpointDir ??
      (typeof options.resume === "string" ? runDirOf(options.resume) : undefined);
    if (options.resume === true && !this.#checkpointDir) {
      throw new InvalidArgumentError("Cannot resume: give checkpointDir, or a path as resume");
    }
    this.model = model;
    this.#data = data;
    const Opt = { adamw: AdamW, paged: PagedAdamW, adamw8bit: AdamW8bit }[this.#o.optimizer];
    this.optimizer = new Opt(model.trainables(), {
      lr: this.#o.lr,
      weightDecay: this.#o.weightDecay,
      maxGradNorm: this.#o.maxGradNorm,
      masterWeights: this.#o.masterWeights,
    });
  }

  /**
   * The configuration a resume must match: the trainer's options that change the result, the model
   * (mode, dtype, shape, adapters), the data (`BatchSource.describe`) and `runInfo`.
   */
  runConfig(): Record<string, unknown> {
    const o = this.#o, model = this.model;
    const loras = loraOf(model);
    const dropout = Math.max(0, ...loras.map((l) => l.dropoutP));
    return {
      trainer: {
        steps: o.steps,
        batchSize: o.batchSize,
        seq: o.seq,
        lr: o.lr,
        warmupSteps: o.warmupSteps,
        minLrRatio: o.minLrRatio,
        maxGradNorm: o.maxGradNorm,
        gradAccumulation: o.gradAccumulation,
        weightDecay: o.weightDecay,
        optimizer: o.optimizer,
        masterWeights: o.masterWeights,
        evalEvery: o.evalEvery ?? null,
        evalBatches: o.evalBatches,
      },
      model: {
        mode: model.mode,
        dtype: model.dtype,
        ...model.config,
        trainableParameters: model.trainableParameters,
        adapters: loras.length
          ? {
            rank: loras[0].rank,
            alpha: loras[0].scaling * loras[0].rank,
            dropout,
            layers: loras.length,
          }
          : null,
        // Recomputing a block draws its dropout masks again: with dropout, checkpointing changes the run.
        ...(dropout > 0 ? { checkpointing: model.checkpointing } : {}),
      },
      data: this.#data.describe?.() ?? null,
      run: o.runInfo ?? {},
    };
  }

  #tensors(b: TokenBatch): [Tensor, Tensor] {
    const shape = [this.#o.batchSize, this.#o.seq];
    const inputs = Tensor.from(b.inputs, { shape, device: this.model.device });
    try {
      return [inputs, Tensor.from(b.targets, { shape, device: this.model.device })];
    } catch (e) {
      inputs.dispose();
      throw e;
    }
  }

  /** Mean validation loss and perplexity over the fixed validation batches (LoRA dropout off). */
  evaluate(): { loss: number; perplexity: number } {
    const batches = this.#data.validationBatches(this.#o.batchSize, this.#o.seq, this.#o.evalBatches);
    if (batches.length === 0) throw new InvalidArgumentError("Cannot evaluate: no validation batches");
    const loras = loraOf(this.model);
    const modes = loras.map((l) => l.training);
    let total = 0;
    try {
      for (const l of loras) l.training = false;
      for (const b of batches) {
        const [x, y] = this.#tensors(b);
        try {
          total += this.model.forward(x, y, { backward: false });
          this.model.releaseActivations();
        } finally {
          x.dispose();
          y.dispose();
        }
      }
    } finally {
      loras.forEach((l, i) => l.training = modes[i]);
    }
    const loss = total / batches.length;
    return { loss, perplexity: Math.exp(loss) };
  }

  /**
   * Restores the run from a checkpoint (see {@linkcode TrainerOptions.resume}; `train()` calls it when
   * that option is set): the latest complete checkpoint of the run's directory, skipping torn ones with
   * a message, or the one given. Refuses another configuration, naming each difference. Call it before
   * `evaluate()` to evaluate the resumed weights. Returns what it found; calling it again does nothing.
   */
  async resume(from: true | string = this.#o.resume || true): Promise<ResumeInfo> {
    if (this.#resumed) return this.#resumed.info;
    if (from === true && !this.#checkpointDir) {
      throw new InvalidArgumentError("Cannot resume: give checkpointDir, or a path to resume from");
    }
    const say = this.#o.onMessage;
    const skipped: CheckpointEntry[] = [];
    let path: string | null = null;
    const given = from === true ? this.#checkpointDir! : from.replace(/\/+$/, "");
    const latest = !/(^|\/)checkpoint-\d+$/.test(given);
    if (!latest) {
      path = given;
    } else {
      for (const c of (await listCheckpoints(given)).reverse()) {
        if (c.complete) {
          path = c.path;
          break;
        }
        say(`skipping ${c.path}: incomplete, ${c.problem}`);
        skipped.push(c);
      }
    }
    if (!path) {
      say(`no complete checkpoint in ${given}: starting at step 0`);
      const info = { path: null, step: 0, skipped };
      this.#resumed = { state: null, info };
      return info;
    }
    const state = await readTrainingCheckpoint(path, {
      model: this.model,
      optimizer: this.optimizer,
      run: this.runConfig(),
    });
    if (state.data !== null && state.data !== undefined) {
      if (!this.#data.setState) {
        throw new InvalidArgumentError(
          `Cannot resume from ${path}: the batch source cannot set its position`,
        );
      }
      this.#data.setState(state.data);
    } else {
      say(
        "the batch source keeps no position: the batches after the resume differ from an uninterrupted run",
      );
    }
    say(`resumed from ${path}: step ${state.step} of ${state.steps}`);
    if (latest) await pruneCheckpoints(given, this.#o.checkpointKeep); // torn ones, and a prune cut short
    const info = { path, step: state.step, skipped };
    this.#resumed = { state, info };
    return info;
  }

  /**
   * Runs the steps (after {@linkcode Trainer.resume} when `resume` is set); yields to the event loop after
   * each, so a notebook stays responsive.
   */
  async train(): Promise<TrainResult> {
    const o = this.#o, model = this.model, device = model.device;
    if (o.resume) await this.resume();
    const state = this.#resumed?.state ?? null;
    const history: StepInfo[] = state ? [...state.history] : [];
    const start = performance.now() - (history.at(-1)?.elapsedMs ?? 0);
    const t00 = performance.now();
    let tokens = 0;
    let peakBytes = 0;
    for (let step = state?.step ?? 0; step < o.steps; step++) {
      const t0 = performance.now();
      device.resetPeak();
      this.optimizer.lr = learningRate(step, o.steps, o.warmupSteps, o.lr, o.minLrRatio);
      model.zeroGrad();
      let loss = 0;
      for (let micro = 0; micro < o.gradAccumulation; micro++) {
        const [x, y] = this.#tensors(this.#data.trainBatch(o.batchSize, o.seq));
        try {
          loss += model.forward(x, y) / o.gradAccumulation;
          model.backward();
        } finally {
          x.dispose();
          y.dispose();
        }
      }
      await pauseForTest(`step:${step + 1}:backward`);
      if (o.gradAccumulation > 1) {
        for (const t of this.optimizer.params) if (t.grad) axpby(1 / o.gradAccumulation, t.grad, 0, t.grad);
      }
      const { gradNorm } = this.optimizer.step();
      await pauseForTest(`step:${step + 1}:optimizer`);
      const snap = device.memory();
      peakBytes = Math.max(peakBytes, snap.totalPeak);
      const stepTokens = o.batchSize * o.seq * o.gradAccumulation;
      tokens += stepTokens;
      const info: StepInfo = {
        step: step + 1,
        steps: o.steps,
        loss,
        lr: this.optimizer.lr,
        gradNorm,
        tokensPerSecond: stepTokens / ((performance.now() - t0) / 1000),
        elapsedMs: performance.now() - start,
        memory: {
          current: { ...snap.current },
          peak: { ...snap.peak },
          totalCurrent: snap.totalCurrent,
          totalPeak: snap.totalPeak,
        },
      };
      const last = step + 1 === o.steps;
      if (last || (o.evalEvery && (step + 1) % o.evalEvery === 0)) {
        const e = this.evaluate();
        info.evalLoss = e.loss;
        info.evalPerplexity = e.perplexity;
      }
      history.push(info);
      o.onStep?.(info);
      const dir = this.#checkpointDir;
      if (dir && (last || (o.checkpointEvery && (step + 1) % o.checkpointEvery === 0))) {
        // The final weights first: a run killed after its last checkpoint has them, and resumes to nothing.
        if (last) await saveCheckpoint(model, dir, { step: step + 1, loss }, { baseModel: o.baseModel });
        await writeTrainingCheckpoint(dir, {
          model,
          optimizer: this.optimizer,
          state: {
            step: step + 1,
            steps: o.steps,
            loss,
            optimizer: { kind: o.optimizer, stepCount: this.optimizer.stepCount, lr: this.optimizer.lr },
            run: this.runConfig(),
            data: this.#data.getState?.() ?? null,
            dropoutSteps: dropoutSteps(model),
            history,
          },
        }, { keep: o.checkpointKeep, baseModel: o.baseModel });
      }
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    const final = history[history.length - 1];
    const seconds = (performance.now() - t00) / 1000;
    return {
      history,
      evalLoss: final.evalLoss!,
      evalPerplexity: final.evalPerplexity!,
      tokensPerSecond: tokens > 0 ? tokens / seconds : 0,
      peakBytes,
      resumedFrom: state ? { path: this.#resumed!.info.path!, step: state.step } : null,
    };
  }

  /** Frees the optimizer's states (the model stays the caller's). */
  dispose(): void {
    this.optimizer.dispose();
  }

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The LoRA layers of a model, in block order. */
function loraOf(model: LlamaModel): LoRALinear[] {
  const out: LoRALinear[] = [];
  for (let i = 0; i < model.config.layers; i++) {
    for (const layer of Object.values(model.block(i))) if (layer instanceof LoRALinear) out.push(layer);
  }
  return out;
}

/** The run directory of a resume path: the folder of a `checkpoint-NNNNNN`, else the path itself. */
function runDirOf(path: string): string {
  const p = path.replace(/\/+$/, "");
  return /(^|\/)checkpoint-\d+$/.test(p) ? (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : ".") : p;
}

/**
 * A live progress display: a bar on stderr in a terminal, or a table updated in place in a Jupyter
 * notebook (Deno kernel). Pass its `update` as `onStep`.
 *
 * @example
 * ```ts
 * import { TrainingProgress } from "../mod.ts";
 * import { assert } from "@std/assert";
 * const progress = new TrainingProgress("lora");
 * assert(typeof progress.update === "function");
 * ```
 */
export class TrainingProgress {
  readonly #label: string;
  #last: StepInfo | null = null;
  #displayId = `qlora-progress-${Math.random().toString(36).slice(2)}`;
  #shown = false;

  /** A display labelled with the run's name. */
  constructor(label: string) {
    this.#label = label;
  }

  /** Shows one step. */
  update = (info: StepInfo): void => {
    this.#last = info;
    const jupyter = notebookDisplay();
    if (jupyter) {
      jupyter(this[JUPYTER_DISPLAY](), { raw: true, display_id: this.#displayId, update: this.#shown });
      this.#shown = true;
    } else if (Deno.stderr.isTerminal()) {
      Deno.stderr.writeSync(
        new TextEncoder().encode(`\r\x1b[K${this.line()}${info.step === info.steps ? "\n" : ""}`),
      );
    }
  };

  /** The last step as one line of text. */
  line(): string {
    const i = this.#last;
    if (!i) return `${this.#label}: not started`;
    const width = 20, filled = Math.round((i.step / i.steps) * width);
    const evalPart = i.evalLoss !== undefined
      ? ` eval ${i.evalLoss.toFixed(3)} (ppl ${i.evalPerplexity!.toFixed(1)})`
      : "";
    return `${this.#label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${i.step}/${i.steps} loss ${
      i.loss.toFixed(3)
    }${evalPart} lr ${i.lr.toExponential(1)} ${Math.round(i.tokensPerSecond)} tok/s peak ${
      formatBytes(i.memory.totalPeak)
    }`;
  }

  /** Rendering in a notebook. */
  [JUPYTER_DISPLAY](): Record<string, string> {
    return { "text/plain": this.line(), "text/html": `<pre>${this.line()}</pre>` };
  }
}

type DisplayFn = (bundle: Record<string, string>, options: Record<string, unknown>) => void;

function notebookDisplay(): DisplayFn | null {
  try {
    // Reading Deno.jupyter outside the kernel throws: only touch it here, at run time.
    const j = (Deno as unknown as { jupyter?: { display?: DisplayFn } }).jupyter;
    return typeof j?.display === "function" ? j.display.bind(j) : null;
  } catch {
    return null;
  }
}
