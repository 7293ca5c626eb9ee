/**
 * `./deno task finetune --model DIR --data FILE|brown|sotu|moby-dick --mode lora|qlora [--budget 6GiB
 * [--reserve 0.31GiB]] [--steps 100] [--batch 4] [--seq 256] [--lr 2e-4] [--rank 8] [--alpha 16]
 * [--targets q,k,v,o,gate,up,down] [--dtype bf16|f32] [--checkpointing [--offload-checkpoints]]
 * [--loss-chunk N] [--out DIR] [--checkpoint-every N] [--keep 3] [--resume [DIR]] [--merge] [--verify]
 * [--seed N]`: fine-tunes a Hugging Face LLaMA model directory (config.json, safetensors shards,
 * tokenizer.json) with LoRA or QLoRA.
 *
 * - Data: JSON Lines of `{"text": ...}` or `{"prompt": ..., "completion": ...}` (the loss on the completion
 *   only), or a bundled corpus by name.
 * - QLoRA quantizes each weight to NF4 as it is read: the load never holds more than one 16-bit weight.
 * - Output (default `build/finetune/NAME-MODE`): a PEFT adapter (`adapter_model.safetensors`,
 *   `adapter_config.json` with `base_model_name_or_path`); with `--merge`, `merged/`, a model directory in
 *   transformers' layout (weights in the compute dtype) with the tokenizer's files.
 * - Resumable checkpoints (adapters, optimizer state, step, random streams, configuration) go to
 *   `OUT/checkpoint-NNNNNN/` every `--checkpoint-every` steps (default a tenth of the run) and at the end,
 *   the newest `--keep` kept. `--resume` (or `--resume OUT`) continues an interrupted run from the latest
 *   complete one, with the same flags; torn checkpoints are skipped, other flags refused by name.
 * - Memory: `--budget SIZE` caps the ledger (an OutOfMemoryError past it); `--reserve SIZE` takes the
 *   device's own overhead out of it (the CUDA context and the libraries' workspaces, which no ledger
 *   sees), so `--budget 6GiB --reserve 0.31GiB` behaves like a 6 GiB card. `--checkpointing` recomputes
 *   each block in backward from its saved input, which `--offload-checkpoints` keeps in the host pool
 *   instead of on the device; `--loss-chunk N` computes the LM head and the loss N rows at a time (0: all
 *   at once; default: the rows whose logits fit 32 MiB).
 * - `--verify`: reloads the adapter onto a fresh copy of the base and, with `--merge`, the merged export,
 *   and compares their logits with the model in memory (loads the base again: meant for small models).
 *
 * @module
 */

import {
  type BatchSource,
  datasetSource,
  exampleSource,
  formatBytes,
  getDevice,
  HFTokenizer,
  LlamaModel,
  loadAdapter,
  loadDocuments,
  openModelDir,
  parseExamples,
  saveCheckpoint,
  saveModelDir,
  Tensor,
  TextDataset,
  Trainer,
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
  targetsFlag,
  UsageError,
} from "./_cli.ts";

const USAGE = helpText(
  "./deno task finetune --model DIR --data FILE.jsonl|brown|sotu|moby-dick [--mode lora|qlora] [options]",
  [
    [
      "--model DIR",
      "Hugging Face LLaMA directory (config.json, safetensors, tokenizer.json); required",
    ],
    [
      "--data FILE.jsonl|NAME",
      'JSON Lines ({"text"} or {"prompt","completion"}) or brown, sotu, moby-dick; required',
    ],
    [
      "--mode lora|qlora",
      "LoRA (16-bit base, AdamW) or QLoRA (NF4 base, PagedAdamW); default qlora",
    ],
    ["--steps N", "training steps; default 100"],
    ["--batch N", "sequences per step; default 4"],
    ["--seq N", "tokens per sequence (at most the model's maxSeq); default 256"],
    ["--lr L", "peak learning rate (warm-up of min(10, steps / 10) steps); default 2e-4"],
    ["--rank R", "rank of the LoRA adapters; default 8"],
    ["--alpha A", "LoRA alpha: the adapters' update is scaled by alpha / rank; default 16"],
    [
      "--targets q,k,v,o,gate,up,down",
      "the linears that get adapters (with or without _proj); default all seven",
    ],
    ["--dtype bf16|f32", "weights and activations; default bf16"],
    ["--seed N", "seed of the adapters and the data's split and order (>= 1); default 0"],
    ...STEP_MEMORY_HELP,
    ...BUDGET_HELP,
    [
      "--out DIR",
      "the adapter and checkpoints; default build/finetune/NAME-MODE (NAME: --model's)",
    ],
    [
      "--checkpoint-every N",
      "steps between checkpoints (OUT/checkpoint-NNNNNN/); default a tenth of --steps",
    ],
    ["--keep K", "the newest K checkpoints are kept; default 3"],
    [
      "--resume [DIR]",
      "go on from the latest checkpoint of DIR (or --out), same flags; default off",
    ],
    [
      "--merge",
      "also write OUT/merged/: the merged model, transformers' layout; default off",
    ],
    ["--verify", "reload the adapter (and merged model), compare their logits; default off"],
  ],
  ["--budget 6GiB --reserve 0.31GiB behaves like a 6 GiB card."],
);

