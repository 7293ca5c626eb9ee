/**
 * Training loop for {@linkcode LlamaModel}: the learning-rate schedule of `schedule.ts`, clipping by
 * global norm, gradient accumulation, evaluation loss and perplexity, tokens per second, a ledger
 * snapshot per step ({@linkcode StepInfo}, shown by `training_progress.ts`), and resumable checkpoints
 * (lib/train/training_checkpoint.ts): every N steps and at the end, the last K kept; `resume` continues from the latest
 * complete one and ends bit for bit where an uninterrupted run ends. Batches come from a
 * {@linkcode BatchSource} (`batches.ts`).
 *
 * @module
 */

import { AdamW, AdamW8bit, PagedAdamW } from "../optim/mod.ts";
import type { BatchSource, TokenBatch } from "../data/mod.ts";
import { InvalidArgumentError, pauseForTest } from "../base/mod.ts";
import { LoRALinear } from "../nn/mod.ts";
import type { LlamaModel } from "../llama/mod.ts";
import { axpby, Tensor } from "../core/mod.ts";
import {
  type CheckpointEntry,
  dropoutSteps,
  listCheckpoints,
  pruneCheckpoints,
  readTrainingCheckpoint,
  type TrainingState,
  writeTrainingCheckpoint,
} from "./training_checkpoint.ts";
import { saveCheckpoint } from "./adapters.ts";
import { learningRate } from "./schedule.ts";
import type { StepInfo } from "./training_progress.ts";

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
 * Trains a model on a batch source.
 *
 * @example
 * ```ts
 * import { datasetSource, LlamaModel, LLAMA_CONFIGS, TextDataset, Trainer } from "../../mod.ts";
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
    const o = this.#o;
    if (o.resume) await this.resume();
    const state = this.#resumed?.state ?? null;
    const history: StepInfo[] = state ? [...state.history] : [];
    const start = performance.now() - (history.at(-1)?.elapsedMs ?? 0);
    const t00 = performance.now();
    let tokens = 0;
    let peakBytes = 0;
    for (let step = state?.step ?? 0; step < o.steps; step++) {
      const info = await this.#step(step, start);
      peakBytes = Math.max(peakBytes, info.memory.totalPeak);
      tokens += o.batchSize * o.seq * o.gradAccumulation;
      history.push(info);
      o.onStep?.(info);
      await this.#checkpoint(info, history);
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

  /**
   * One optimizer step (0-based `step`): the scheduled learning rate, the gradients of the micro-batches,
   * the update, what it measured, and the validation loss when one is due. `start`: when the run began.
   */
  async #step(step: number, start: number): Promise<StepInfo> {
    const o = this.#o, device = this.model.device;
    const t0 = performance.now();
    device.resetPeak();
    this.optimizer.lr = learningRate(step, o.steps, o.warmupSteps, o.lr, o.minLrRatio);
    const loss = this.#gradients();
    await pauseForTest(`step:${step + 1}:backward`);
    if (o.gradAccumulation > 1) {
      for (const t of this.optimizer.params) if (t.grad) axpby(1 / o.gradAccumulation, t.grad, 0, t.grad);
    }
    const { gradNorm } = this.optimizer.step();
    await pauseForTest(`step:${step + 1}:optimizer`);
    const snap = device.memory();
    const stepTokens = o.batchSize * o.seq * o.gradAccumulation;
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
    if (step + 1 === o.steps || (o.evalEvery && (step + 1) % o.evalEvery === 0)) {
      const e = this.evaluate();
      info.evalLoss = e.loss;
      info.evalPerplexity = e.perplexity;
    }
    return info;
  }

  /** Zeroes the gradients, then forward and backward over the step's micro-batches; their mean loss. */
  #gradients(): number {
    const o = this.#o, model = this.model;
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
    return loss;
  }

  /** Writes a resumable checkpoint after step `info` when one is due (and the final weights at the end). */
  async #checkpoint(info: StepInfo, history: StepInfo[]): Promise<void> {
    const o = this.#o, model = this.model, dir = this.#checkpointDir;
    const { step, loss } = info, last = step === o.steps;
    if (!dir || !(last || (o.checkpointEvery && step % o.checkpointEvery === 0))) return;
    // The final weights first: a run killed after its last checkpoint has them, and resumes to nothing.
    if (last) await saveCheckpoint(model, dir, { step, loss }, { baseModel: o.baseModel });
    await writeTrainingCheckpoint(dir, {
      model,
      optimizer: this.optimizer,
      state: {
        step,
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
