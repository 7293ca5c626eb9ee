/**
 * 4-bit checkpoints in the layout Hugging Face transformers uses for bitsandbytes weights, so that a
 * file moves between the two. For a weight `NAME` quantized with double quantization:
 *
 * | key | dtype, shape | content |
 * |---|---|---|
 * | `NAME` | U8 [(n+1)/2, 1] | packed codes, first value in the high nibble |
 * | `NAME.absmax` | U8 [blocks] (F32 without double quantization) | per-block constants |
 * | `NAME.quant_map` | F32 [16] | the 4-bit code values |
 * | `NAME.nested_absmax` | F32 [ceil(blocks/256)] | scales of the 8-bit constants |
 * | `NAME.nested_quant_map` | F32 [256] | the 8-bit dynamic map |
 * | `NAME.quant_state.bitsandbytes__nf4` | U8 [len] | JSON: quant_type, blocksize, dtype, shape, nested_* |
 *
 * @module
 */

import {
  type Device,
  dynamicMap,
  type FloatDType,
  quantizationError,
  quantizeAsync,
  QuantizedTensor,
  quantMap,
  type QuantType,
  Tensor,
  toFloat32,
} from "../core/mod.ts";
import { InvalidArgumentError, SafetensorsError } from "../base/mod.ts";
import type { SafetensorsDtype } from "./safetensors_header.ts";
import { SafetensorsReader } from "./safetensors_reader.ts";
import { SafetensorsWriter } from "./safetensors_writer.ts";

/** Options of {@linkcode quantizeCheckpoint}. */
export interface QuantizeCheckpointOptions {
  /** 4-bit type (default nf4). Int4 has no bitsandbytes layout and is refused. */
  quantType?: "nf4" | "fp4";
  /** Values per constant (default 64). */
  blocksize?: number;
  /** Double-quantize the constants (default true). */
  doubleQuant?: boolean;
  /** Tensors whose name matches are copied unchanged. */
  skip?: RegExp;
  /** Called after each tensor with its report. */
  onTensor?: (report: TensorReport) => void;
  /** Called with the fraction of values processed so far. */
  onProgress?: (fraction: number) => void;
}

/** What happened to one tensor of a checkpoint. */
export interface TensorReport {
  /** Tensor name. */
  name: string;
  /** Shape. */
  shape: number[];
  /** "quantized" or "copied" (not 2-D floating point, or matched by --skip). */
  action: "quantized" | "copied" | "dequantized";
  /** Bytes in the input file. */
  bytesBefore: number;
  /** Bytes in the output file (codes and every constant). */
  bytesAfter: number;
  /** Bits per parameter in the output. */
  bitsPerParameter: number;
  /** Relative RMS error of the round trip (quantized tensors only, else 0). */
  relativeRms: number;
}

const SAFETENSORS_TO_DTYPE: Partial<Record<SafetensorsDtype, FloatDType>> = {
  F32: "f32",
  BF16: "bf16",
  F16: "f16",
};
const DTYPE_TO_SAFETENSORS: Record<FloatDType, SafetensorsDtype> = { f32: "F32", bf16: "BF16", f16: "F16" };
const TORCH_NAMES: Record<FloatDType, string> = { f32: "float32", bf16: "bfloat16", f16: "float16" };

interface Entry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Bytes made before writing, a producer called while writing, or null to copy from the input. */
  data: Uint8Array | (() => Promise<Uint8Array>) | null;
}

function bytesOf(a: Float32Array | Uint16Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Views raw little-endian bytes as host elements of a float dtype (copying when unaligned). */
function viewAs(bytes: Uint8Array, dtype: FloatDType): Float32Array | Uint16Array {
  const size = dtype === "f32" ? 4 : 2;
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  return dtype === "f32"
    ? new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4)
    : new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
}

