// The QLoRA layer against the LoRA layer it replaces, measured in the same run: LLaMA-2-7B's up_proj
// (4096 -> 11008), rank-8 adapters, bf16 activations; the NF4 base with double quantization against the
// bf16 base (each group's baseline). Decoding (1 and 8 tokens: one pass over W, memory-bound, where NF4's
// quarter of the bytes should show), a prompt's prefill (512 tokens: compute-bound), and a training
// step's forward and backward at 512. Each name carries the floor the project sets for its ratio
// (issue "4-bit faster than 16-bit"): Deno's summary prints the measured one beside it.
import { fillUniform, getDevice, LoRALinear, Tensor } from "../mod.ts";

const device = getDevice();
const [IN, OUT, RANK] = [4096, 11008, 8];
const weight = Tensor.randn([OUT, IN], { std: 0.02, dtype: "bf16", device, category: "workspace" });
const layers = {
  bf16: LoRALinear.fromWeight(weight, { rank: RANK, alpha: 16, base: "bf16" }),
  nf4: LoRALinear.fromWeight(weight, { rank: RANK, alpha: 16, base: "nf4", computeDtype: "bf16" }),
};
weight.dispose();
for (const l of Object.values(layers)) fillUniform(l.loraB, -0.01, 0.01, 1); // a trained-looking bypass
const sync = () => device.synchronize();

for (const [tokens, floor] of [[1, 3.0], [8, 1.5], [512, 1.0]] as const) {
  const x = Tensor.randn([tokens, IN], { dtype: "bf16", device, seed: tokens });
  for (const base of ["bf16", "nf4"] as const) {
    Deno.bench({
      name: base === "bf16"
        ? `LoRA layer, bf16 base, ${tokens} token${tokens > 1 ? "s" : ""}`
        : `QLoRA layer, NF4 + DQ base (floor ${floor}x)`,
      group: `up_proj forward, ${tokens} token${tokens > 1 ? "s" : ""}`,
      baseline: base === "bf16",
      fn: () => {
        layers[base].infer(x).dispose();
        sync();
      },
    });
  }
}

const x512 = Tensor.randn([512, IN], { dtype: "bf16", device, seed: 2 });
const dy = Tensor.randn([512, OUT], { dtype: "bf16", device, seed: 3 });
for (const base of ["bf16", "nf4"] as const) {
  Deno.bench({
    name: base === "bf16" ? "LoRA layer, bf16 base, 512 tokens" : "QLoRA layer, NF4 + DQ base (floor 1.0x)",
    group: "up_proj forward + backward (training), 512 tokens",
    baseline: base === "bf16",
    fn: () => {
      layers[base].forward(x512).dispose();
      layers[base].backward(dy).dispose();
      sync();
    },
  });
}
