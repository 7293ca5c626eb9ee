/**
 * `./deno task bench:torch`: GEMM throughput of our library against PyTorch (Debian's python3-torch, CPU)
 * measured in the same run with the same thread count, the NF4 linear against our bf16 linear, and
 * merged against unmerged LoRA inference. Prints ratios (the figures that travel between machines).
 *
 * Floors (CPU backend): bf16 GEMM >= 0.9x PyTorch; NF4 linear >= 0.7x our bf16 linear.
 *
 * It prints which BLAS, oneDNN and how many threads torch uses (bench/torch_info.py, read by
 * bench/_torch_blas.ts), and no ratio against torch on the reference BLAS.
 *
 * @module
 */

import { getDevice, LoRALinear, matmul, matmul4bit, quantize, Tensor } from "../mod.ts";
import { helpText, parseCommandLine } from "../scripts/_cli.ts";
import { type TorchBlas, torchBlas } from "./_torch_blas.ts";

const USAGE = helpText("./deno task bench:torch", [], [
  "GEMM against PyTorch CPU (python3-torch) in the same run, with the same thread count; the NF4 linear",
  "against our bf16 linear; merged against unmerged LoRA inference. Floors: bf16 GEMM >= 0.9x PyTorch,",
  "NF4 linear >= 0.7x our bf16 linear.",
]);
parseCommandLine({}, USAGE); // --help, or no flags: before the device loads

const device = getDevice();
const threads = navigator.hardwareConcurrency;
const REPEATS = 5;

function median(f: () => void, repeats = REPEATS): number {
  f();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    f();
    device.synchronize();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] / 1000;
}

interface Shape {
  m: number;
  n: number;
  k: number;
  dtype: "f32" | "bf16";
  label: string;
}

const shapes: Shape[] = [];
for (const dtype of ["f32", "bf16"] as const) {
  shapes.push({ m: 4096, n: 4096, k: 4096, dtype, label: "4096^3" });
  shapes.push({ m: 512, n: 11008, k: 4096, dtype, label: "512 tokens, up_proj (4096 -> 11008)" });
  shapes.push({ m: 512, n: 4096, k: 11008, dtype, label: "512 tokens, down_proj (11008 -> 4096)" });
}

function ours(s: Shape): number {
  using x = Tensor.randn([s.m, s.k], { dtype: s.dtype, device });
  using w = Tensor.randn([s.n, s.k], { dtype: s.dtype, std: 0.02, device });
  using out = Tensor.empty([s.m, s.n], { dtype: s.dtype, device });
  const t = median(() => matmul(x, w, { transB: true, out }));
  return (2 * s.m * s.n * s.k) / t / 1e9;
}

async function torch(
  list: Shape[],
): Promise<{ version: string; blas: TorchBlas; gflops: number[] } | string> {
  try {
    // Debian's python3 has python3-torch; a python3 earlier on PATH (pyenv, venv) may not.
    const python = await Deno.stat("/usr/bin/python3").then(() => "/usr/bin/python3", () => "python3");
    const cmd = new Deno.Command(python, {
      args: [new URL("./torch_matmul.py", import.meta.url).pathname],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    });
    const child = cmd.spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(JSON.stringify({ threads, repeats: REPEATS, shapes: list })));
    await writer.close();
    const out = await child.output();
    if (out.code !== 0) {
      return `python3 torch failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()}`;
    }
    const res = JSON.parse(new TextDecoder().decode(out.stdout));
    const gflops = res.results.map((r: { gflops: number }) => r.gflops);
    return { version: res.torch, blas: torchBlas(res.info), gflops };
  } catch (e) {
    return `python3 not available (${(e as Error).message})`;
  }
}

console.log(`GEMM on ${device} (${threads} threads), median of ${REPEATS}\n`);
const ourGflops = shapes.map(ours);
const ref = await torch(shapes);
if (typeof ref === "string") console.log(`PyTorch column skipped: ${ref} (apt-get install python3-torch)\n`);
else console.log(`PyTorch: ${ref.blas.summary}${ref.blas.refusal ? `; ${ref.blas.refusal}` : ""}\n`);
const refusal = typeof ref === "string" ? null : ref.blas.refusal;
console.log(
  `| shape | dtype | qlora-lab GFLOP/s | PyTorch${
    typeof ref === "string" ? "" : " " + ref.version
  } GFLOP/s | ratio |`,
);
console.log("|---|---|---|---|---|");
shapes.forEach((s, i) => {
  const t = typeof ref === "string" ? NaN : ref.gflops[i];
  const ratio = ourGflops[i] / t;
  const mark = s.dtype === "bf16" && Number.isFinite(ratio)
    ? (ratio >= 0.9 ? " (floor 0.9: ok)" : " (floor 0.9: BELOW)")
    : "";
  const cell = refusal ? "no ratio" : Number.isFinite(ratio) ? ratio.toFixed(2) + "x" + mark : "-";
  console.log(
    `| ${s.label} | ${s.dtype} | ${ourGflops[i].toFixed(1)} | ${
      Number.isFinite(t) ? t.toFixed(1) : "-"
    } | ${cell} |`,
  );
});
if (refusal) {
  console.log(`\n${refusal}: its GFLOP/s are shown, no ratio (install libopenblas0 for a real one).`);
}

// The 4-bit linear against our bf16 linear, same shape: the table's "slightly slower".
console.log(
  "\n| linear (bf16 activations) | tokens | bf16 base | NF4 base (double quant) | NF4 / bf16 throughput |",
);
console.log("|---|---|---|---|---|");
for (
  const [m, n, k, label] of [[512, 11008, 4096, "up_proj 4096 -> 11008"], [
    1,
    11008,
    4096,
    "up_proj, batch 1",
  ]] as const
) {
  using w = Tensor.randn([n, k], { std: 0.02, dtype: "bf16", device, category: "weights" });
  using q = quantize(w);
  using x = Tensor.randn([m, k], { dtype: "bf16", device });
  using out = Tensor.empty([m, n], { dtype: "bf16", device });
  const tb = median(() => matmul(x, w, { transB: true, out }));
  const tq = median(() => matmul4bit(x, q, { transW: true, out }));
  const ratio = tb / tq;
  const floor = m > 1 ? (ratio >= 0.7 ? " (floor 0.7: ok)" : " (floor 0.7: BELOW)") : "";
  console.log(
    `| ${label} | ${m} | ${(tb * 1e3).toFixed(2)} ms | ${(tq * 1e3).toFixed(2)} ms | ${
      ratio.toFixed(2)
    }x${floor} |`,
  );
}

// LoRA inference: merged (one GEMM) against unmerged (base GEMM + the rank-8 bypass).
console.log("\n| LoRA inference, 4096 -> 4096, rank 8 | tokens | unmerged | merged | merged speed-up |");
console.log("|---|---|---|---|---|");
for (const base of ["bf16", "nf4"] as const) {
  for (const m of [1, 256]) {
    using layer = new LoRALinear(4096, 4096, { rank: 8, base, device });
    layer.training = false;
    using x = Tensor.randn([m, 4096], { dtype: "bf16", device });
    const tu = median(() => layer.forward(x).dispose());
    layer.merge();
    const tm = median(() => layer.forward(x).dispose());
    layer.unmerge();
    console.log(
      `| ${base} base | ${m} | ${(tu * 1e3).toFixed(2)} ms | ${(tm * 1e3).toFixed(2)} ms | ${
        (tu / tm).toFixed(2)
      }x |`,
    );
  }
}