async function quantizeOne(
  device: Device,
  name: string,
  dtype: FloatDType,
  shape: number[],
  bytes: Uint8Array,
  o: Required<Pick<QuantizeCheckpointOptions, "quantType" | "blocksize" | "doubleQuant">>,
  onProgress: (fraction: number) => void,
): Promise<{ entries: Entry[]; report: TensorReport }> {
  const raw = viewAs(bytes, dtype);
  using x = Tensor.from(raw, { shape, dtype, category: "weights", device });
  using q = await quantizeAsync(x, {
    quantType: o.quantType,
    blocksize: o.blocksize,
    doubleQuant: o.doubleQuant,
    onProgress,
  });
  using restored = await q.dequantizeAsync({ dtype: "f32", category: "workspace" });
  const err = quantizationError(toFloat32(raw, dtype), restored.toFloat32());
  const state: Record<string, unknown> = {
    quant_type: o.quantType,
    blocksize: o.blocksize,
    dtype: TORCH_NAMES[dtype],
    shape,
  };
  const packed = q.packed.toArray() as Uint8Array;
  const entries: Entry[] = [{ name, dtype: "U8", shape: [packed.length, 1], data: packed }];
  if (q.nested) {
    const codes = q.nested.codes.toArray() as Uint8Array;
    entries.push({ name: `${name}.absmax`, dtype: "U8", shape: [codes.length], data: codes });
  } else {
    const absmax = q.absmax!.toArray() as Float32Array;
    entries.push({ name: `${name}.absmax`, dtype: "F32", shape: [absmax.length], data: bytesOf(absmax) });
  }
  entries.push({
    name: `${name}.quant_map`,
    dtype: "F32",
    shape: [16],
    data: bytesOf(quantMap(o.quantType, device)),
  });
  if (q.nested) {
    const nested = q.nested.absmax.toArray() as Float32Array;
    entries.push({
      name: `${name}.nested_absmax`,
      dtype: "F32",
      shape: [nested.length],
      data: bytesOf(nested),
    });
    entries.push({
      name: `${name}.nested_quant_map`,
      dtype: "F32",
      shape: [256],
      data: bytesOf(dynamicMap(device)),
    });
    Object.assign(state, {
      nested_blocksize: q.nested.blocksize,
      nested_dtype: "float32",
      nested_offset: q.nested.offset,
    });
  }
  const json = new TextEncoder().encode(JSON.stringify(state));
  entries.push({
    name: `${name}.quant_state.bitsandbytes__${o.quantType}`,
    dtype: "U8",
    shape: [json.length],
    data: json,
  });
  const bytesAfter = entries.reduce((s, e) => s + (e.data as Uint8Array).byteLength, 0);
  return {
    entries,
    report: {
      name,
      shape,
      action: "quantized",
      bytesBefore: bytes.byteLength,
      bytesAfter,
      bitsPerParameter: (bytesAfter * 8) / x.numel,
      relativeRms: err.relativeRms,
    },
  };
}

function copiedReport(name: string, shape: readonly number[], bytes: number): TensorReport {
  const params = shape.reduce((a, b) => a * b, 1);
  return {
    name,
    shape: [...shape],
    action: "copied",
    bytesBefore: bytes,
    bytesAfter: bytes,
    bitsPerParameter: params ? (bytes * 8) / params : 0,
    relativeRms: 0,
  };
}

/**
 * Writes entries to `out`. The writer is atomic: `out` is replaced only when every byte is written; on
 * an error `await using` removes the temporary file, and the error is the one that happened.
 */
async function writeEntries(
  out: string,
  entries: Entry[],
  metadata: Record<string, string>,
  streamFrom: SafetensorsReader,
): Promise<void> {
  await using writer = await SafetensorsWriter.create(
    out,
    entries.map(({ name, dtype, shape }) => ({ name, dtype, shape })),
    metadata,
  );
  for (const e of entries) {
    const bytes = e.data === null
      ? await streamFrom.read(e.name)
      : typeof e.data === "function"
      ? await e.data()
      : e.data;
    await writer.write(e.name, bytes);
  }
  await writer.close();
}

/**
 * Refuses an output that is the input file under another name (the same path, `..` in front, a hard
 * link or a symbolic link): the same device and inode. Nothing to check when either does not exist.
 */
function refuseSameFile(verb: string, input: string, output: string): void {
  let a: Deno.FileInfo, b: Deno.FileInfo;
  try {
    a = Deno.statSync(input);
    b = Deno.statSync(output);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return;
    throw e;
  }
  const same = a.ino !== null && b.ino !== null
    ? a.dev === b.dev && a.ino === b.ino
    : Deno.realPathSync(input) === Deno.realPathSync(output);
  if (same) {
    throw new InvalidArgumentError(
      `Cannot ${verb}: IN and OUT are the same file (${input} and ${output} are inode ${a.ino} on device ${a.dev})`,
    );
  }
}

