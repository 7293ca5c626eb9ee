/**
 * `./deno task bench:train`: one training step (zeroGrad, forward with the fused logits gradient, backward,
 * AdamW with clipping) of our LLaMA against the same model in PyTorch CPU (bench/torch_llama.py, Debian's
 * python3-torch), per mode, with the same shapes, dtype and thread count, measured in the same run. Each
 * (config, mode) runs ours and then PyTorch's back to back, so that other load on the machine hits both
 * alike. Prints the ratios (torch time / ours: >= 1.0 means we are at least as fast) and, for the 7B
 * block, our ledger per mode and the QLoRA/LoRA weights-memory ratio.
 *
 * Floors: our step at most 1.0x PyTorch's time; QLoRA weights memory at most 1/3 of LoRA's.
 *
 * It prints which BLAS, oneDNN and how many threads torch uses (bench/torch_info.py, read by
 * bench/_torch_blas.ts), and no ratio against torch on the reference BLAS.
 *
 * Options: `--only tiny|7b`, `--modes full,lora,qlora`, `--seq N` (7B block, default 256).
 *
 * @module
 */

import {
  AdamW,
  type Category,
  formatBytes,
  getDevice,
  LLAMA_CONFIGS,
  type LlamaConfig,
  LlamaModel,
  PagedAdamW,
  Tensor,
  type TrainMode,
} from "../mod.ts";
import { helpText, parseCommandLine } from "../scripts/_cli.ts";
import { type TorchBlas, torchBlas } from "./_torch_blas.ts";

const USAGE = helpText("./deno task bench:train [--only tiny|7b] [--modes full,lora,qlora] [--seq N]", [
  ["--only tiny|7b", "one benchmark: the tiny model (f32, batch 8, seq 128) or one 7B block; default both"],
  ["--modes full,lora,qlora", "the modes measured; default all three"],
  ["--seq N", "tokens per sequence of the 7B block (bf16, batch 1); default 256"],
], [
  "A training step of ours against the same model in PyTorch CPU (python3-torch), same shapes and threads,",
  "in the same run; the 7B block's ledger per mode. Floors: our step at most 1.0x PyTorch's time; QLoRA",
  "weights memory at most 1/3 of LoRA's.",
]);
// --help, or the flags: before the device loads.
const { flags } = parseCommandLine({ only: "string", modes: "string", seq: "string" }, USAGE);

const device = getDevice();
const threads = navigator.hardwareConcurrency;

function arg(name: string): string | undefined {
  return flags[name] as string | undefined;
}

interface Bench {
  name: string;
  label: string;
  config: LlamaConfig;
  dtype: "f32" | "bf16";
  batch: number;
  seq: number;
  warmup: number;
  steps: number;
}

const seq7b = Number(arg("seq") ?? 256);
const benches = ([
  {
    name: "tiny",
    label: "tiny (f32, batch 8, seq 128)",
    config: LLAMA_CONFIGS.tiny,
    dtype: "f32",
    batch: 8,
    seq: 128,
    warmup: 3,
    steps: 15,
  },
  {
    name: "7b",
    label: `7B block (1 layer, vocab 32000, bf16, batch 1, seq ${seq7b})`,
    config: { ...LLAMA_CONFIGS["7b"], layers: 1, vocabSize: 32000 },
    dtype: "bf16",
    batch: 1,
    seq: seq7b,
    warmup: 1,
    steps: 5,
  },
] as Bench[]).filter((b) => !arg("only") || b.name === arg("only"));
const modes = (arg("modes") ?? "full,lora,qlora").split(",") as TrainMode[];
const RANK = 8, ALPHA = 16;

