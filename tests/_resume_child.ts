// A small training run for tests/resume_test.ts, in its own process so that the test can kill it with
// SIGKILL: `deno run -A tests/_resume_child.ts '<json RunSpec>'`. It trains a tiny LLaMA with resumable
// checkpoints in `dir` (resuming when asked) and prints `RESULT {json}` at the end. The test pauses it at
// a chosen point with QLORA_TEST_PAUSE_AT (see pauseForTest in lib/base/test_hooks.ts) and kills it there.
import {
  type BatchSource,
  ByteTokenizer,
  datasetSource,
  exampleSource,
  getDevice,
  LlamaModel,
  PagedAdamW,
  TextDataset,
  Trainer,
  type TrainMode,
} from "../mod.ts";

/** One configuration of the kill-and-resume test. */
interface RunSpec {
  mode: TrainMode;
  dir: string;
  resume: boolean;
  optimizer?: "adamw" | "paged" | "adamw8bit";
  dtype?: "f32" | "bf16";
  dropout?: number;
  data?: "text" | "examples";
  gradAccumulation?: number;
  /** Device budget: this many bytes above what the model and the optimizer hold (paging under pressure). */
  budgetMargin?: number;
  /** Move every state page to the host pool after even steps: checkpoints then read pages from the host. */
  evictOnEven?: boolean;
}

const STEPS = 12, EVERY = 4, KEEP = 2; // tests/resume_test.ts expects these

const spec: RunSpec = JSON.parse(Deno.args[0]);
const device = getDevice();
const tokenizer = new ByteTokenizer();
const config = {
  vocabSize: tokenizer.vocabSize,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 32,
  normEps: 1e-5,
  ropeTheta: 10000,
};
const words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "home"];
const texts = Array.from(
  { length: 24 },
  (_, i) => Array.from({ length: 12 }, (_, j) => words[(i * 5 + j * j) % words.length]).join(" ") + ".",
);
const source: BatchSource = spec.data === "examples"
  ? exampleSource(texts.map((t) => ({ prompt: t.slice(0, 10), completion: t.slice(10) })), tokenizer, {
    seed: 3,
  })
  : datasetSource(TextDataset.fromDocuments(texts, { tokenizer, seed: 1, validationFraction: 0.2 }), 2);

using model = new LlamaModel(config, {
  mode: spec.mode,
  dtype: spec.dtype ?? "f32",
  rank: 4,
  alpha: 8,
  loraDropout: spec.dropout ?? 0,
  seed: 5,
  std: 0.1,
});
using trainer = new Trainer(model, source, {
  steps: STEPS,
  batchSize: 2,
  seq: 16,
  lr: 1e-2,
  evalEvery: 5,
  evalBatches: 2,
  optimizer: spec.optimizer,
  gradAccumulation: spec.gradAccumulation ?? 1,
  checkpointDir: spec.dir,
  checkpointEvery: EVERY,
  checkpointKeep: KEEP,
  resume: spec.resume,
  onStep: (i) => {
    if (spec.evictOnEven && i.step % 2 === 0) (trainer.optimizer as PagedAdamW).evictAll();
    console.log(`step ${i.step}`);
  },
});
if (spec.budgetMargin !== undefined) device.setMemoryBudget(device.memory().totalCurrent + spec.budgetMargin);
const result = await trainer.train();
const paging = trainer.optimizer instanceof PagedAdamW ? trainer.optimizer.stats() : null;
console.log(
  `RESULT ${JSON.stringify({ resumedFrom: result.resumedFrom, paging, evalLoss: result.evalLoss })}`,
);