const CORPORA = ["brown", "sotu", "moby-dick"] as const;

/** Largest |a - b| over two logit tensors' values. */
function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

await runMain(async () => {
  const { value: resume, rest } = takeOptionalFlag(Deno.args, "resume");
  const { flags } = parseArgs(rest, {
    model: "string",
    data: "string",
    mode: "string",
    budget: "string",
    reserve: "string",
    steps: "string",
    batch: "string",
    seq: "string",
    lr: "string",
    rank: "string",
    alpha: "string",
    targets: "string",
    dtype: "string",
    checkpointing: "boolean",
    "offload-checkpoints": "boolean",
    "loss-chunk": "string",
    out: "string",
    merge: "boolean",
    verify: "boolean",
    seed: "string",
    "checkpoint-every": "string",
    keep: "string",
  });
  const modelDir = flags.model as string | undefined, dataArg = flags.data as string | undefined;
  if (!modelDir || !dataArg) throw new UsageError("--model and --data are required");
  const mode = (flags.mode ?? "qlora") as "lora" | "qlora";
  if (mode !== "lora" && mode !== "qlora") throw new UsageError("--mode must be lora or qlora");
  const int = intFlags(flags);
  const dtype = (flags.dtype ?? "bf16") as "bf16" | "f32";
  if (dtype !== "bf16" && dtype !== "f32") throw new UsageError("--dtype must be bf16 or f32");
  const targetModules = targetsFlag(flags.targets);
  const steps = int("steps", 100), batchSize = int("batch", 4), seed = flags.seed ? int("seed", 1) : 0;
  const rank = int("rank", 8), alpha = flags.alpha ? Number(flags.alpha) : 16;
  const memory = stepMemoryFlags(flags), budget = budgetFlags(flags);

  const device = getDevice();
  if (budget) device.setMemoryBudget(budget.ledger);
  const name = modelDir.replace(/\/+$/, "").split("/").pop()!;
  const out = (flags.out as string | undefined) ??
    (typeof resume === "string"
      ? resume.replace(/\/checkpoint-\d+\/*$/, "")
      : `build/finetune/${name}-${mode}`);

  using dir = await openModelDir(modelDir);
  const config = dir.hf.config;
  const seq = Math.min(int("seq", 256), config.maxSeq);
  const tokenizer = await HFTokenizer.fromDir(modelDir);
  let source: BatchSource;
  if ((CORPORA as readonly string[]).includes(dataArg)) {
    const docs = await loadDocuments(dataArg as typeof CORPORA[number]);
    source = datasetSource(TextDataset.fromDocuments(docs, { tokenizer, seed }), seed);
    console.log(`data: the ${dataArg} corpus, ${docs.length} documents`);
  } else {
    const examples = parseExamples(await Deno.readTextFile(dataArg), dataArg);
    source = exampleSource(examples, tokenizer, { seed });
    const pairs = examples.filter((e) => "prompt" in e).length;
    console.log(`data: ${examples.length} examples from ${dataArg} (${pairs} prompt/completion pairs)`);
  }

  const t0 = performance.now();
  device.resetPeak();
  const options = {
    mode,
    rank,
    alpha,
    dtype,
    targetModules,
    ...memory,
    seed,
  };
  using model = new LlamaModel(config, { ...options, weights: dir.weights });
  const load = device.memory();
  console.log(
    `loaded ${modelDir} (${dir.files.length} file${dir.files.length > 1 ? "s" : ""}, ${
      formatBytes(dir.bytes)
    } ` +
      `of ${dir.hf.dtype ?? "float"} weights) in ${((performance.now() - t0) / 1000).toFixed(1)} s: ` +
      `ledger peak ${formatBytes(load.totalPeak)}, now ${formatBytes(load.totalCurrent)}, host RSS ` +
      `${formatBytes(Deno.memoryUsage().rss)}`,
  );
  console.log(
    `${mode} on ${device}: ${model.trainableParameters.toLocaleString()} of ${model.parameters.toLocaleString()} ` +
      `weights trainable (${
        ((100 * model.trainableParameters) / model.parameters).toFixed(2)
      }%), rank ${rank}, ` +
      `targets ${targetModules.join(",")}`,
  );

  const every = Math.max(1, Math.floor(steps / 20));
  using trainer = new Trainer(model, source, {
    steps,
    batchSize,
    seq,
    lr: flags.lr ? Number(flags.lr) : 2e-4,
    warmupSteps: Math.min(10, Math.floor(steps / 10)),
    evalEvery: Math.max(1, Math.floor(steps / 4)),
    evalBatches: 4,
    optimizer: mode === "qlora" ? "paged" : "adamw",
    checkpointDir: out,
    checkpointEvery: int("checkpoint-every", Math.max(1, Math.floor(steps / 10))),
    checkpointKeep: int("keep", 3),
    resume,
    runInfo: { model: name, modelBytes: dir.bytes, data: dataArg.split("/").pop()! },
    baseModel: name,
    onStep: (i) => {
      if (i.step % every !== 0 && i.step !== i.steps && i.evalLoss === undefined) return;
      const evalPart = i.evalLoss === undefined ? "" : ` eval ${i.evalLoss.toFixed(4)}`;
      console.log(
        `step ${i.step}/${i.steps} loss ${i.loss.toFixed(4)}${evalPart} lr ${i.lr.toExponential(2)} ` +
          `${Math.round(i.tokensPerSecond)} tok/s peak ${formatBytes(i.memory.totalPeak)}`,
      );
    },
  });
  const resumed = resume ? await trainer.resume() : null;
  if (!resumed?.step) console.log(`validation loss before: ${trainer.evaluate().loss.toFixed(4)}`);
  const result = await trainer.train();
  console.log(
    `validation loss after: ${result.evalLoss.toFixed(4)} (perplexity ${
      result.evalPerplexity.toFixed(2)
    }), ` +
      `${Math.round(result.tokensPerSecond)} tok/s, ledger peak ${formatBytes(result.peakBytes)}`,
  );
  console.log(device.memory().toString());

  const files = await saveCheckpoint(model, out, { step: steps, loss: result.evalLoss }, { baseModel: name });
  console.log(`adapter: ${files.join(", ")}`);

  // Logits of one validation batch, in memory, for the checks below.
  const probe = source.validationBatches(batchSize, seq, 1)[0] ?? source.trainBatch(batchSize, seq);
  using tokens = Tensor.from(probe.inputs, { shape: [batchSize, seq], device });
  using inMemory = model.logits(tokens);
  if (flags.verify) {
    using fresh = new LlamaModel(config, { ...options, weights: dir.weights });
    await loadAdapter(fresh, out);
    using reloaded = fresh.logits(tokens);
    console.log(
      `verify: the adapter reloaded onto the base: max |logit difference| ${
        maxDiff(inMemory.toFloat32(), reloaded.toFloat32())
      }`,
    );
  }
  if (flags.merge) {
    model.merge();
    using merged = model.logits(tokens);
    const mergedDir = `${out}/merged`;
    const written = await saveModelDir(model, mergedDir, { config: dir.hf.json, dtype });
    for (const f of ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
      try {
        await Deno.copyFile(`${modelDir}/${f}`, `${mergedDir}/${f}`);
        written.push(`${mergedDir}/${f}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    console.log(
      `merged: ${written.join(", ")} (merging moves the logits by at most ` +
        `${maxDiff(inMemory.toFloat32(), merged.toFloat32()).toExponential(2)}: ${
          mode === "qlora" ? "NF4 base dequantized, " : ""
        }rounding)`,
    );
    if (flags.verify) {
      using back = await openModelDir(mergedDir);
      using reloaded = new LlamaModel(back.hf.config, {
        mode: "lora",
        rank,
        dtype,
        weights: back.weights,
        targetModules: [],
      });
      using again = reloaded.logits(tokens);
      console.log(
        `verify: the merged export reloaded: max |logit difference| ${
          maxDiff(merged.toFloat32(), again.toFloat32())
        }`,
      );
    }
  }
}, USAGE);
