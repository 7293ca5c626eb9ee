// The QLoRA layer against the 16-bit layer it replaces, measured in the same run: LLaMA-2-7B's up_proj
// (4096 -> 11008), rank-8 adapters, bf16 activations, the NF4 base with double quantization. Each group's
// baseline is the bf16 layer; each name carries the floor the project sets for the ratio (issue "4-bit
// faster than 16-bit"), and Deno's summary prints the measured one beside it.
//
//   1 and 8 tokens: decoding (one pass over W, memory-bound: NF4 reads 4.127 bits a weight against 16,
//     so the ideal ratio is 3.88x); both layers unmerged. A decode step reads each weight once from memory,
//     so these groups take 4 copies of each layer in turn: one NF4 up_proj (23 MB) alone would stay in a
//     32 MB L3 between iterations and be timed at cache speed, the bf16 one (90 MB) would not.
//   64 tokens: a short prompt's prefill against the merged LoRA layer (a plain bf16 linear), the fastest
//     16-bit inference there is.
//   512 tokens: a long prompt or a training step, compute-bound: forward, the input gradient alone, and
//     forward + backward.
//
// `deno task bench` runs this file twice: on the CPU's native paths, and with QLORA_CPU_ISA=avx2 as on a
// CPU without AVX-512 (there the bf16 baseline has no bf16 instructions either: its product runs in f32).
import { fillUniform, getDevice, LoRALinear, Tensor } from "../mod.ts";

const device = getDevice();
const [IN, OUT, RANK] = [4096, 11008, 8];
const COPIES = 4; // for the decode groups: more bytes than the L3 holds, NF4 copies included
const copies = Array.from({ length: COPIES }, (_, i) => {
  using weight = Tensor.randn([OUT, IN], {
    std: 0.02,
    dtype: "bf16",
    device,
    category: "workspace",
    seed: i,
  });
  const pair = {
    bf16: LoRALinear.fromWeight(weight, { rank: RANK, alpha: 16, base: "bf16" }),
    nf4: LoRALinear.fromWeight(weight, { rank: RANK, alpha: 16, base: "nf4", computeDtype: "bf16" }),
  };
  for (const l of Object.values(pair)) fillUniform(l.loraB, -0.01, 0.01, 1); // a trained-looking bypass
  return pair;
});
const layers = copies[0];
const merged = (() => {
  using weight = Tensor.randn([OUT, IN], { std: 0.02, dtype: "bf16", device, category: "workspace" });
  const l = LoRALinear.fromWeight(weight, { rank: RANK, alpha: 16, base: "bf16" });
  fillUniform(l.loraB, -0.01, 0.01, 1);
  l.merge();
  return l;
})();
const sync = () => device.synchronize();
const plural = (t: number) => `${t} token${t > 1 ? "s" : ""}`;

for (const [tokens, floor] of [[1, 3.0], [8, 1.5], [64, 1.0], [512, 1.0]] as const) {
  const x = Tensor.randn([tokens, IN], { dtype: "bf16", device, seed: tokens });
  const decoding = tokens <= 8;
  // The layer of each call: the next copy while decoding (W from memory), else the first (W reused).
  const turn = { bf16: 0, nf4: 0 };
  const next = (base: "bf16" | "nf4") => decoding ? copies[turn[base]++ % COPIES][base] : layers[base];
  const group = `up_proj forward, ${plural(tokens)}`;
  Deno.bench({
    name: tokens === 64
      ? `merged LoRA layer (bf16 linear), ${plural(tokens)}`
      : `LoRA layer, bf16 base, ${plural(tokens)}`,
    group,
    baseline: true,
    fn: () => {
      (tokens === 64 ? merged : next("bf16")).infer(x).dispose();
      sync();
    },
  });
  Deno.bench({
    name: `QLoRA layer, NF4 + DQ base (floor ${floor.toFixed(1)}x)`,
    group,
    fn: () => {
      next("nf4").infer(x).dispose();
      sync();
    },
  });
}

const x512 = Tensor.randn([512, IN], { dtype: "bf16", device, seed: 2 });
const dy = Tensor.randn([512, OUT], { dtype: "bf16", device, seed: 3 });
for (const base of ["bf16", "nf4"] as const) {
  const name = base === "bf16"
    ? "LoRA layer, bf16 base, 512 tokens"
    : "QLoRA layer, NF4 + DQ base (floor 1.0x)";
  Deno.bench({
    name,
    group: "up_proj backward (the input gradient and the adapters'), 512 tokens",
    baseline: base === "bf16",
    fn: (b) => {
      layers[base].forward(x512).dispose(); // keeps x for the backward, outside the timed part
      sync();
      b.start();
      layers[base].backward(dy).dispose();
      sync();
      b.end();
    },
  });
  Deno.bench({
    name,
    group: "up_proj forward + backward (training), 512 tokens",
    baseline: base === "bf16",
    fn: () => {
      layers[base].forward(x512).dispose();
      layers[base].backward(dy).dispose();
      sync();
    },
  });
}
