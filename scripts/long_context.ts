/**
 * `./deno task long-context [--model 7b|8b] [--seq 4096] [--budget 6GiB] [--reserve 0.31GiB] [--layers N]
 * [--no-offload] [--loss-chunk N] [--compare] [--json]`: one QLoRA training step (bf16, rank 8 on all
 * seven linears, gradient checkpointing, PagedAdamW with f32 master weights, batch 1) of a real LLaMA
 * shape with synthetic weights, under the ledger's budget of `--budget` less `--reserve` (the device's own
 * overhead: the CUDA context and the libraries' workspaces), with the blocks' inputs offloaded to the host
 * pool (unless `--no-offload`) and the LM head and the loss in chunks (`--loss-chunk`, default the
 * library's).
 *
 * Prints the ledger's peak per category beside the estimate of lib/estimate/estimate.ts, the host pool's peak, the
 * step time and the verdict: trained, or the OutOfMemoryError with its ledger. `--layers N` measures N
 * real-size blocks instead of all of them (minutes instead of an hour on two CPU cores; the estimate is
 * then of those N too). `--compare` then runs the same step again without the budget and without
 * offloading, twice each in turn, for the offload's step-time ratio (the faster of each pair).
 *
 * @module
 */

import {
  CATEGORIES,
  estimateMemory,
  type EstimateOptions,
  formatBytes,
  getDevice,
  LLAMA_CONFIGS,
  LlamaModel,
  OutOfMemoryError,
  PagedAdamW,
  Tensor,
} from "../mod.ts";
import { budgetFlags, helpText, intFlags, parseArgs, runMain, stepMemoryFlags, UsageError } from "./_cli.ts";

const USAGE = helpText("./deno task long-context [--model 7b|8b] [--seq N] [--budget SIZE] [options]", [
  ["--model 7b|8b", "LLaMA-2-7B or LLaMA-3.1-8B shapes, synthetic weights; default 7b"],
  ["--seq N", "tokens of the one sequence (at most the model's maxSeq); default 4096"],
  ["--budget SIZE", "the device's memory; the ledger's budget is --budget less --reserve; default 6GiB"],
  ["--reserve SIZE", "the device's own overhead (CUDA context, workspaces); default 0.31GiB"],
  [
    "--layers N",
    "real-size blocks measured (the estimate too); default all of the model's",
  ],
  ["--no-offload", "keep the checkpointed block inputs on the device, not in the host pool; default off"],
  [
    "--loss-chunk N",
    "LM head and loss rows at a time (0: all); default those whose logits fit 32 MiB",
  ],
  [
    "--compare",
    "then time the step without the budget, with and without offloading, twice each; default off",
  ],
  ["--json", "print the result as JSON; default off"],
], [
  "One QLoRA step (bf16, rank 8 on all seven linears, gradient checkpointing, PagedAdamW with f32 master",
  "weights, batch 1): the ledger's peak per category against lib/estimate/estimate.ts, the host pool, the verdict.",
]);

const NAMES = { "7b": "LLaMA-2-7B", "8b": "LLaMA-3.1-8B" } as const;

/** One step's figures. */
interface StepResult {
  /** Null when it trained; the error's message when it ran out of memory. */
  outOfMemory: string | null;
  seconds: number;
  peak: Record<string, number>;
  totalPeak: number;
  hostPeak: number;
}

/** Runs one forward, backward and optimizer step of `model` on `seq` synthetic tokens. */
function trainStep(model: LlamaModel, opt: PagedAdamW, seq: number): StepResult {
  const device = model.device;
  const v = model.config.vocabSize;
  const ids = new Int32Array(seq).map((_, i) => (i * 7919 + 13) % v);
  using tokens = Tensor.from(ids, { shape: [1, seq] });
  using targets = Tensor.from(ids.map((t) => (t * 31 + 1) % v), { shape: [1, seq] });
  device.resetPeak();
  const host0 = device.memory().hostCurrent;
  const t0 = performance.now();
  let outOfMemory: string | null = null;
  try {
    model.zeroGrad();
    model.forward(tokens, targets);
    model.backward();
    opt.step();
  } catch (e) {
    if (!(e instanceof OutOfMemoryError)) throw e;
    outOfMemory = e.message;
  }
  const seconds = (performance.now() - t0) / 1000;
  const snap = device.memory();
  return {
    outOfMemory,
    seconds,
    peak: { ...snap.peak },
    totalPeak: snap.totalPeak,
    hostPeak: snap.hostPeak - host0,
  };
}