/**
 * Quantizes every 2-D floating-point tensor of a safetensors file to 4 bits in the bitsandbytes /
 * transformers layout; other tensors are copied unchanged. Returns one report per input tensor. The
 * output is written atomically (the previous file, if any, stays whole until the new one is complete).
 *
 * @throws {InvalidArgumentError} when `output` is the input file, by any path or link to it.
 *
 * @example
 * ```ts
 * import { getDevice, quantizeCheckpoint, writeSafetensors } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const w = new Float32Array(64 * 64).map((_, i) => Math.sin(i));
 * await writeSafetensors(`${dir}/in.safetensors`, [
 *   { name: "w", dtype: "F32", shape: [64, 64], data: new Uint8Array(w.buffer) },
 * ]);
 * const reports = await quantizeCheckpoint(getDevice("cpu"), `${dir}/in.safetensors`, `${dir}/out.safetensors`);
 * assert(reports[0].action === "quantized");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function quantizeCheckpoint(
  device: Device,
  input: string,
  output: string,
  options: QuantizeCheckpointOptions = {},
): Promise<TensorReport[]> {
  const o = {
    quantType: options.quantType ?? "nf4",
    blocksize: options.blocksize ?? 64,
    doubleQuant: options.doubleQuant ?? true,
  };
  if (o.quantType !== "nf4" && o.quantType !== "fp4") {
    throw new InvalidArgumentError(
      `Cannot quantize a checkpoint: quant type ${o.quantType} has no bitsandbytes layout (nf4 or fp4)`,
    );
  }
  refuseSameFile("quantize", input, output);
  using reader = await SafetensorsReader.open(input);
  const total = reader.tensors.reduce((s, t) => s + t.byteLength, 0) || 1;
  let done = 0;
  const entries: Entry[] = [];
  const reports: TensorReport[] = [];
  for (const t of reader.tensors) {
    const dtype = SAFETENSORS_TO_DTYPE[t.dtype];
    const eligible = dtype !== undefined && t.shape.length === 2 && t.byteLength > 0 &&
      !options.skip?.test(t.name);
    let report: TensorReport;
    if (eligible) {
      const r = await quantizeOne(
        device,
        t.name,
        dtype,
        [...t.shape],
        await reader.read(t.name),
        o,
        (f) => options.onProgress?.((done + f * t.byteLength) / total),
      );
      entries.push(...r.entries);
      report = r.report;
    } else {
      entries.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], data: null });
      report = copiedReport(t.name, t.shape, t.byteLength);
    }
    done += t.byteLength;
    options.onProgress?.(done / total);
    options.onTensor?.(report);
    reports.push(report);
  }
  await writeEntries(output, entries, reader.metadata, reader);
  return reports;
}

/** One 4-bit weight found in a checkpoint in the bitsandbytes layout, with its parsed quant state. */
export interface QuantGroup {
  /** The weight's name (`model.layers.0.self_attn.q_proj.weight`). */
  name: string;
  /** NF4 or FP4. */
  quantType: QuantType;
  /** Values per absmax. */
  blocksize: number;
  /** The dtype the weight had before quantization (its quant state's `dtype`). */
  dtype: FloatDType;
  /** The weight's shape. */
  shape: number[];
  /** Double quantization's nested blocksize and offset, or null without it. */
  nested: { blocksize: number; offset: number } | null;
  /** The checkpoint's keys this weight uses (the packed codes and every quant-state tensor). */
  keys: string[];
}

/** The name of a 4-bit weight's quant state: `NAME.quant_state.bitsandbytes__nf4` (or fp4). */
export const STATE_KEY = /^(.*)\.quant_state\.bitsandbytes__(nf4|fp4)$/;
const TORCH_TO_DTYPE: Record<string, FloatDType> = { float32: "f32", bfloat16: "bf16", float16: "f16" };

