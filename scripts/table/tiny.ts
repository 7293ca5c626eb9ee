/**
 * The tiny scale of `./deno task table`: the tiny LLaMA pretrained on Brown (cached), fine-tuned on State
 * of the Union addresses in full, LoRA and QLoRA modes: ledger, tokens per second, validation loss.
 *
 * @module
 */

import {
  ByteTokenizer,
  CATEGORIES,
  datasetSource,
  type Device,
  estimateMemory,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  loadDocuments,
  type MemoryEstimate,
  OutOfMemoryError,
  TextDataset,
  tinyBase,
  Trainer,
  type TrainMode,
  type WeightSource,
} from "../../mod.ts";
import { ALPHA, merge, oomText, precisionsOf, RANK, zeroBytes } from "./common.ts";
import { measureGeneration } from "./inference.ts";
import type { TableOptions, TinyResult, TinyRun } from "./types.ts";

/** Fine-tunes the tiny base in one mode and measures it; throws OutOfMemoryError past the budget. */
async function tinyRun(
  o: TableOptions,
  device: Device,
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
  // Inference: generation with merged adapters for LoRA, the NF4 base and unmerged adapters for QLoRA.
  if (mode === "lora") merge(model);
  const inference = await measureGeneration(model, device, o, 3);
  const perStep = r.history.map((h) => h.tokensPerSecond).sort((a, b) => a - b);
  return {
    mode,
    bytes,
    totalPeak: r.peakBytes,
    estimate,
    parameters: model.parameters,
    trainable: model.trainableParameters,
    trainTokensPerSecond: perStep[Math.floor(perStep.length / 2)],
    inference,
    lossBefore: before.loss,
    lossAfter: r.evalLoss,
    history: r.history.map((h) => ({ step: h.step, loss: h.loss, evalLoss: h.evalLoss })),
    precisions,
  };
}

/** The pretrained base and the fine-tuning data, handed to a study that runs before the tiny runs. */
export interface TinyInputs {
  /** The tiny config. */
  config: LlamaConfig;
  /** The pretrained base's weights. */
  weights: WeightSource;
  /** State of the Union, split by address. */
  sotu: TextDataset;
}

/**
 * Fine-tunes the pretrained tiny base in each mode; `study` (the quality study) runs first on the same
 * base and data, outside the memory budget.
 */
export async function runTiny(
  o: TableOptions,
  device: Device,
  study?: (inputs: TinyInputs) => Promise<void>,
): Promise<TinyResult> {
  const log = o.log!;
  const config = { ...LLAMA_CONFIGS.tiny };
  const tokenizer = new ByteTokenizer({ padVocabTo: 64 });
  const base = await tinyBase({
    path: o.base,
    config,
    steps: o.pretrainSteps,
    tokenizer,
    log: (line) => log(line.replace(/^tiny base/, "tiny")),
    onStep: (i) => {
      if (i.step % 50 === 0 || i.step === i.steps) {
        log(`  pretrain ${i.step}/${i.steps} loss ${i.loss.toFixed(3)}`);
      }
    },
  });
  const weights = base.weights;
  const sotu = TextDataset.fromDocuments(await loadDocuments("sotu"), { tokenizer, seed: 0 });
  if (study) await study({ config, weights, sotu });
  // The budget applies to fine-tuning and the large scale, not to pretraining the base.
  if (o.budget) device.setMemoryBudget(o.budget);
  const seq = o.model === "tiny" ? o.seq : 128, batch = o.model === "tiny" ? o.batch : 8;
  const runs: TinyRun[] = [];
  for (const mode of ["full", "lora", "qlora"] as const) {
    const estimate = estimateMemory(config, { mode, seq, batch, dtype: "f32", rank: RANK });
    try {
      runs.push(await tinyRun(o, device, mode, config, weights, sotu, seq, batch, estimate));
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
        inference: null,
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
    base: base.source,
    seq,
    batch,
    steps: o.steps,
    tokens: { train: sotu.train.length, validation: sotu.validation.length },
    runs,
  };
}
