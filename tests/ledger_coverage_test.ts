/**
 * Every byte counted: over one training step of one LLaMA-2-7B-sized block (hidden 4096, intermediate
 * 11008, 32 heads; batch 1, seq 64), the ledger accounts for at least 98% of the memory the process
 * took (the native heap by glibc's own statistics on the CPU; the driver's used bytes on CUDA), scratch
 * of every call included. QLORA_COVERAGE_MODES=full,lora,qlora measures other modes too (printed).
 */
import { assert } from "@std/assert";
import {
  AdamW,
  getDevice,
  ledgerCoverage,
  type LedgerSnapshot,
  LLAMA_CONFIGS,
  LlamaModel,
  PagedAdamW,
  Tensor,
  type TrainMode,
} from "../mod.ts";

const device = getDevice();
const SEQ = 64;

function tokens(n: number, vocab: number, seed: number): Int32Array {
  let x = seed;
  return new Int32Array(n).map(() => (x = (x * 1103515245 + 12345) % 2147483648) % vocab);
}

/** Coverage over the forward pass of a warm step, and the growth of the process and the ledger over the step. */
function measure(mode: TrainMode) {
  const config = { ...LLAMA_CONFIGS["7b"], layers: 1, vocabSize: 32000 };
  using model = new LlamaModel(config, { mode, dtype: "bf16", rank: 8, alpha: 16 });
  const Opt = mode === "qlora" ? PagedAdamW : AdamW;
  using opt = new Opt(model.trainables(), { lr: 1e-4, maxGradNorm: 1 });
  using x = Tensor.from(tokens(SEQ, config.vocabSize, 1), { shape: [1, SEQ], device });
  using y = Tensor.from(tokens(SEQ, config.vocabSize, 2), { shape: [1, SEQ], device });
  // A first step builds what lives for the run (gradients, optimizer states, oneDNN's primitive cache);
  // the second is measured.
  model.zeroGrad();
  model.forward(x, y);
  model.backward();
  opt.step();
  device.synchronize();
  const before = device.memory();
  model.zeroGrad();
  model.forward(x, y);
  device.synchronize();
  const forward = device.memory();
  model.backward();
  opt.step();
  device.synchronize();
  const after = device.memory();
  const grow = (a: LedgerSnapshot, b: LedgerSnapshot) => b.processUsed - a.processUsed;
  return {
    forward: ledgerCoverage(before, forward),
    forwardGrowth: grow(before, forward),
    stepGrowth: grow(before, after),
    stepLedgerGrowth: after.totalCurrent - before.totalCurrent,
  };
}

Deno.test("ledger coverage: one LoRA step of a 7B-sized block is >= 98% counted, and nothing uncounted is kept", () => {
  const modes = (Deno.env.get("QLORA_COVERAGE_MODES") ?? "lora").split(",") as TrainMode[];
  for (const mode of modes) {
    const m = measure(mode);
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    console.log(
      `${device.backend} ${mode}: forward ${(100 * m.forward).toFixed(2)}% of ${mib(m.forwardGrowth)} MiB, ` +
        `step: process ${mib(m.stepGrowth)} MiB, ledger ${mib(m.stepLedgerGrowth)} MiB`,
    );
    // The forward pass holds the activations of a 7B block: the process grows, so the figure says something.
    assert(m.forwardGrowth > 2 ** 20, `${mode}: the forward pass took ${m.forwardGrowth} bytes`);
    assert(
      m.forward >= 0.98,
      `${mode}: the ledger counts ${(100 * m.forward).toFixed(2)}% of the forward pass`,
    );
    // Over the whole step everything the forward pass took is released again: what the process keeps
    // beyond the ledger is under 2% of what the forward pass held.
    const kept = m.stepGrowth - m.stepLedgerGrowth;
    assert(kept < 0.02 * m.forwardGrowth, `${mode}: the step kept ${kept} bytes the ledger does not count`);
  }
});