/**
 * Reads a 4-bit weight's quant state (the JSON bytes of `NAME.quant_state.bitsandbytes__nf4`) and checks
 * that its companion tensors are in the file.
 *
 * @example
 * ```ts
 * import { getDevice, parseGroup, quantizeCheckpoint, SafetensorsReader, writeSafetensors } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const w = new Float32Array(64 * 64).map((_, i) => Math.sin(i));
 * await writeSafetensors(`${dir}/a.safetensors`, [{ name: "w", dtype: "F32", shape: [64, 64], data: new Uint8Array(w.buffer) }]);
 * await quantizeCheckpoint(getDevice("cpu"), `${dir}/a.safetensors`, `${dir}/q.safetensors`);
 * using reader = await SafetensorsReader.open(`${dir}/q.safetensors`);
 * const g = parseGroup(reader, "w", "nf4", reader.readSync("w.quant_state.bitsandbytes__nf4"));
 * assertEquals([g.shape, g.blocksize, g.keys.length], [[64, 64], 64, 6]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function parseGroup(
  reader: SafetensorsReader,
  name: string,
  quantType: "nf4" | "fp4",
  json: Uint8Array,
): QuantGroup {
  const bad = (why: string) => new SafetensorsError(`Cannot dequantize ${name}: ${why}`);
  let s: Record<string, unknown>;
  try {
    s = JSON.parse(new TextDecoder().decode(json));
  } catch {
    throw bad("its quant_state is not JSON");
  }
  if (typeof s !== "object" || s === null || Array.isArray(s)) {
    throw bad(`its quant_state is ${JSON.stringify(s)}, not an object`);
  }
  const dtype = TORCH_TO_DTYPE[String(s.dtype)];
  const shape = s.shape;
  if (!dtype) throw bad(`unknown dtype ${JSON.stringify(s.dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d > 0)) throw bad("bad shape");
  if (!Number.isInteger(s.blocksize)) throw bad("bad blocksize");
  const nested = s.nested_blocksize === undefined
    ? null
    : { blocksize: Number(s.nested_blocksize), offset: Number(s.nested_offset) };
  if (nested && (!Number.isInteger(nested.blocksize) || !Number.isFinite(Math.fround(nested.offset)))) {
    throw bad("bad nested_blocksize or nested_offset (not a finite f32)");
  }
  const keys = [name, `${name}.absmax`, `${name}.quant_map`];
  if (nested) keys.push(`${name}.nested_absmax`, `${name}.nested_quant_map`);
  for (const k of keys) if (!reader.has(k)) throw bad(`${k} is missing`);
  keys.push(`${name}.quant_state.bitsandbytes__${quantType}`);
  return { name, quantType, blocksize: s.blocksize as number, dtype, shape, nested, keys };
}

/**
 * Rebuilds a {@linkcode QuantizedTensor} from a checkpoint group, on a device, reading each of its tensors
 * with `read` (synchronous: a model directory's weight source cannot await). The constants of double
 * quantization are restored on the host with the file's own 8-bit map (they are small).
 *
 * @example
 * ```ts
 * import { getDevice, loadQuantGroup, parseGroup, quantizeCheckpoint, SafetensorsReader, writeSafetensors } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const w = new Float32Array(64 * 64).map((_, i) => Math.sin(i));
 * await writeSafetensors(`${dir}/a.safetensors`, [{ name: "w", dtype: "F32", shape: [64, 64], data: new Uint8Array(w.buffer) }]);
 * await quantizeCheckpoint(getDevice("cpu"), `${dir}/a.safetensors`, `${dir}/q.safetensors`);
 * using reader = await SafetensorsReader.open(`${dir}/q.safetensors`);
 * const g = parseGroup(reader, "w", "nf4", reader.readSync("w.quant_state.bitsandbytes__nf4"));
 * using q = loadQuantGroup(getDevice("cpu"), g, (key) => reader.readSync(key));
 * using back = q.dequantize();
 * assert(Math.abs(back.toFloat32()[1] - Math.sin(1)) < 0.2); // NF4 rounding at absmax ~1
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function loadQuantGroup(
  device: Device,
  g: QuantGroup,
  read: (key: string) => Uint8Array,
): QuantizedTensor {
  // Constants are checked before use: a NaN or Inf would restore as NaN weights without a word.
  const finite = (key: string, values: Float32Array) => {
    const i = values.findIndex((v) => !Number.isFinite(v));
    if (i >= 0) throw new SafetensorsError(`Cannot dequantize ${g.name}: ${key}[${i}] is ${values[i]}`);
    return values;
  };
  const f32 = (key: string) => {
    const bytes = read(key);
    if (bytes.byteLength % 4 !== 0) throw new SafetensorsError(`Cannot dequantize: ${key} is not F32`);
    return finite(key, viewAs(bytes, "f32") as Float32Array);
  };
  const n = g.shape.reduce((a, b) => a * b, 1);
  const blocks = Math.ceil(n / g.blocksize);
  let absmax: Float32Array;
  if (g.nested) {
    const codes = read(`${g.name}.absmax`);
    const scales = f32(`${g.name}.nested_absmax`);
    const map = f32(`${g.name}.nested_quant_map`);
    if (
      codes.length !== blocks || map.length !== 256 ||
      scales.length !== Math.ceil(blocks / g.nested.blocksize)
    ) {
      throw new SafetensorsError(
        `Cannot dequantize ${g.name}: constants do not match its shape and blocksizes`,
      );
    }
    absmax = new Float32Array(blocks);
    for (let i = 0; i < blocks; i++) {
      absmax[i] = Math.fround(
        Math.fround(map[codes[i]] * scales[Math.floor(i / g.nested.blocksize)]) + g.nested.offset,
      );
    }
    finite(`${g.name}.absmax (restored)`, absmax);
  } else {
    absmax = f32(`${g.name}.absmax`);
  }
  const packed = read(g.name);
  const parts = {
    packed: Tensor.from(packed.slice(), { dtype: "u8", category: "quantized_weights", device }),
    absmax: Tensor.from(absmax, { category: "quant_constants", device }),
  };
  try {
    return new QuantizedTensor({
      shape: g.shape,
      dtype: g.dtype,
      quantType: g.quantType,
      blocksize: g.blocksize,
      ...parts,
    });
  } catch (e) {
    parts.packed.dispose();
    parts.absmax.dispose();
    throw e;
  }
}

/** {@linkcode loadQuantGroup} through an asynchronous reader. */
async function loadGroup(device: Device, reader: SafetensorsReader, g: QuantGroup): Promise<QuantizedTensor> {
  const bytes = new Map<string, Uint8Array>();
  for (const k of g.keys) bytes.set(k, await reader.read(k));
  return loadQuantGroup(device, g, (k) => bytes.get(k)!);
}

