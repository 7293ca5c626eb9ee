/**
 * Training loop for {@linkcode LlamaModel}: learning-rate warm-up and cosine decay, clipping by global
 * norm, gradient accumulation, evaluation loss and perplexity, tokens per second, a ledger snapshot per
 * step, progress in a terminal or a notebook, and checkpoints written atomically (a temporary file
 * renamed), so an interrupted run leaves the last checkpoint intact.
 *
 * @module
 */

import { formatBytes } from "./memory.ts";
import type { LlamaModel } from "./model.ts";
import { AdamW, PagedAdamW } from "./optim.ts";
import { LoRALinear } from "./lora.ts";
import { readSafetensors, writeSafetensors } from "./safetensors.ts";
import { bf16ToF32 } from "./dtype.ts";
import { writeFileAtomic } from "./atomic_file.ts";
import { Tensor } from "./tensor.ts";
import { InvalidArgumentError } from "./errors.ts";
import type { BatchSampler, TextDataset } from "./data.ts";
import { JUPYTER_DISPLAY } from "./memory.ts";

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
 * const b = datasetSource(ds, 1).trainBatch(2, 8);
 * assert(b.inputs.length === 16 && b.targets[0] === b.inputs[1]);
 * ```
 */
export function datasetSource(dataset: TextDataset, seed = 0): BatchSource {
  const samplers = new Map<string, BatchSampler>();
  return {
    trainBatch(batchSize, seqLen) {
      const key = `${batchSize}x${seqLen}`;
      let sampler = samplers.get(key);
      if (!sampler) samplers.set(key, sampler = dataset.batches({ batchSize, seqLen, seed }));
      const b = sampler.sample();
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
  /** "adamw" or "paged" (default: paged for QLoRA, as the paper; adamw otherwise). */
  optimizer?: "adamw" | "paged";
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
  /** Write a checkpoint here every `checkpointEvery` steps and at the end. */
  checkpointDir?: string;
  /** Steps between checkpoints (default: only at the end). */
  checkpointEvery?: number;
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
  /** The optimizer (AdamW or PagedAdamW). */
  readonly optimizer: AdamW | PagedAdamW;
  readonly #data: BatchSource;
  readonly #o:
    & Required<Omit<TrainerOptions, "onStep" | "checkpointDir" | "checkpointEvery" | "evalEvery">>
    & Pick<TrainerOptions, "onStep" | "checkpointDir" | "checkpointEvery" | "evalEvery">;

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
    };
    this.model = model;
    this.#data = data;
    const Opt = this.#o.optimizer === "paged" ? PagedAdamW : AdamW;
    this.optimizer = new Opt(model.trainables(), {
      lr: this.#o.lr,
      weightDecay: this.#o.weightDecay,
      maxGradNorm: this.#o.maxGradNorm,
      masterWeights: this.#o.masterWeights,
    });
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

  /** Mean validation loss and perplexity over the fixed validation batches. */
  evaluate(): { loss: number; perplexity: number } {
    const batches = this.#data.validationBatches(this.#o.batchSize, this.#o.seq, this.#o.evalBatches);
    if (batches.length === 0) throw new InvalidArgumentError("Cannot evaluate: no validation batches");
    let total = 0;
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
    const loss = total / batches.length;
    return { loss, perplexity: Math.exp(loss) };
  }

  /** Runs the steps; yields to the event loop after each, so a notebook stays responsive. */
  async train(): Promise<TrainResult> {
    const o = this.#o, model = this.model, device = model.device;
    const history: StepInfo[] = [];
    const start = performance.now();
    let tokens = 0;
    let peakBytes = 0;
    for (let step = 0; step < o.steps; step++) {
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
      if (o.gradAccumulation > 1) {
        for (const t of this.optimizer.params) {
          if (t.grad) {
            device.check(device.native.symbols.qlora_axpby(
              1 / o.gradAccumulation,
              t.grad.ptr,
              0,
              t.grad.ptr,
              t.grad.dtype === "f32" ? 0 : 1,
              BigInt(t.grad.numel),
            ));
          }
        }
      }
      const { gradNorm } = this.optimizer.step();
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
      if (o.checkpointDir && (last || (o.checkpointEvery && (step + 1) % o.checkpointEvery === 0))) {
        await saveCheckpoint(model, o.checkpointDir, { step: step + 1, loss });
      }
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    const final = history[history.length - 1];
    return {
      history,
      evalLoss: final.evalLoss!,
      evalPerplexity: final.evalPerplexity!,
      tokensPerSecond: tokens / ((performance.now() - start) / 1000),
      peakBytes,
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

function bytesOf(t: Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

const MODULE_PATHS: Record<string, string> = {
  q_proj: "self_attn.q_proj",
  k_proj: "self_attn.k_proj",
  v_proj: "self_attn.v_proj",
  o_proj: "self_attn.o_proj",
  gate_proj: "mlp.gate_proj",
  up_proj: "mlp.up_proj",
  down_proj: "mlp.down_proj",
};

/**
 * Writes a checkpoint into `dir`: for LoRA and QLoRA, the adapters in PEFT's layout
 * (`adapter_model.safetensors` with `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
 * [r, in] and `...lora_B.weight` [out, r], plus `adapter_config.json`); for full fine-tuning, every
 * trainable tensor in `model.safetensors`. Each file is written to a temporary file and renamed, so an
 * interrupted run leaves the previous checkpoint intact. Returns the files written.
 *
 * @example
 * ```ts
 * import { LlamaModel, readSafetensors, saveCheckpoint } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 4, targetModules: ["q_proj", "v_proj"] });
 * const dir = await Deno.makeTempDir();
 * try {
 *   const files = await saveCheckpoint(model, dir, { step: 1, loss: 2.5 });
 *   assertEquals(files.map((f) => f.slice(dir.length + 1)), [
 *     "adapter_model.safetensors",
 *     "adapter_config.json",
 *     "trainer_state.json",
 *   ]);
 *   const adapters = await readSafetensors(`${dir}/adapter_model.safetensors`);
 *   assertEquals(adapters.size, 4); // lora_A and lora_B of q_proj and v_proj
 *   assertEquals(adapters.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!.info.shape, [
 *     4,
 *     32,
 *   ]);
 *   assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`)).r, 4);
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function saveCheckpoint(
  model: LlamaModel,
  dir: string,
  info: { step: number; loss: number },
  options: { baseModel?: string } = {},
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const written: string[] = [];
  if (model.mode === "full") {
    const tensors = model.trainables().map((t) => ({
      name: t.name,
      dtype: (t.value.dtype === "f32" ? "F32" : "BF16") as "F32" | "BF16",
      shape: [...t.value.shape],
      data: bytesOf(t.value),
    }));
    // Names repeat across blocks in trainables(); prefix them by position to keep them unique.
    tensors.forEach((t, i) => t.name = `${i.toString().padStart(4, "0")}.${t.name}`);
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, tensors, { step: String(info.step), loss: String(info.loss) });
    written.push(path);
  } else {
    const tensors: { name: string; dtype: "F32" | "BF16"; shape: number[]; data: Uint8Array }[] = [];
    let rank = 0, alpha = 0, dropout = 0;
    const targets = new Set<string>();
    for (let i = 0; i < model.config.layers; i++) {
      for (const [name, layer] of Object.entries(model.block(i))) {
        if (!(layer instanceof LoRALinear)) continue;
        targets.add(name);
        rank = layer.rank;
        alpha = layer.scaling * layer.rank;
        dropout = layer.dropoutP;
        const prefix = `base_model.model.model.layers.${i}.${MODULE_PATHS[name]}`;
        for (const [suffix, t] of [["lora_A.weight", layer.loraA], ["lora_B.weight", layer.loraB]] as const) {
          tensors.push({
            name: `${prefix}.${suffix}`,
            dtype: t.dtype === "f32" ? "F32" : "BF16",
            shape: [...t.shape],
            data: bytesOf(t),
          });
        }
      }
    }
    const path = `${dir}/adapter_model.safetensors`;
    await writeSafetensors(path, tensors, { format: "pt" });
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      r: rank,
      lora_alpha: alpha,
      lora_dropout: dropout,
      target_modules: [...targets],
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      base_model_name_or_path: options.baseModel ?? null,
    };
    const cfgPath = `${dir}/adapter_config.json`;
    await writeFileAtomic(cfgPath, JSON.stringify(config, null, 2) + "\n");
    written.push(path, cfgPath);
  }
  const statePath = `${dir}/trainer_state.json`;
  await writeFileAtomic(
    statePath,
    JSON.stringify({ ...info, mode: model.mode, config: model.config }, null, 2) + "\n",
  );
  written.push(statePath);
  return written;
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

