import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  countParameters,
  defaultLossChunk,
  type Device,
  estimateInference,
  estimateMemory,
  GENERIC_CONTEXT,
  getDevice,
  GPU_GENERATIONS,
  GPU_PROFILES,
  gpuProfile,
  InvalidArgumentError,
  LedgerSnapshot,
  LLAMA_CONFIGS,
  measuredContext,
  willItFit,
} from "../mod.ts";
import { fitCommand, fitInferenceCommand, formatFit, formatInferenceFit } from "../scripts/fit.ts";
import { UsageError } from "../scripts/_cli.ts";

const C7 = LLAMA_CONFIGS["7b"];
const GiB = 2 ** 30;
const RTX3060 = gpuProfile("rtx3060-6gb");

Deno.test("fit: GPU profiles by name or size, with a context figure per generation", () => {
  assertEquals(RTX3060.memory, 6 * GiB);
  assertEquals(gpuProfile("RTX3060").memory, 12 * GiB);
  assertEquals(gpuProfile("h200").memory, 141 * GiB);
  for (const p of Object.values(GPU_PROFILES)) {
    assert(p.generation !== null && Object.values(GPU_GENERATIONS).includes(p.generation), p.id);
    assert(p.generation.context > 0 && p.generation.context < GiB, p.id);
  }
  const raw = gpuProfile("24GiB");
  assertEquals([raw.memory, raw.generation], [24 * GiB, null]);
  assertEquals(gpuProfile("8GB").memory, 8e9);
  assertThrows(() => gpuProfile("rtx9999"), InvalidArgumentError, "one of rtx3060-6gb, rtx3060, rtx4090");
  assertThrows(() => gpuProfile("0GiB"), InvalidArgumentError);
});

Deno.test("fit: required is the estimate with CUDA's workspace plus the context, on its own line", () => {
  const r = willItFit(C7, { mode: "qlora", seq: 512, batch: 1, checkpointing: true }, RTX3060);
  const e = estimateMemory(C7, {
    mode: "qlora",
    seq: 512,
    batch: 1,
    checkpointing: true,
    optimizer: "paged",
    backend: "cuda",
  });
  assertEquals(r.estimate, e);
  assertEquals(r.context.bytes, GPU_GENERATIONS["ampere-consumer"].context);
  assertEquals(r.context.source, "typical");
  assertEquals(r.required, e.peak + r.context.bytes);
  assertEquals(r.spare, 6 * GiB - r.required);
  assert(r.fits && r.verdict.startsWith("fits with ") && r.verdict.endsWith(" to spare"), r.verdict);
  assertEquals(r.suggestions, []);
  // A given context replaces the typical one; a GPU known only by size gets the generic figure.
  const noContext = willItFit(
    C7,
    { mode: "qlora", seq: 512, batch: 1, checkpointing: true, context: 0 },
    RTX3060,
  );
  assertEquals([noContext.required, noContext.context.source], [e.peak, "given"]);
  const raw = willItFit(C7, { mode: "qlora", seq: 512, batch: 1 }, gpuProfile("6GiB"));
  assertEquals(raw.context.bytes, GENERIC_CONTEXT);
  assertThrows(
    () => willItFit(C7, { mode: "qlora", seq: 1, batch: 1, context: -1 }, RTX3060),
    InvalidArgumentError,
  );
});

Deno.test("fit: the largest sequence and batch per mode are the last that fit", () => {
  const r = willItFit(C7, { mode: "qlora", seq: 512, batch: 2 }, RTX3060);
  const need = (mode: "lora" | "qlora", seq: number, batch: number) =>
    estimateMemory(C7, {
      mode,
      seq,
      batch,
      optimizer: mode === "qlora" ? "paged" : "adamw",
      backend: "cuda",
    }).peak + r.context.bytes;
  const { seq, batch } = r.largest.qlora;
  assert(seq > 0 && need("qlora", seq, 2) <= 6 * GiB && need("qlora", seq + 1, 2) > 6 * GiB, `seq ${seq}`);
  assert(batch === 0 ? need("qlora", 512, 1) > 6 * GiB : need("qlora", 512, batch + 1) > 6 * GiB);
  assertEquals(r.largest.full, { seq: 0, batch: 0 });
  assertEquals(r.largest.lora, { seq: 0, batch: 0 }); // 12.5 GiB of bf16 weights
  // Capped at the model's maxSeq.
  const big = willItFit(C7, { mode: "qlora", seq: 512, batch: 1 }, gpuProfile("h200"));
  assertEquals(big.largest.qlora.seq, C7.maxSeq);
  assert(big.largest.lora.batch > big.largest.full.batch);
});