interface Timing {
  ms: number;
  best_ms: number;
  forward_ms: number;
  backward_ms: number;
  optimizer_ms: number;
  loss: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** A deterministic batch of random token ids. */
function randomTokens(n: number, vocab: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return new Int32Array(n).map(() => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

function ours(b: Bench, mode: TrainMode): { timing: Timing; peak: Record<Category, number>; total: number } {
  using model = new LlamaModel(b.config, { mode, dtype: b.dtype, rank: RANK, alpha: ALPHA });
  const Opt = mode === "qlora" ? PagedAdamW : AdamW;
  using opt = new Opt(model.trainables(), {
    lr: 1e-4,
    weightDecay: mode === "full" ? 0.01 : 0,
    maxGradNorm: 1,
  });
  const n = b.warmup + b.steps;
  const batches = Array.from({ length: n }, (_, i) => ({
    tokens: Tensor.from(randomTokens(b.batch * b.seq, b.config.vocabSize, 2 * i + 1), {
      shape: [b.batch, b.seq],
      device,
    }),
    targets: Tensor.from(randomTokens(b.batch * b.seq, b.config.vocabSize, 2 * i + 2), {
      shape: [b.batch, b.seq],
      device,
    }),
  }));
  device.synchronize();
  device.resetPeak();
  const fw: number[] = [], bw: number[] = [], op: number[] = [], tot: number[] = [];
  let loss = NaN;
  try {
    batches.forEach(({ tokens, targets }, i) => {
      const t0 = performance.now();
      model.zeroGrad();
      loss = model.forward(tokens, targets);
      device.synchronize();
      const t1 = performance.now();
      model.backward();
      device.synchronize();
      const t2 = performance.now();
      opt.step();
      device.synchronize();
      const t3 = performance.now();
      if (i >= b.warmup) fw.push(t1 - t0), bw.push(t2 - t1), op.push(t3 - t2), tot.push(t3 - t0);
    });
  } finally {
    for (const { tokens, targets } of batches) tokens.dispose(), targets.dispose();
  }
  const snap = device.memory();
  return {
    timing: {
      ms: median(tot),
      best_ms: Math.min(...tot),
      forward_ms: median(fw),
      backward_ms: median(bw),
      optimizer_ms: median(op),
      loss,
    },
    peak: { ...snap.peak },
    total: snap.totalPeak,
  };
}

interface TorchResult extends Timing {
  note: string;
}

async function torch(
  b: Bench,
  mode: TrainMode,
): Promise<{ version: string; blas: TorchBlas; result: TorchResult } | string> {
  try {
    // Debian's python3 has python3-torch; a python3 earlier on PATH (pyenv, venv) may not.
    const python = await Deno.stat("/usr/bin/python3").then(() => "/usr/bin/python3", () => "python3");
    const child = new Deno.Command(python, {
      args: [new URL("./torch_llama.py", import.meta.url).pathname],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    const run = { ...b, mode, rank: RANK, alpha: ALPHA };
    await writer.write(new TextEncoder().encode(JSON.stringify({ threads, runs: [run] })));
    await writer.close();
    const out = await child.output();
    if (out.code !== 0) {
      return `python3 torch failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()}`;
    }
    const res = JSON.parse(new TextDecoder().decode(out.stdout));
    return { version: res.torch, blas: torchBlas(res.info), result: res.results[0] };
  } catch (e) {
    return `python3 not available (${(e as Error).message})`;
  }
}

const load = () => Deno.loadavg().map((x) => x.toFixed(1)).join(" ");
console.log(`Training step on ${device} (${threads} threads), load average ${load()}\n`);

interface Row {
  bench: Bench;
  mode: TrainMode;
  ours: Timing;
  torch: TorchResult | null;
  peak: Record<Category, number>;
  total: number;
}
const rows: Row[] = [];
let version = "";
let blas: TorchBlas | null = null;
const skipped: string[] = [];
for (const b of benches) {
  for (const mode of modes) {
    const o = ours(b, mode);
    const t = await torch(b, mode);
    if (typeof t === "string") skipped.push(`${b.name} ${mode}: ${t}`);
    else {
      version = t.version;
      blas = t.blas;
    }
    const tr = typeof t === "string" ? null : t.result;
    console.error(
      `${b.name} ${mode}: ours ${o.timing.ms.toFixed(1)} ms, torch ${tr ? tr.ms.toFixed(1) : "-"} ms`,
    );
    rows.push({ bench: b, mode, ours: o.timing, torch: tr, peak: o.peak, total: o.total });
  }
}
for (const s of skipped) console.log(`PyTorch skipped: ${s} (apt-get install python3-torch)`);
if (blas) console.log(`PyTorch: ${blas.summary}${blas.refusal ? `; ${blas.refusal}` : ""}`);
const refusal = blas?.refusal ?? null;

const f1 = (x: number) => x.toFixed(1);
console.log(`\nMedian step times; load average at the end ${load()}\n`);
console.log(
  `| config | mode | ours ms | torch${
    version ? " " + version : ""
  } ms | ratio (torch / ours) | best steps: ours / torch ms, ratio | ours fwd / bwd / opt ms | torch fwd / bwd / opt ms |`,
);
console.log("|---|---|---|---|---|---|---|---|");
for (const r of rows) {
  const ratio = r.torch ? r.torch.ms / r.ours.ms : NaN;
  const mark = Number.isFinite(ratio) ? (ratio >= 1 ? " (floor 1.0: ok)" : " (floor 1.0: BELOW)") : "";
  const phases = (t: Timing) => `${f1(t.forward_ms)} / ${f1(t.backward_ms)} / ${f1(t.optimizer_ms)}`;
  const best = r.torch
    ? `${f1(r.ours.best_ms)} / ${f1(r.torch.best_ms)}, ${
      refusal ? "no ratio" : `${(r.torch.best_ms / r.ours.best_ms).toFixed(2)}x`
    }`
    : "-";
  const cell = refusal ? "no ratio" : Number.isFinite(ratio) ? ratio.toFixed(2) + "x" + mark : "-";
  console.log(
    `| ${r.bench.label} | ${r.mode} | ${f1(r.ours.ms)} | ${
      r.torch ? f1(r.torch.ms) : "-"
    } | ${cell} | ${best} | ${phases(r.ours)} | ${r.torch ? phases(r.torch) : "-"} |`,
  );
}
if (refusal) {
  console.log(`\n${refusal}: its times are shown, no ratio (install libopenblas0 for a real one).`);
}
const notes = [...new Set(rows.map((r) => r.torch?.note).filter((n) => n))];
for (const n of notes) {
  console.log(`\nPyTorch qlora: ${n} (no NF4 kernel on the CPU; bitsandbytes not installed).`);
}
console.log(
  "Ratios use medians; the best-step ratio is less sensitive to other load on the machine. " +
    "fwd includes zeroGrad and, for ours, the fused logits gradient; opt includes clipping (max norm 1). " +
    "Ours: f32 Adam states and f32 master copies of bf16 parameters; torch: Adam states in the parameter dtype.",
);

// The ledger of the 7B block per mode (peaks during the timed steps; weights are constant).
const block = rows.filter((r) => r.bench.name === "7b");
if (block.length) {
  const cats: [Category, string][] = [
    ["weights", "weights"],
    ["quantized_weights", "quantized weights"],
    ["quant_constants", "quant constants"],
    ["adapters", "adapters"],
    ["gradients", "gradients"],
    ["optimizer_states", "optimizer states"],
    ["activations", "activations"],
    ["workspace", "workspace"],
  ];
  console.log(`\nOur ledger, ${block[0].bench.label}, peak bytes per category during the steps\n`);
  console.log(`| mode | ${cats.map(([, l]) => l).join(" | ")} | peak total |`);
  console.log(`|---|${cats.map(() => "---|").join("")}---|`);
  for (const r of block) {
    console.log(
      `| ${r.mode} | ${cats.map(([c]) => formatBytes(r.peak[c])).join(" | ")} | ${formatBytes(r.total)} |`,
    );
  }
  const lora = block.find((r) => r.mode === "lora"), qlora = block.find((r) => r.mode === "qlora");
  if (lora && qlora) {
    const w = (p: Record<Category, number>) => p.weights + p.quantized_weights + p.quant_constants;
    // In qlora mode "weights" holds only what stays 16-bit (embeddings, LM head, norms): the same bytes
    // as in lora mode, so the block's linear weights in lora mode are the difference.
    const rest = qlora.peak.weights;
    const qBlock = qlora.peak.quantized_weights + qlora.peak.quant_constants;
    const lBlock = w(lora.peak) - rest;
    const layers = LLAMA_CONFIGS["7b"].layers;
    const verdict = (x: number) => `${x.toFixed(3)} (floor 1/3: ${x <= 1 / 3 ? "ok" : "BELOW"})`;
    console.log("\n| QLoRA / LoRA weights memory | QLoRA | LoRA | ratio |");
    console.log("|---|---|---|---|");
    console.log(
      `| the block's 7 linear weights | ${formatBytes(qBlock)} | ${formatBytes(lBlock)} | ${
        verdict(qBlock / lBlock)
      } |`,
    );
    console.log(
      `| whole model measured (1 block + bf16 embeddings, LM head, norms) | ${formatBytes(w(qlora.peak))} | ${
        formatBytes(w(lora.peak))
      } | ${verdict(w(qlora.peak) / w(lora.peak))} |`,
    );
    console.log(
      `| scaled to ${layers} blocks (from the measured block) | ${formatBytes(rest + layers * qBlock)} | ${
        formatBytes(rest + layers * lBlock)
      } | ${verdict((rest + layers * qBlock) / (rest + layers * lBlock))} |`,
    );
  }
}
