/**
 * A child process for tests/ledger_rss_test.ts: builds a 0.5B-parameter LLaMA (dim 2048, 8 blocks, vocabulary
 * 32,000) in the mode given as the first argument, bf16, trains two steps of 1x256 tokens, frees it, and
 * prints as JSON the ledger's peak, the growth of the process's peak RSS over what it held before the
 * model, and the anonymous memory it still holds above that after freeing everything (the library code
 * that the steps paged in for the first time is resident too, file-backed, about 10 MiB: not data).
 */
import { AdamW, getDevice, LlamaModel, PagedAdamW, Tensor, type TrainMode } from "../mod.ts";

const mode = Deno.args[0] as TrainMode;
const status = (key: string) =>
  Number(Deno.readTextFileSync("/proc/self/status").match(new RegExp(`${key}:\\s+(\\d+) kB`))![1]) * 1024;
const device = getDevice();
{
  using _warm = Tensor.zeros([1]); // the library loaded and initialised before the baseline
}
const base = status("VmRSS");
const baseAnon = status("RssAnon");
device.resetPeak();
{
  const config = {
    vocabSize: 32000,
    dim: 2048,
    layers: 8,
    heads: 16,
    kvHeads: 16,
    hiddenDim: 5632,
    maxSeq: 256,
    normEps: 1e-5,
    ropeTheta: 10000,
  };
  using model = new LlamaModel(config, { mode, dtype: "bf16", rank: 8 });
  using opt = mode === "qlora" ? new PagedAdamW(model.trainables()) : new AdamW(model.trainables());
  const ids = new Int32Array(256).map((_, i) => (i * 7919 + 1) % config.vocabSize);
  using x = Tensor.from(ids, { shape: [1, 256] });
  using y = Tensor.from(ids.map((v) => (v + 1) % config.vocabSize), { shape: [1, 256] });
  for (let step = 0; step < 2; step++) {
    model.zeroGrad();
    model.forward(x, y);
    model.backward();
    opt.step();
  }
}
console.log(JSON.stringify({
  peak: device.memory().totalPeak,
  growth: status("VmHWM") - base,
  kept: status("RssAnon") - baseAnon,
}));