Deno.test("fit: suggestions are estimated, the largest saving first, and say which fit", () => {
  const r = willItFit(C7, { mode: "qlora", seq: 512, batch: 1 }, RTX3060);
  assert(!r.fits && r.spare < 0, "7B QLoRA at 512 tokens without checkpointing needs more than 6 GiB");
  assert(r.verdict.startsWith(`needs `) && r.verdict.includes(", --checkpointing (fits"), r.verdict);
  // Offloading the checkpoints too saves more, so it comes first.
  assert(r.verdict.includes("try --checkpointing --offload-checkpoints (fits"), r.verdict);
  const ckpt = r.suggestions.find((s) => s.flag === "--checkpointing")!;
  const again = willItFit(C7, { mode: "qlora", seq: 512, batch: 1, checkpointing: true }, RTX3060);
  assertEquals([ckpt.required, ckpt.saves, ckpt.fits], [again.required, r.required - again.required, true]);
  const seq = r.suggestions.find((s) => s.flag.startsWith("--seq "))!;
  assertEquals(Number(seq.flag.slice(6)), r.largest.qlora.seq);
  for (let i = 1; i < r.suggestions.length; i++) assert(r.suggestions[i - 1].saves >= r.suggestions[i].saves);
  for (const s of r.suggestions) assert(s.saves > 0 && s.required === r.required - s.saves);
  // Full fine-tuning on 24 GiB: no single change is enough, so the helpful ones are also tried together.
  const full = willItFit(C7, { mode: "full", seq: 512, batch: 1 }, gpuProfile("rtx4090"));
  assert(!full.fits && full.suggestions[0].flag === "--mode qlora" && full.suggestions[0].fits, full.verdict);
  const together = "--checkpointing --offload-checkpoints --optimizer 8bit --no-master-weights";
  assert(full.suggestions.some((s) => s.flag === together), full.suggestions.map((s) => s.flag).join("; "));
});

Deno.test("fit: a paged optimizer that does not fit resident can fit by paging its states out", () => {
  const o = { mode: "full" as const, seq: 64, batch: 1, context: 0, optimizer: "paged" as const };
  const e = estimateMemory(LLAMA_CONFIGS.tiny, { ...o, backend: "cuda" });
  const gpu = gpuProfile(String(Math.floor((e.peak + e.minimum) / 2)));
  const r = willItFit(LLAMA_CONFIGS.tiny, o, gpu);
  assert(!r.fits && r.fitsWithPaging, r.verdict);
  assertStringIncludes(r.verdict, "fits by paging");
  assert(!willItFit(LLAMA_CONFIGS.tiny, { ...o, optimizer: "adamw" }, gpu).fitsWithPaging);
});

Deno.test("fit: the context is measured from the driver on CUDA, never on the CPU", () => {
  assertEquals(measuredContext(getDevice("cpu")), null);
  const gpu = fakeCuda(12 * GiB, 11 * GiB, 256 * 2 ** 20);
  assertEquals(measuredContext(gpu), GiB - 256 * 2 ** 20);
  // No --gpu: this machine's GPU, its context measured.
  const local = fitCommand(["--model", "7b", "--mode", "qlora"], gpu);
  assertEquals([local.gpu.id, local.gpu.memory, local.context.source], ["local", 12 * GiB, "measured"]);
  assertEquals(local.context.bytes, GiB - 256 * 2 ** 20);
  // The same card asked by name is measured; another card gets its typical figure; --cuda-context wins.
  assertEquals(fitCommand(["--gpu", "rtx3060"], gpu).context.source, "measured");
  assertEquals(fitCommand(["--gpu", "rtx4090"], gpu).context.source, "typical");
  const given = fitCommand(["--gpu", "rtx4090", "--cuda-context", "1GiB"], gpu).context;
  assertEquals([given.bytes, given.source], [GiB, "given"]);
});