/**
 * Loads a PEFT adapter (`adapter_model.safetensors` and `adapter_config.json`, as {@linkcode saveCheckpoint}
 * writes them, or PEFT's own for a LLaMA) into a LoRA or QLoRA model built with the same rank and target
 * modules: every `lora_A`/`lora_B` of the model is set from the file. A missing, extra or mis-shaped
 * tensor, or another rank or alpha, is an error naming it.
 *
 * @example
 * ```ts
 * import { LlamaModel, loadAdapter, saveCheckpoint, Tensor } from "../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using a = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 * a.block(0).q_proj.trainables()[1].value.copyFrom(new Float32Array(32).fill(0.5)); // a non-zero lora_B
 * const dir = await Deno.makeTempDir();
 * try {
 *   await saveCheckpoint(a, dir, { step: 1, loss: 0 });
 *   using b = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 *   await loadAdapter(b, dir);
 *   using tokens = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
 *   using la = a.logits(tokens), lb = b.logits(tokens);
 *   assertEquals(la.toFloat32(), lb.toFloat32());
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function loadAdapter(model: LlamaModel, dir: string): Promise<void> {
  const fail = (what: string) => new InvalidArgumentError(`Cannot load the adapter in ${dir}: ${what}`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
  } catch (e) {
    throw fail(`adapter_config.json: ${(e as Error).message}`);
  }
  const file = await readSafetensors(`${dir}/adapter_model.safetensors`);
  const used = new Set<string>();
  for (let i = 0; i < model.config.layers; i++) {
    for (const [name, layer] of Object.entries(model.block(i))) {
      if (!(layer instanceof LoRALinear)) continue;
      if (cfg.r !== layer.rank || Math.abs(Number(cfg.lora_alpha) - layer.scaling * layer.rank) > 1e-6) {
        throw fail(
          `r ${cfg.r} and lora_alpha ${cfg.lora_alpha}, the model has ${layer.rank} and ${
            layer.scaling * layer.rank
          }`,
        );
      }
      const prefix = `base_model.model.model.layers.${i}.${MODULE_PATHS[name]}`;
      for (const [suffix, t] of [["lora_A.weight", layer.loraA], ["lora_B.weight", layer.loraB]] as const) {
        const key = `${prefix}.${suffix}`;
        const found = file.get(key);
        if (!found) throw fail(`${key} is missing`);
        if (found.info.shape.join() !== t.shape.join()) {
          throw fail(
            `${key} has shape [${found.info.shape.join(", ")}], the model's is [${t.shape.join(", ")}]`,
          );
        }
        const bytes = found.data.slice();
        const values = found.info.dtype === "F32"
          ? new Float32Array(bytes.buffer)
          : found.info.dtype === "BF16"
          ? bf16ToF32(new Uint16Array(bytes.buffer))
          : null;
        if (!values) throw fail(`${key} is ${found.info.dtype}, not F32 or BF16`);
        using v = Tensor.from(values, { shape: [...t.shape], device: t.device, category: "workspace" });
        using cast = v.cast(t.dtype as "f32" | "bf16");
        t.copyFrom(cast);
        used.add(key);
      }
    }
  }
  const extra = [...file.keys()].find((k) => !used.has(k));
  if (extra) throw fail(`${extra} is not an adapter of this model (other target_modules?)`);
}
