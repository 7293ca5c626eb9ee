/**
 * `./deno task dequantize IN.safetensors OUT.safetensors [--dtype f32|bf16|f16]`: restores every
 * 4-bit weight of a bitsandbytes-layout checkpoint to a float dtype (default: the one recorded in its
 * quant state); other tensors are copied. OUT is written atomically; an OUT that is IN itself (by any
 * path, hard link or symbolic link) is refused.
 *
 * @module
 */

import { dequantizeCheckpoint, type FloatDType, getDevice } from "../mod.ts";
import { helpText, parseArgs, runMain, UsageError } from "./_cli.ts";
import { formatRow, formatTotal } from "./quantize.ts";

const USAGE = helpText("./deno task dequantize IN.safetensors OUT.safetensors [--dtype f32|bf16|f16]", [
  ["IN.safetensors", "a checkpoint with 4-bit weights in the bitsandbytes layout; required"],
  ["OUT.safetensors", "the file to write (atomically; not IN itself); required"],
  [
    "--dtype f32|bf16|f16",
    "the dtype of the restored weights; default the one each weight's quant state records",
  ],
], ["Other tensors are copied."]);

await runMain(async () => {
  const { positional, flags } = parseArgs(Deno.args, { dtype: "string" });
  if (positional.length !== 2) throw new UsageError("expected IN and OUT paths");
  const [input, output] = positional;
  const dtype = flags.dtype as string | undefined;
  if (dtype !== undefined && dtype !== "f32" && dtype !== "bf16" && dtype !== "f16") {
    throw new UsageError(`--dtype must be f32, bf16 or f16, got ${dtype}`);
  }
  const device = getDevice();
  const reports = await dequantizeCheckpoint(device, input, output, {
    dtype: dtype as FloatDType | undefined,
    onTensor: (r) => console.log(formatRow(r)),
  });
  console.log(formatTotal(reports));
  console.log(`wrote ${output} (${device.backend} backend)`);
}, USAGE);