Deno.test("fit: the command line, a model directory and the text it prints", () => {
  const r = fitCommand(["--mode", "lora", "--seq", "2048", "--batch", "4", "--gpu", "rtx4090"], null);
  assertEquals(r.run, {
    mode: "lora",
    seq: 2048,
    batch: 4,
    dtype: "bf16",
    rank: 8,
    targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    checkpointing: false,
    offloadCheckpoints: false,
    lossChunk: defaultLossChunk(C7, "bf16"),
    optimizer: "adamw",
    masterWeights: true,
  });
  assertEquals(r.model.name, "LLaMA-2-7B");
  const text = formatFit(r);
  for (
    const want of ["weights", "optimizer_states", "activations", "CUDA context", "total", "verdict: needs"]
  ) {
    assertStringIncludes(text, want);
  }
  assert(!text.includes("quantized_weights"), "empty categories are not shown");
  const dir = new URL("./data/hf/gqa_untied_f32", import.meta.url).pathname;
  const d = fitCommand(
    ["--model", dir, "--mode", "qlora", "--targets", "q,v", "--rank", "4", "--seq", "16", "--gpu", "1GiB"],
    null,
  );
  assertEquals([d.model.config.kvHeads, d.run.targetModules], [2, ["q_proj", "v_proj"]]);
  assert(d.fits);
  const opt = fitCommand(
    ["--mode", "full", "--optimizer", "8bit", "--no-master-weights", "--seq", "64"],
    null,
  );
  assertEquals(opt.estimate.masterWeights, 0);
  for (
    const bad of [
      ["--mode", "half"],
      ["--seq", "8192"],
      ["--optimizer", "sgd"],
      ["--targets", "qkv"],
      ["--master-weights", "--no-master-weights"],
      ["--model", "/nonexistent/model"],
      ["--offload-checkpoints"],
      ["--checkpointing", "--loss-chunk", "-1"],
      ["extra"],
    ]
  ) {
    assertThrows(() => fitCommand(bad, null), UsageError, undefined, bad.join(" "));
  }
});

Deno.test("fit: deno task fit --json prints the report; a bad flag exits 1 with the usage", async () => {
  const run = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../scripts/fit.ts", import.meta.url).pathname, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { QLORA_BACKEND: "cpu" },
    }).output();
  const ok = await run([
    "--model",
    "7b",
    "--mode",
    "qlora",
    "--seq",
    "2048",
    "--batch",
    "4",
    "--gpu",
    "24GiB",
    "--json",
  ]);
  assertEquals(ok.code, 0, new TextDecoder().decode(ok.stderr));
  const json = JSON.parse(new TextDecoder().decode(ok.stdout));
  assertEquals([json.run.seq, json.run.batch, json.gpu.memory], [2048, 4, 24 * GiB]);
  assert(json.required === json.estimate.peak + json.context.bytes && typeof json.verdict === "string");
  const bad = await run(["--gpu", "nope"]);
  assertEquals(bad.code, 1);
  assertStringIncludes(new TextDecoder().decode(bad.stderr), "error: Cannot use GPU");
});

/** A stand-in for a CUDA device: only what `fit` reads (its name and the ledger's driver figures). */
function fakeCuda(total: number, free: number, live: number): Device {
  const zeros = { weights: 0 } as Record<string, number>;
  const snapshot = new LedgerSnapshot("cuda", zeros as never, zeros as never, {
    totalCurrent: live,
    totalPeak: live,
    budget: 0,
    liveAllocations: 1,
    deviceFree: free,
    deviceTotal: total,
  });
  return { backend: "cuda", name: "a fake GPU", memory: () => snapshot } as unknown as Device;
}

Deno.test("fit --inference: the estimate with CUDA's kernels, the cache per token, the longest context", () => {
  const r = fitInferenceCommand(
    [
      "--inference",
      "--model",
      "7b",
      "--mode",
      "qlora",
      "--context",
      "4096",
      "--prompt",
      "512",
      "--gpu",
      "rtx4090",
    ],
    null,
  );
  const e = estimateInference(LLAMA_CONFIGS["7b"], {
    mode: "qlora",
    context: 4096,
    prompt: 512,
    backend: "cuda",
  });
  assertEquals(r.estimate, e);
  assertEquals(r.required, e.peak + r.context.bytes);
  assertEquals(e.kvCachePerToken, 512 * 1024);
  assert(r.fits && r.largest.qlora.context === 4096 && r.largest.full.context > 0);
  // The longest context that fits a 6 GiB card is the last one that does.
  const small = fitInferenceCommand(
    ["--inference", "--mode", "qlora", "--context", "4096", "--gpu", "6GiB"],
    null,
  );
  const n = small.largest.qlora.context;
  const at = (context: number) =>
    fitInferenceCommand(
      ["--inference", "--mode", "qlora", "--context", String(context), "--gpu", "6GiB"],
      null,
    );
  assert(n > 0 && n < 4096 && at(n).fits && !at(n + 1).fits);
  assertStringIncludes(formatInferenceFit(small), `try --context ${n}`);
  assertStringIncludes(formatInferenceFit(r), "512.00 KiB per token of context");
  assertThrows(() => fitCommand(["--context", "4096"], null), UsageError, "--cuda-context");
  assertThrows(
    () => fitInferenceCommand(["--inference", "--context", "5000"], null),
    UsageError,
    "exceeds the model's maxSeq",
  );
  assertThrows(
    () => fitInferenceCommand(["--inference", "--mode", "full", "--merged"], null),
    UsageError,
    "--merged",
  );
});

