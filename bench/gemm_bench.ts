// Linear layers at a LLaMA-7B MLP shape (512 tokens, 4096 -> 11008), bf16 activations: the NF4 base
// against the bf16 base (baseline), and LoRA inference merged (baseline) against unmerged. Deno prints
// the ratios. PyTorch's figures for the same shapes: `./deno task bench:torch`.
import { getDevice, LoRALinear, matmul, matmul4bit, quantize, Tensor } from "../mod.ts";

const device = getDevice();
const [M, N, K] = [512, 11008, 4096];
const w = Tensor.randn([N, K], { std: 0.02, dtype: "bf16", device, category: "weights" });
const q = quantize(w);
const x = Tensor.randn([M, K], { dtype: "bf16", device });
const out = Tensor.empty([M, N], { dtype: "bf16", device });
const x1 = Tensor.randn([1, K], { dtype: "bf16", device });
const out1 = Tensor.empty([1, N], { dtype: "bf16", device });

const sync = () => device.synchronize();
Deno.bench({
  name: "bf16 linear, 512 tokens",
  group: "linear 4096 -> 11008",
  baseline: true,
  fn: () => {
    matmul(x, w, { transB: true, out });
    sync();
  },
});
Deno.bench({
  name: "NF4 (double quant) linear, 512 tokens",
  group: "linear 4096 -> 11008",
  fn: () => {
    matmul4bit(x, q, { transW: true, out });
    sync();
  },
});
Deno.bench({
  name: "bf16 linear, batch 1",
  group: "linear 4096 -> 11008, batch 1",
  baseline: true,
  fn: () => {
    matmul(x1, w, { transB: true, out: out1 });
    sync();
  },
});
Deno.bench({
  name: "NF4 (double quant) linear, batch 1",
  group: "linear 4096 -> 11008, batch 1",
  fn: () => {
    matmul4bit(x1, q, { transW: true, out: out1 });
    sync();
  },
});

const merged = new LoRALinear(4096, 4096, { rank: 8, base: "bf16", device });
const unmerged = new LoRALinear(4096, 4096, { rank: 8, base: "bf16", device });
merged.training = unmerged.training = false;
merged.merge();
const xl = Tensor.randn([256, 4096], { dtype: "bf16", device });
Deno.bench({
  name: "LoRA bf16 base, merged, 256 tokens",
  group: "LoRA inference 4096 -> 4096, rank 8",
  baseline: true,
  fn: () => {
    merged.forward(xl).dispose();
    sync();
  },
});
Deno.bench({
  name: "LoRA bf16 base, unmerged, 256 tokens",
  group: "LoRA inference 4096 -> 4096, rank 8",
  fn: () => {
    unmerged.forward(xl).dispose();
    sync();
  },
});

// What oneDNN refuses (f32 inputs into a bf16 output; every bf16 product under QLORA_CPU_ISA=avx2) runs
// as its f32 product on f32 copies: the ratio to the plain f32 product is the price of the copies.
const [Mf, Nf, Kf] = [512, 1024, 1024];
const af = Tensor.randn([Mf, Kf], { device });
const bf = Tensor.randn([Nf, Kf], { device });
const cf32 = Tensor.empty([Mf, Nf], { device });
const cbf16 = Tensor.empty([Mf, Nf], { dtype: "bf16", device });
Deno.bench({
  name: "f32 x f32 -> f32, 512 x 1024 x 1024",
  group: "a product oneDNN refuses",
  baseline: true,
  fn: () => {
    matmul(af, bf, { transB: true, out: cf32 });
    sync();
  },
});
Deno.bench({
  name: "f32 x f32 -> bf16 (f32 product, then rounded)",
  group: "a product oneDNN refuses",
  fn: () => {
    matmul(af, bf, { transB: true, out: cbf16 });
    sync();
  },
});
