/**
 * The storage of 4-bit constants, measured by quantizing one real-size weight with and without double
 * quantization, and the adapter size of a rank-8 LoRA on it.
 *
 * @module
 */

import { type Device, LoRALinear, quantize, Tensor } from "../../mod.ts";
import { ALPHA, RANK } from "./common.ts";
import type { ConstantsMeasurement } from "./types.ts";

export function measureConstants(device: Device): ConstantsMeasurement {
  const shape: [number, number] = [4096, 4096];
  using w = Tensor.randn(shape, { std: 0.02, dtype: "bf16", category: "workspace", seed: 3, device });
  using plain = quantize(w, { quantType: "nf4", blocksize: 64, doubleQuant: false });
  using dq = quantize(w, { quantType: "nf4", blocksize: 64, doubleQuant: true });
  const n = w.numel;
  // What the ledger holds (the f32 mean of double quantization is a host-side number, 4 bytes).
  const plainBytes = plain.absmax!.byteLength;
  const dqBytes = dq.nested!.codes.byteLength + dq.nested!.absmax.byteLength + 4;
  using lora = LoRALinear.fromWeight(w, { rank: RANK, alpha: ALPHA, base: "bf16" });
  return {
    shape,
    plainBits: (8 * plainBytes) / n,
    doubleQuantBits: (8 * dqBytes) / n,
    totalBits: dq.bitsPerParameter,
    adapterParameters: lora.trainableParameters,
  };
}
