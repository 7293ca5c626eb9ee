/**
 * The main job for now: quantize LLaMA-2-7B-shaped weights (synthetic, N(0, 0.02), bf16) to NF4 with
 * and without double quantization, and show what the ledger measured: bytes per category, bits per
 * parameter, round-trip error, and what that means for a whole 7B model.
 *
 * `./deno task demo [--backend cpu|cuda|auto]`
 *
 * @module
 */

import { formatBytes, getDevice, quantizationError, quantize, type QuantizeOptions, Tensor } from "../mod.ts";
import { helpText, parseArgs, runMain } from "./_cli.ts";

// LLaMA-2-7B: 32 blocks of q, k, v, o (4096 x 4096) and gate, up (11008 x 4096), down (4096 x 11008);
// embeddings and LM head (32000 x 4096 each) stay 16-bit in QLoRA.
const LAYERS = 32;
const BLOCK_SHAPES: [string, number, number][] = [
  ["q_proj", 4096, 4096],
  ["k_proj", 4096, 4096],
  ["v_proj", 4096, 4096],
  ["o_proj", 4096, 4096],
  ["gate_proj", 11008, 4096],
  ["up_proj", 11008, 4096],
  ["down_proj", 4096, 11008],
];
const EMBED_PARAMS = 2 * 32000 * 4096;
const USAGE = helpText("./deno task demo [--backend cpu|cuda|auto]", [
  ["--backend cpu|cuda|auto", "the device (auto: CUDA where it runs, else the CPU); default auto"],
], ["Quantizes one LLaMA-2-7B-shaped block to NF4 and FP4 and scales the ledger's figures to the whole 7B."]);

await runMain(() => {
  const { flags } = parseArgs(Deno.args, { backend: "string" });
  const device = getDevice((flags.backend as "cpu" | "cuda" | "auto" | undefined) ?? "auto");
  console.log(`qlora-lab quantization demo on ${device}\n`);
  console.log("One LLaMA-2-7B decoder block, synthetic bf16 weights ~ N(0, 0.02):\n");
  const variants: [string, QuantizeOptions][] = [
    ["NF4, blocksize 64", { quantType: "nf4", doubleQuant: false }],
    ["NF4 + double quant", { quantType: "nf4", doubleQuant: true }],
    ["FP4 + double quant", { quantType: "fp4", doubleQuant: true }],
  ];
  const rows: string[][] = [[
    "weight",
    "shape",
    "bf16",
    ...variants.map(([v]) => v),
    "rel. RMS error (NF4+DQ)",
  ]];
  const blockBytes = { bf16: 0, variants: variants.map(() => 0), params: 0 };
  let seed = 1;
  const t0 = performance.now();
  for (const [name, rows_, cols] of BLOCK_SHAPES) {
    using w = Tensor.randn([rows_, cols], {
      std: 0.02,
      dtype: "bf16",
      category: "weights",
      seed: seed++,
      device,
    });
    const row = [name, `${rows_}x${cols}`, formatBytes(w.byteLength)];
    let err = 0;
    for (const [i, [, opts]] of variants.entries()) {
      using q = quantize(w, opts);
      blockBytes.variants[i] += q.bytes.total;
      row.push(`${formatBytes(q.bytes.total)} (${q.bitsPerParameter.toFixed(3)} b)`);
      if (opts.doubleQuant && opts.quantType === "nf4") {
        using r = q.dequantize({ dtype: "f32" });
        err = quantizationError(w.toFloat32(), r.toFloat32()).relativeRms;
      }
    }
    row.push(`${(err * 100).toFixed(2)}%`);
    rows.push(row);
    blockBytes.bf16 += w.byteLength;
    blockBytes.params += w.numel;
  }
  const seconds = (performance.now() - t0) / 1000;
  printTable(rows);
  const snap = device.memory();
  console.log(
    `\nLedger peaks during the run: ${
      (["weights", "quantized_weights", "quant_constants", "activations", "workspace"] as const)
        .map((c) => `${c} ${formatBytes(snap.peak[c])}`).join(", ")
    }`,
  );
  console.log(`(measured in ${seconds.toFixed(1)} s; live allocations now: ${snap.liveAllocations})\n`);

  const linear = LAYERS * blockBytes.params;
  const nf4dq = LAYERS * blockBytes.variants[1] + EMBED_PARAMS * 2;
  console.log("Scaled to the whole LLaMA-2-7B (32 blocks, embeddings and LM head kept in bf16):");
  console.log(`  bf16 weights:            ${formatBytes(LAYERS * blockBytes.bf16 + EMBED_PARAMS * 2)}`);
  console.log(
    `  NF4 base (no DQ):        ${formatBytes(LAYERS * blockBytes.variants[0] + EMBED_PARAMS * 2)}`,
  );
  console.log(`  NF4 base + double quant: ${formatBytes(nf4dq)}`);
  const saved = LAYERS * (blockBytes.variants[0] - blockBytes.variants[1]);
  console.log(
    `  double quantization saves ${formatBytes(saved)} here, ${
      ((saved * 8) / linear).toFixed(3)
    } bits per parameter` +
      ` (${((saved / linear) * 65e9 / 2 ** 30).toFixed(2)} GiB per 65B parameters)`,
  );
}, USAGE);

function printTable(rows: string[][]): void {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((v, c) => v.padEnd(widths[c])).join(" | ")} |`;
  console.log(line(rows[0]));
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const r of rows.slice(1)) console.log(line(r));
}