await runMain(() => {
  const { flags, positional } = parseArgs(Deno.args, {
    model: "string",
    seq: "string",
    budget: "string",
    reserve: "string",
    layers: "string",
    "no-offload": "boolean",
    "loss-chunk": "string",
    compare: "boolean",
    json: "boolean",
  });
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const name = (flags.model ?? "7b") as keyof typeof NAMES;
  if (!(name in NAMES)) throw new UsageError(`--model must be 7b or 8b`);
  const int = intFlags(flags);
  const whole = LLAMA_CONFIGS[name];
  const layers = int("layers", whole.layers);
  const seq = int("seq", 4096);
  if (seq > whole.maxSeq) throw new UsageError(`--seq ${seq} exceeds ${NAMES[name]}'s ${whole.maxSeq}`);
  const config = { ...whole, layers };
  const budget = budgetFlags({ budget: "6GiB", reserve: "0.31GiB", ...flags })!; // never null: a default
  const offload = !flags["no-offload"];
  const { lossChunk } = stepMemoryFlags({ ...flags, checkpointing: true });
  const device = getDevice();
  const options: EstimateOptions = {
    mode: "qlora",
    seq,
    batch: 1,
    dtype: "bf16",
    checkpointing: true,
    offloadCheckpoints: offload,
    lossChunk,
    optimizer: "paged",
    backend: device.backend === "cpu" ? "cpu" : "cuda",
  };
  const estimate = estimateMemory(config, options);
  const log = (line: string) => flags.json || console.log(line);
  log(
    `${NAMES[name]}${layers < whole.layers ? `, ${layers} of its ${whole.layers} blocks` : ""}: QLoRA, ` +
      `1 x ${seq} tokens, checkpointing${offload ? " offloaded to the host pool" : ""}, loss in chunks of ` +
      `${lossChunk ?? "the default"} rows; ledger budget ${formatBytes(budget.ledger)} ` +
      `(${formatBytes(budget.budget)} less a reserve of ${formatBytes(budget.reserve)})`,
  );
  device.setMemoryBudget(budget.ledger);
  const t0 = performance.now();
  let step: StepResult;
  let compared: { offloaded: number; kept: StepResult } | null = null;
  {
    using model = new LlamaModel(config, {
      mode: "qlora",
      dtype: "bf16",
      rank: 8,
      alpha: 16,
      seed: 1,
      checkpointing: true,
      offloadCheckpoints: offload,
      lossChunk,
    });
    using opt = new PagedAdamW(model.trainables(), { lr: 1e-5, masterWeights: true, weightDecay: 0 });
    log(`built in ${((performance.now() - t0) / 1000).toFixed(0)} s; one step...`);
    step = trainStep(model, opt, seq);
    if (flags.compare) {
      // Warm now (the first step also makes the gradients, the optimizer's states and the kernels'
      // plans): the two kinds of step in turn, the faster of two each.
      device.setMemoryBudget(0);
      log("again, twice each with and without offloading (no budget)...");
      let offloaded = Infinity, kept: StepResult | null = null;
      for (let i = 0; i < 4; i++) {
        model.offloadCheckpoints = i % 2 === 0;
        const r = trainStep(model, opt, seq);
        if (r.outOfMemory) throw new Error(r.outOfMemory);
        if (model.offloadCheckpoints) offloaded = Math.min(offloaded, r.seconds);
        else if (!kept || r.seconds < kept.seconds) kept = r;
      }
      compared = { offloaded, kept: kept! };
    }
  }
  device.setMemoryBudget(0);
  if (flags.json) {
    console.log(
      JSON.stringify({
        model: NAMES[name],
        config,
        seq,
        budget,
        offload,
        lossChunk,
        estimate,
        step,
        compared,
      }),
    );
    return;
  }
  const rows = CATEGORIES.map((c) => {
    const m = step.peak[c], e = estimate.bytes[c];
    const err = m ? `${(100 * (e - m) / m).toFixed(2)}%` : "";
    return `${c.padEnd(18)} ${formatBytes(m).padStart(11)} ${formatBytes(e).padStart(11)} ${err.padStart(8)}`;
  });
  console.log(
    [
      "",
      `${"category".padEnd(18)} ${"ledger peak".padStart(11)} ${"estimate".padStart(11)} ${
        "error".padStart(8)
      }`,
      ...rows,
      `${"step peak".padEnd(18)} ${formatBytes(step.totalPeak).padStart(11)} ${
        formatBytes(estimate.peak).padStart(11)
      }`,
      `${"host pool".padEnd(18)} ${formatBytes(step.hostPeak).padStart(11)} ${
        formatBytes(estimate.host).padStart(11)
      }`,
      "",
      step.outOfMemory
        ? `out of memory: ${step.outOfMemory}`
        : `trained one step in ${step.seconds.toFixed(1)} s with ${
          formatBytes(budget.ledger - step.totalPeak)
        } of the ledger's budget to spare`,
      ...(compared
        ? [
          `warm steps: offloaded ${compared.offloaded.toFixed(2)} s, kept on the device ${
            compared.kept.seconds.toFixed(2)
          } s (peak ${formatBytes(compared.kept.totalPeak)}): the offload costs ${
            (compared.offloaded / compared.kept.seconds).toFixed(3)
          }x the step time`,
        ]
        : []),
    ].join("\n"),
  );
}, USAGE);
