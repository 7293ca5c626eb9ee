// NF4 quantize and dequantize of 64M values against a plain device copy of the same bytes, measured in
// the same run: `./deno task bench`. Deno prints each group's ratio to its baseline ("copy"), which is
// the figure to read: absolute times depend on the machine and its load.
import { getDevice, quantize, Tensor } from "../mod.ts";
import * as ffi from "../lib/ffi/mod.ts";

const N = 64 << 20;
const device = getDevice();
const x = Tensor.randn([N], { std: 0.02, device, category: "weights" });
const xb = x.cast("bf16");
const q = quantize(x, { doubleQuant: false });
const qdq = quantize(x);
const outF32 = Tensor.empty([N], { device });
const outBf16 = Tensor.empty([N], { dtype: "bf16", device });
const copySrc = Tensor.empty([N], { device });
const copySrc16 = Tensor.empty([N], { dtype: "bf16", device });

function dequantizeInto(out: Tensor): void {
  ffi.dequantize4bit(device, q.weight4(), N, out, out.dtype);
  device.synchronize();
}
function copy(dst: Tensor, src: Tensor): void {
  dst.copyFrom(src);
  device.synchronize();
}

const label = `${device.backend}, 64M values`;

Deno.bench({
  name: "copy 256 MiB (f32 output bytes)",
  group: "dequantize f32",
  baseline: true,
  fn: () => copy(outF32, copySrc),
});
Deno.bench({
  name: `NF4 dequantize -> f32 (${label})`,
  group: "dequantize f32",
  fn: () => dequantizeInto(outF32),
});
Deno.bench({
  name: "copy 128 MiB (bf16 output bytes)",
  group: "dequantize bf16",
  baseline: true,
  fn: () => copy(outBf16, copySrc16),
});
Deno.bench({
  name: `NF4 dequantize -> bf16 (${label})`,
  group: "dequantize bf16",
  fn: () => dequantizeInto(outBf16),
});
Deno.bench({
  name: `NF4 + double quant dequantize -> bf16 (${label})`,
  group: "dequantize bf16",
  fn: () => {
    qdq.dequantizeInto(outBf16);
    device.synchronize();
  },
});
Deno.bench({
  name: "copy 256 MiB (f32 input bytes)",
  group: "quantize f32",
  baseline: true,
  fn: () => copy(copySrc, x),
});
const packedOut = Tensor.empty([N / 2], { dtype: "u8", device });
const absmaxOut = Tensor.empty([N / 64], { device });
function quantizeInto(src: Tensor): void {
  ffi.quantize4bit(device, src, src.dtype, N, "nf4", 64, packedOut, absmaxOut);
  device.synchronize();
}
Deno.bench({
  name: `NF4 quantize f32 into reused buffers (${label})`,
  group: "quantize f32",
  fn: () => quantizeInto(x),
});
Deno.bench({
  name: `NF4 quantize bf16 into reused buffers (${label})`,
  group: "quantize bf16",
  fn: () => quantizeInto(xb),
});
Deno.bench({
  name: `NF4 quantize f32, new tensors (${label})`,
  group: "quantize f32",
  fn: () => {
    using _r = quantize(x, { doubleQuant: false });
    device.synchronize();
  },
});
Deno.bench({
  name: "copy 128 MiB (bf16 input bytes)",
  group: "quantize bf16",
  baseline: true,
  fn: () => copy(copySrc16, xb),
});
Deno.bench({
  name: `NF4 + double quant quantize bf16, new tensors (${label})`,
  group: "quantize bf16",
  fn: () => {
    using _r = quantize(xb);
    device.synchronize();
  },
});
