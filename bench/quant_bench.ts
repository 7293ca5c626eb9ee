// 4-bit quantize and dequantize at the memory limit (issue 23 item 1), each against a plain device copy
// of the same bytes measured in the same run: `./deno bench -A bench/quant_bench.ts` (and again with
// QLORA_CPU_ISA=avx2 for the AVX2 kernels). 64M values of every type (NF4, FP4, Int4), plain and double-
// quantized (DQ), f32 and bf16:
//   dequantize: against a copy of the output bytes, floor 0.9x;
//   quantize:   against a copy of the input bytes, floor 0.5x, into buffers allocated and touched before
//               (with DQ: the constants double-quantized too); into new tensors apart (page faults and
//               the allocator's zeroing included), no floor;
//   a 1M-value tile decoded into cache-resident memory (the 4-bit GEMM's hot path), against a copy of as
//   many bytes in cache; printed as ns per value and values per second.
// Each group's baseline is its copy: Deno's summary prints "x faster/slower" against it; the lines
// printed at the end give each bench's throughput ratio (copy's median time / the bench's median time)
// beside its floor. Absolute times depend on the machine and its load; the ratios are the figures to read.
import { getDevice, quantize, type QuantizedTensor, Tensor } from "../mod.ts";
import * as ffi from "../lib/native/mod.ts";

const N = 64 << 20;
const TILE = 1 << 20;
const BLOCKSIZE = 64, NESTED = 256;
const TYPES = ["nf4", "fp4", "int4"] as const;
const DTYPES = ["f32", "bf16"] as const;
const device = getDevice();
const sync = () => device.synchronize();

const x = Tensor.randn([N], { std: 0.02, device, category: "weights" });
const inputs = { f32: x, bf16: x.cast("bf16") };
// Outputs and copy sources of each dtype, touched once here so that no bench pays their page faults.
const big = Object.fromEntries(
  DTYPES.map((
    d,
  ) => [d, { out: Tensor.zeros([N], { dtype: d, device }), src: Tensor.zeros([N], { dtype: d, device }) }]),
) as Record<
  (typeof DTYPES)[number],
  { out: Tensor; src: Tensor }
>;
const weights = Object.fromEntries(
  TYPES.map((
    t,
  ) => [t, { plain: quantize(x, { quantType: t, doubleQuant: false }), dq: quantize(x, { quantType: t }) }]),
) as Record<(typeof TYPES)[number], { plain: QuantizedTensor; dq: QuantizedTensor }>;
const blocks = N / BLOCKSIZE;
const packed = Tensor.zeros([N / 2], { dtype: "u8", device });
const absmax = Tensor.zeros([blocks], { device });
const codes = Tensor.zeros([blocks], { dtype: "u8", device });
const nested = Tensor.zeros([blocks / NESTED], { device });

// Each bench's own times (one synchronous call each), for the ratios printed at the end.
const times = new Map<string, { group: string; floor: number | null; baseline: boolean; ms: number[] }>();
function bench(group: string, name: string, floor: number | null, fn: () => void, baseline = false, n = 12) {
  const entry = { group, floor, baseline, ms: [] as number[] };
  times.set(name, entry);
  Deno.bench({
    name,
    group,
    baseline,
    n,
    warmup: 2,
    fn: () => {
      const t0 = performance.now();
      fn();
      sync();
      entry.ms.push(performance.now() - t0);
    },
  });
}
const mib = (bytes: number) => `${bytes / (1 << 20)} MiB`;

for (const dtype of DTYPES) {
  const { out, src } = big[dtype];
  const group = `dequantize 64M values -> ${dtype}`;
  bench(group, `copy ${mib(out.byteLength)} (${dtype} output bytes)`, null, () => out.copyFrom(src), true);
  for (const t of TYPES) {
    for (const dq of [false, true]) {
      const q = weights[t][dq ? "dq" : "plain"]; // held by the closure: a collected tensor frees its memory
      bench(
        group,
        `${t.toUpperCase()}${dq ? " + DQ" : ""} dequantize -> ${dtype} (floor 0.9x copy)`,
        0.9,
        () => ffi.dequantize4bit(device, q.weight4(), N, out, dtype),
      );
    }
  }
}

for (const dtype of DTYPES) {
  const input = inputs[dtype], { out } = big[dtype];
  const group = `quantize 64M ${dtype} values`;
  bench(group, `copy ${mib(input.byteLength)} (${dtype} input bytes)`, null, () => out.copyFrom(input), true);
  for (const t of TYPES) {
    for (const dq of [false, true]) {
      bench(group, `${t.toUpperCase()}${dq ? " + DQ" : ""} quantize ${dtype} (floor 0.5x copy)`, 0.5, () => {
        ffi.quantize4bit(device, input, dtype, N, t, BLOCKSIZE, packed, absmax);
        if (dq) ffi.doubleQuantize(device, absmax, blocks, NESTED, codes, nested);
      });
    }
  }
  for (const dq of [false, true]) {
    bench(
      group,
      `NF4${dq ? " + DQ" : ""} quantize ${dtype} into new tensors (page faults included, no floor)`,
      null,
      () => {
        using _q = quantize(input, { quantType: "nf4", doubleQuant: dq });
      },
    );
  }
}

// The GEMM's hot path: a tile of W decoded into memory that stays in cache, over and over.
const tileTimes: { name: string; ms: number[] }[] = [];
for (const dtype of ["bf16", "f32"] as const) {
  const out = Tensor.zeros([TILE], { dtype, device }), src = Tensor.zeros([TILE], { dtype, device });
  const group = `dequantize a 1M-value tile -> ${dtype} (${mib(out.byteLength)}, cache-resident)`;
  bench(group, `copy ${mib(out.byteLength)} in cache`, null, () => out.copyFrom(src), true, 400);
  for (const dq of [false, true]) {
    const name = `NF4${dq ? " + DQ" : ""} tile -> ${dtype} (see ns/value below)`;
    const q = weights.nf4[dq ? "dq" : "plain"];
    bench(group, name, null, () => ffi.dequantize4bit(device, q.weight4(), TILE, out, dtype), false, 400);
    tileTimes.push({ name, ms: times.get(name)!.ms });
  }
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? NaN;
globalThis.addEventListener("unload", () => {
  if (times.values().next().value?.ms.length === 0) return; // not run (deno check, filters)
  const lines = [
    `\n${device.backend}, QLORA_CPU_ISA=${
      Deno.env.get("QLORA_CPU_ISA") ?? "native"
    }: throughput against each group's copy (medians)`,
  ];
  const baselines = new Map<string, number>();
  for (const e of times.values()) if (e.baseline) baselines.set(e.group, median(e.ms));
  for (const [name, e] of times) {
    if (e.baseline || e.ms.length === 0) continue;
    const ratio = baselines.get(e.group)! / median(e.ms);
    const verdict = e.floor === null ? "" : ratio >= e.floor ? "  ok" : "  BELOW FLOOR";
    lines.push(`  ${ratio.toFixed(2)}x  ${name}${verdict}`);
  }
  for (const t of tileTimes) {
    const ns = median(t.ms) * 1e6 / TILE;
    lines.push(
      `  ${ns.toFixed(3)} ns/value (${(1 / ns).toFixed(2)} G values/s)  ${
        t.name.replace(" (see ns/value below)", "")
      }`,
    );
  }
  console.log(lines.join("\n"));
});