Deno.test("fit: --budget SIZE --reserve SIZE asks what --gpu SIZE --cuda-context SIZE asks", () => {
  const run = ["--model", "7b", "--mode", "qlora", "--checkpointing", "--seq", "2048"];
  const budget = fitCommand([...run, "--budget", "6GiB", "--reserve", "0.31GiB"], null);
  const gpu = fitCommand([...run, "--gpu", "6GiB", "--cuda-context", "0.31GiB"], null);
  assertEquals(budget, gpu);
  assertEquals([budget.gpu.memory, budget.context.bytes], [6 * GiB, Math.round(0.31 * GiB)]);
  assertEquals(budget.required, budget.estimate.peak + Math.round(0.31 * GiB));
  // No reserve: the ledger may use the whole budget, as `train --budget` without --reserve; a measured
  // context is not taken (the budget is the ledger's).
  const whole = fitCommand([...run, "--budget", "6GiB"], fakeCuda(6 * GiB, 5 * GiB, 0));
  assertEquals(whole, fitCommand([...run, "--gpu", "6GiB", "--cuda-context", "0"], null));
  assertEquals(whole.required, budget.required - Math.round(0.31 * GiB));
  assertEquals(
    fitCommand([...run, "--budget", "6GiB", "--cuda-context", "1GiB"], null),
    fitCommand([...run, "--gpu", "6GiB", "--cuda-context", "1GiB"], null),
  );
  // The same for a generation.
  const inf = ["--inference", "--mode", "qlora", "--context", "2048"];
  assertEquals(
    fitInferenceCommand([...inf, "--budget", "6GiB", "--reserve", "320MiB"], null),
    fitInferenceCommand([...inf, "--gpu", "6GiB", "--cuda-context", "320MiB"], null),
  );
  for (
    const [bad, message] of [
      [["--gpu", "6GiB", "--budget", "6GiB"], "--gpu and --budget"],
      [["--budget", "6GiB", "--reserve", "1GiB", "--cuda-context", "1GiB"], "--reserve and --cuda-context"],
      [["--gpu", "6GiB", "--reserve", "1GiB"], "--reserve needs --budget"],
      [["--budget", "6GiB", "--reserve", "6GiB"], "must be smaller than --budget"],
      [["--budget", "rtx4090"], "--budget: Cannot parse"],
    ] as const
  ) {
    assertThrows(() => fitCommand([...run, ...bad], null), UsageError, message, bad.join(" "));
    assertThrows(() => fitInferenceCommand([...inf, ...bad], null), UsageError, message, bad.join(" "));
  }
});

Deno.test("fit: --offload-checkpoints moves the checkpoints to the host pool: a lower step peak, 7B QLoRA at 4,096 tokens in 6 GiB", () => {
  const run = ["--model", "7b", "--mode", "qlora", "--checkpointing", "--seq", "4096"];
  const card = ["--budget", "6GiB", "--reserve", "0.31GiB"];
  const kept = fitCommand([...run, ...card], null);
  const off = fitCommand([...run, ...card, "--offload-checkpoints"], null);
  assertEquals([kept.run.offloadCheckpoints, off.run.offloadCheckpoints], [false, true]);
  // The estimate is the estimator's for the run, the offload passed through.
  assertEquals(
    off.estimate,
    estimateMemory(C7, { ...off.run, backend: "cuda", offloadCheckpoints: true, optimizer: "paged" }),
  );
  assertEquals(kept.estimate.host, 0);
  assert(off.estimate.host > 0, `host ${off.estimate.host}`);
  const saved = kept.estimate.peak - off.estimate.peak;
  assert(saved > 0 && saved <= off.estimate.host, `saves ${saved} of ${off.estimate.host} offloaded`);
  assert(off.fits, off.verdict);
  const text = formatFit(off);
  assertStringIncludes(text, "gradient checkpointing offloaded to the host");
  const line = text.split("\n").find((l) => l.startsWith("host pool"));
  assert(line, text);
  assertStringIncludes(line, "offloaded checkpoints, outside the GPU");
  // After the categories, before the step peak.
  const lines = text.split("\n");
  assert(lines.indexOf(line) < lines.findIndex((l) => l.startsWith("step peak")), text);
  assert(!formatFit(kept).includes("host pool"), formatFit(kept));
  assertThrows(
    () => fitCommand(["--model", "7b", "--seq", "4096", "--offload-checkpoints"], null),
    UsageError,
    "--offload-checkpoints needs --checkpointing",
  );
});

