/**
 * `./deno task quantize IN.safetensors OUT.safetensors [--quant-type nf4|fp4] [--blocksize 64]
 * [--no-double-quant] [--skip REGEX]`: quantizes every 2-D floating-point tensor to 4 bits in the
 * bitsandbytes / transformers layout; other tensors are copied. Prints bytes before and after, bits per
 * parameter and the relative RMS error per tensor and in total. OUT is written atomically (an interrupted
 * run leaves the previous OUT, or none); an OUT that is IN itself (by any path, hard link or symbolic
 * link) is refused.
 *
 * @module
 */

import { formatBytes, getDevice, quantizeCheckpoint, type TensorReport } from "../mod.ts";
import { helpText, parseArgs, ProgressBar, runMain, UsageError } from "./_cli.ts";

const USAGE = helpText("./deno task quantize IN.safetensors OUT.safetensors [options]", [
  ["IN.safetensors", "the checkpoint to quantize; required"],
  ["OUT.safetensors", "the file to write (atomically; not IN itself); required"],
  ["--quant-type nf4|fp4", "the 4-bit data type; default nf4"],
  ["--blocksize N", "weights per absmax constant, a power of two from 32 to 4096; default 64"],
  [
    "--no-double-quant",
    "keep the absmax constants in f32, not quantized to 8 bits; default off (double quant)",
  ],
  ["--skip REGEX", "copy the tensors whose name matches REGEX unquantized; default none"],
], [
  "Every 2-D floating-point tensor is quantized in the bitsandbytes / transformers layout; others are copied.",
]);

/** Prints one report row. */
export function formatRow(r: TensorReport): string {
  const err = r.action === "quantized" ? `  rel. RMS error ${(r.relativeRms * 100).toFixed(2)}%` : "";
  return `${r.action.padEnd(11)} ${r.name} [${r.shape.join(", ")}]: ${formatBytes(r.bytesBefore)} -> ${
    formatBytes(r.bytesAfter)
  }, ${r.bitsPerParameter.toFixed(3)} bits/param${err}`;
}

/** Prints the totals of a run. */
export function formatTotal(reports: TensorReport[]): string {
  const before = reports.reduce((s, r) => s + r.bytesBefore, 0);
  const after = reports.reduce((s, r) => s + r.bytesAfter, 0);
  const ratio = after > 0 ? (before / after).toFixed(2) : "n/a";
  return `total: ${reports.length} tensors, ${formatBytes(before)} -> ${
    formatBytes(after)
  } (${ratio}x smaller)`;
}

if (import.meta.main) {
  await runMain(async () => {
    const { positional, flags } = parseArgs(Deno.args, {
      "quant-type": "string",
      blocksize: "string",
      "no-double-quant": "boolean",
      skip: "string",
    });
    if (positional.length !== 2) throw new UsageError("expected IN and OUT paths");
    const [input, output] = positional;
    const quantType = (flags["quant-type"] ?? "nf4") as string;
    if (quantType !== "nf4" && quantType !== "fp4") throw new UsageError(`--quant-type must be nf4 or fp4`);
    const blocksize = Number(flags.blocksize ?? 64);
    if (!Number.isInteger(blocksize) || blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1))) {
      throw new UsageError(`--blocksize must be a power of two from 32 to 4096, got ${flags.blocksize}`);
    }
    let skip: RegExp | undefined;
    if (flags.skip !== undefined) {
      try {
        skip = new RegExp(flags.skip as string);
      } catch (e) {
        throw new UsageError(`--skip is not a valid regular expression: ${(e as Error).message}`);
      }
    }
    const device = getDevice();
    const bar = new ProgressBar("quantize");
    const reports = await quantizeCheckpoint(device, input, output, {
      quantType,
      blocksize,
      doubleQuant: !flags["no-double-quant"],
      skip,
      onProgress: (f) => bar.update(f),
      onTensor: (r) => {
        bar.done();
        console.log(formatRow(r));
      },
    });
    bar.done();
    console.log(formatTotal(reports));
    console.log(`wrote ${output} (${device.backend} backend)`);
  }, USAGE);
}