/**
 * Restores every 4-bit weight of a checkpoint in the bitsandbytes layout to a float dtype (default:
 * the dtype recorded in its quant state); other tensors are copied unchanged. The output is written
 * atomically.
 *
 * @throws {InvalidArgumentError} when `output` is the input file, by any path or link to it.
 *
 * @example
 * ```ts
 * import { dequantizeCheckpoint, getDevice, quantizeCheckpoint, writeSafetensors } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const w = new Float32Array(64 * 64).map((_, i) => Math.cos(i));
 * await writeSafetensors(`${dir}/a.safetensors`, [
 *   { name: "w", dtype: "F32", shape: [64, 64], data: new Uint8Array(w.buffer) },
 * ]);
 * await quantizeCheckpoint(getDevice("cpu"), `${dir}/a.safetensors`, `${dir}/q.safetensors`);
 * const reports = await dequantizeCheckpoint(getDevice("cpu"), `${dir}/q.safetensors`, `${dir}/d.safetensors`);
 * assert(reports[0].action === "dequantized");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function dequantizeCheckpoint(
  device: Device,
  input: string,
  output: string,
  options: { dtype?: FloatDType; onTensor?: (report: TensorReport) => void } = {},
): Promise<TensorReport[]> {
  refuseSameFile("dequantize", input, output);
  using reader = await SafetensorsReader.open(input);
  const groups = new Map<string, QuantGroup>();
  for (const t of reader.tensors) {
    const m = STATE_KEY.exec(t.name);
    if (m) groups.set(m[1], parseGroup(reader, m[1], m[2] as "nf4" | "fp4", await reader.read(t.name)));
  }
  const owned = new Set([...groups.values()].flatMap((g) => g.keys));
  const entries: Entry[] = [];
  const reports: TensorReport[] = [];
  const report = (r: TensorReport) => {
    options.onTensor?.(r);
    reports.push(r);
  };
  for (const t of reader.tensors) {
    const g = groups.get(t.name);
    if (g) {
      // Restored while writing, one weight at a time: the output is never held whole in memory.
      const dtype = options.dtype ?? g.dtype;
      const produce = async () => {
        using q = await loadGroup(device, reader, g);
        using out = await q.dequantizeAsync({ dtype });
        const host = out.toArray() as Float32Array | Uint16Array;
        report({
          name: g.name,
          shape: g.shape,
          action: "dequantized",
          bytesBefore: g.keys.reduce((s, k) => s + reader.info(k).byteLength, 0),
          bytesAfter: host.byteLength,
          bitsPerParameter: (host.byteLength * 8) / q.numel,
          relativeRms: 0,
        });
        return bytesOf(host);
      };
      entries.push({ name: g.name, dtype: DTYPE_TO_SAFETENSORS[dtype], shape: g.shape, data: produce });
    } else if (!owned.has(t.name)) {
      entries.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], data: null });
      report(copiedReport(t.name, t.shape, t.byteLength));
    }
  }
  await writeEntries(output, entries, reader.metadata, reader);
  return reports;
}