Deno.test("fit: offload as a suggestion, and the largest shapes searched with it", () => {
  const o = { mode: "qlora" as const, seq: 4096, batch: 1, checkpointing: true, context: 0 };
  const kept = willItFit(C7, o, gpuProfile("80GiB"));
  const off = willItFit(C7, { ...o, offloadCheckpoints: true }, gpuProfile("80GiB"));
  assert(off.required < kept.required, `${off.required} < ${kept.required}`);
  // A card between the two: checkpointing alone does not fit, the offload does.
  const gpu = gpuProfile(String(Math.floor((off.required + kept.required) / 2)));
  const r = willItFit(C7, o, gpu);
  assert(!r.fits, r.verdict);
  const s = r.suggestions.find((s) => s.flag === "--offload-checkpoints");
  assert(s, r.suggestions.map((s) => s.flag).join("; "));
  assertEquals([s.required, s.fits], [off.required, true]);
  assertStringIncludes(r.verdict, "--offload-checkpoints (fits");
  // Without checkpointing: both flags together, never the offload alone.
  const none = willItFit(C7, { ...o, checkpointing: false }, gpu);
  const both = none.suggestions.find((s) => s.flag === "--checkpointing --offload-checkpoints");
  assert(both && both.required === off.required, none.suggestions.map((s) => s.flag).join("; "));
  assert(!none.suggestions.some((s) => s.flag === "--offload-checkpoints"));
  // With the offload on, it is not suggested again.
  assert(
    !willItFit(C7, { ...o, offloadCheckpoints: true, seq: 4096, batch: 8 }, gpu).suggestions.some((s) =>
      s.flag.includes("--offload-checkpoints")
    ),
  );
  // The largest batch per mode is the last that fits with the offload.
  const need = (batch: number) =>
    estimateMemory(C7, { ...o, batch, offloadCheckpoints: true, optimizer: "paged", backend: "cuda" }).peak;
  const { batch } = willItFit(C7, { ...o, offloadCheckpoints: true }, gpu).largest.qlora;
  assert(batch >= 1 && need(batch) <= gpu.memory && need(batch + 1) > gpu.memory, `batch ${batch}`);
  assert(batch >= r.largest.qlora.batch);
});

Deno.test("fit: --loss-chunk reaches the estimate (0: the whole LM head at once); 8b is LLaMA-3.1-8B", () => {
  const run = ["--model", "8b", "--mode", "qlora", "--checkpointing", "--seq", "4096", "--gpu", "24GiB"];
  const chunked = fitCommand(run, null), whole = fitCommand([...run, "--loss-chunk", "0"], null);
  assertEquals(chunked.model.name, "LLaMA-3.1-8B");
  assertEquals(chunked.model.parameters, countParameters(LLAMA_CONFIGS["8b"]).total);
  assert(Math.abs(chunked.model.parameters - 8.03e9) < 0.01e9, `${chunked.model.parameters}`);
  assertEquals([chunked.run.lossChunk, whole.run.lossChunk], [
    defaultLossChunk(LLAMA_CONFIGS["8b"], "bf16"),
    0,
  ]);
  const opts = { ...whole.run, optimizer: "paged" as const, backend: "cuda" as const };
  assertEquals(whole.estimate, estimateMemory(LLAMA_CONFIGS["8b"], opts));
  // 4,096 rows of 128,256 bf16 logits are 1 GiB: chunks of 130 rows keep far less.
  assert(whole.estimate.peak > chunked.estimate.peak, `${whole.estimate.peak} > ${chunked.estimate.peak}`);
  assertStringIncludes(formatFit(chunked), `loss in chunks of ${chunked.run.lossChunk} rows`);
  assert(!formatFit(whole).includes("loss in chunks"));
});
