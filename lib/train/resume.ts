/**
 * Checkpoints of a training run.
 *
 * - {@linkcode saveCheckpoint} / {@linkcode loadAdapter}: the trained weights, adapters in PEFT's layout
 *   (or every trainable tensor in full fine-tuning), for use after training.
 * - {@linkcode writeTrainingCheckpoint} / {@linkcode readTrainingCheckpoint}: a resumable checkpoint, one
 *   directory per step (`checkpoint-000040/`) holding the weights as above, the optimizer's state
 *   (`optimizer.safetensors`: m and v, or 8-bit codes and block absmax, master copies, paged states read
 *   from wherever their pages are), and `trainer_state.json` (step, schedule position, optimizer step
 *   count, the position of every random stream: data order and each LoRA layer's dropout counter, the
 *   loss history, and the configuration the run started with). Every file is written atomically, and the
 *   completion marker `checkpoint_complete.json` (each file with its size) last: a directory without a
 *   valid marker is a torn checkpoint, killed while written, and {@linkcode listCheckpoints} says so.
 *
 * @module
 */

import { InvalidArgumentError, pauseForTest } from "../base/mod.ts";
import { type LlamaModel, MODULE_PATHS, type TargetModule } from "../llama/mod.ts";
import { LoRALinear } from "../nn/mod.ts";
import type { StateTensor } from "../optim/mod.ts";
import {
  floatValues,
  readSafetensors,
  safetensorsDtypeOf,
  SafetensorsReader,
  SafetensorsWriter,
  writeFileAtomic,
  writeSafetensors,
} from "../io/mod.ts";
import { hostArray, Tensor } from "../core/mod.ts";
import type { StepInfo } from "./training_progress.ts";

/** A LoRA layer of a model with its PEFT key prefix (`base_model.model.model.layers.N.self_attn.q_proj`). */
interface LoRAEntry {
  layer: LoRALinear;
  module: string;
  prefix: string;
}

function loraLayers(model: LlamaModel): LoRAEntry[] {
  const out: LoRAEntry[] = [];
  for (let i = 0; i < model.config.layers; i++) {
    for (const [module, layer] of Object.entries(model.block(i))) {
      if (layer instanceof LoRALinear) {
        out.push({
          layer,
          module,
          prefix: `base_model.model.model.layers.${i}.${MODULE_PATHS[module as TargetModule]}`,
        });
      }
    }
  }
  return out;
}

/**
 * The tensors a checkpoint stores for the model, by the name they have in the file: PEFT keys of every
 * `lora_A` and `lora_B` (LoRA, QLoRA), or `NNNN.name` by position in `model.trainables()` (full: names
 * repeat across blocks, the position keeps them unique).
 */
function trainableEntries(model: LlamaModel): { key: string; tensor: Tensor }[] {
  if (model.mode === "full") {
    return model.trainables().map((t, i) => ({
      key: `${i.toString().padStart(4, "0")}.${t.name}`,
      tensor: t.value,
    }));
  }
  return loraLayers(model).flatMap(({ layer, prefix }) => [
    { key: `${prefix}.lora_A.weight`, tensor: layer.loraA },
    { key: `${prefix}.lora_B.weight`, tensor: layer.loraB },
  ]);
}

function bytesOf(t: Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Writes a checkpoint into `dir`: for LoRA and QLoRA, the adapters in PEFT's layout
 * (`adapter_model.safetensors` with `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
 * [r, in] and `...lora_B.weight` [out, r], plus `adapter_config.json`); for full fine-tuning, every
 * trainable tensor in `model.safetensors` (named `NNNN.name` by position in `model.trainables()`); then
 * `trainer_state.json` with `info` (any further fields of it included), the mode and the shape. Each file
 * is written to a temporary file and renamed, so an interrupted run leaves the previous file intact.
 * Returns the files written. A resumable checkpoint adds the optimizer's state and a completion marker:
 * see {@linkcode writeTrainingCheckpoint}.
 *
 * @example
 * ```ts
 * import { LlamaModel, readSafetensors, saveCheckpoint } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 64, dim: 32, layers: 1, heads: 2, kvHeads: 2, hiddenDim: 64, maxSeq: 16,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 4, targetModules: ["q_proj", "v_proj"] });
 * const dir = await Deno.makeTempDir();
 * try {
 *   const files = await saveCheckpoint(model, dir, { step: 1, loss: 2.5 });
 *   assertEquals(files.map((f) => f.slice(dir.length + 1)), [
 *     "adapter_model.safetensors",
 *     "adapter_config.json",
 *     "trainer_state.json",
 *   ]);
 *   const adapters = await readSafetensors(`${dir}/adapter_model.safetensors`);
 *   assertEquals(adapters.size, 4); // lora_A and lora_B of q_proj and v_proj
 *   assertEquals(adapters.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!.info.shape, [
 *     4,
 *     32,
 *   ]);
 *   assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`)).r, 4);
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function saveCheckpoint(
  model: LlamaModel,
  dir: string,
  info: { step: number; loss: number; [key: string]: unknown },
  options: { baseModel?: string } = {},
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const written: string[] = [];
  const tensors = trainableEntries(model).map(({ key, tensor }) => ({
    name: key,
    dtype: safetensorsDtypeOf(tensor.dtype),
    shape: [...tensor.shape],
    data: bytesOf(tensor),
  }));
  if (model.mode === "full") {
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, tensors, { step: String(info.step), loss: String(info.loss) });
    written.push(path);
  } else {
    const layers = loraLayers(model);
    const first = layers[0]?.layer;
    const path = `${dir}/adapter_model.safetensors`;
    await writeSafetensors(path, tensors, { format: "pt" });
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      r: first?.rank ?? 0,
      lora_alpha: first ? first.scaling * first.rank : 0,
      lora_dropout: first?.dropoutP ?? 0,
      target_modules: [...new Set(layers.map((l) => l.module))],
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      base_model_name_or_path: options.baseModel ?? null,
    };
    const cfgPath = `${dir}/adapter_config.json`;
    await writeFileAtomic(cfgPath, JSON.stringify(config, null, 2) + "\n");
    written.push(path, cfgPath);
  }
  const statePath = `${dir}/trainer_state.json`;
  await writeFileAtomic(
    statePath,
    JSON.stringify({ ...info, mode: model.mode, config: model.config }, null, 2) + "\n",
  );
  written.push(statePath);
  return written;
}

/**
 * Loads a PEFT adapter (`adapter_model.safetensors` and `adapter_config.json`, as {@linkcode saveCheckpoint}
 * writes them, or PEFT's own for a LLaMA) into a LoRA or QLoRA model built with the same rank and target
 * modules: every `lora_A`/`lora_B` of the model is set from the file. A missing, extra or mis-shaped
 * tensor, or another rank or alpha, is an error naming it.
 *
 * @example
 * ```ts
 * import { LlamaModel, loadAdapter, saveCheckpoint, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using a = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 * a.block(0).q_proj.trainables()[1].value.copyFrom(new Float32Array(32).fill(0.5)); // a non-zero lora_B
 * const dir = await Deno.makeTempDir();
 * try {
 *   await saveCheckpoint(a, dir, { step: 1, loss: 0 });
 *   using b = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 *   await loadAdapter(b, dir);
 *   using tokens = Tensor.from(new Int32Array([1, 2, 3]), { shape: [1, 3] });
 *   using la = a.logits(tokens), lb = b.logits(tokens);
 *   assertEquals(la.toFloat32(), lb.toFloat32());
 * } finally {
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 */
export async function loadAdapter(model: LlamaModel, dir: string): Promise<void> {
  const fail = (what: string) => new InvalidArgumentError(`Cannot load the adapter in ${dir}: ${what}`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
  } catch (e) {
    throw fail(`adapter_config.json: ${(e as Error).message}`);
  }
  const file = await readSafetensors(`${dir}/adapter_model.safetensors`);
  const used = new Set<string>();
  for (const { layer, prefix } of loraLayers(model)) {
    if (cfg.r !== layer.rank || Math.abs(Number(cfg.lora_alpha) - layer.scaling * layer.rank) > 1e-6) {
      throw fail(
        `r ${cfg.r} and lora_alpha ${cfg.lora_alpha}, the model has ${layer.rank} and ${
          layer.scaling * layer.rank
        }`,
      );
    }
    for (const [suffix, t] of [["lora_A.weight", layer.loraA], ["lora_B.weight", layer.loraB]] as const) {
      const key = `${prefix}.${suffix}`;
      const found = file.get(key);
      if (!found) throw fail(`${key} is missing`);
      if (found.info.shape.join() !== t.shape.join()) {
        throw fail(
          `${key} has shape [${found.info.shape.join(", ")}], the model's is [${t.shape.join(", ")}]`,
        );
      }
      const values = found.info.dtype === "F16" ? null : floatValues(found.info.dtype, found.data.slice());
      if (!values) throw fail(`${key} is ${found.info.dtype}, not F32 or BF16`);
      using v = Tensor.from(values, { shape: [...t.shape], device: t.device, category: "workspace" });
      using cast = v.cast(t.dtype as "f32" | "bf16");
      t.copyFrom(cast);
      used.add(key);
    }
  }
  const extra = [...file.keys()].find((k) => !used.has(k));
  if (extra) throw fail(`${extra} is not an adapter of this model (other target_modules?)`);
}

// ---------------------------------------------------------------------------------------------------------
// Resumable checkpoints
// ---------------------------------------------------------------------------------------------------------

/** The file a resumable checkpoint writes last: its presence, valid, says the directory is complete. */
export const CHECKPOINT_MARKER = "checkpoint_complete.json";
/** Version of the resumable checkpoint's layout (in the marker and `trainer_state.json`). */
export const CHECKPOINT_FORMAT = 1;
const OPTIMIZER_FILE = "optimizer.safetensors";
const STATE_FILE = "trainer_state.json";

/** A checkpoint directory of a run, as {@linkcode listCheckpoints} finds it. */
export interface CheckpointEntry {
  /** `checkpoint-000040`. */
  name: string;
  /** Its path. */
  path: string;
  /** Optimizer steps done when it was written. */
  step: number;
  /** Whether its marker is there and every file it lists has its size. */
  complete: boolean;
  /** Why it is not complete (null when it is). */
  problem: string | null;
}

/** The name of the checkpoint directory of a step: `checkpoint-000040`. */
function checkpointName(step: number): string {
  return `checkpoint-${step.toString().padStart(6, "0")}`;
}

async function checkComplete(path: string, step: number): Promise<string | null> {
  let marker: { format?: unknown; step?: unknown; files?: Record<string, unknown> };
  try {
    marker = JSON.parse(await Deno.readTextFile(`${path}/${CHECKPOINT_MARKER}`));
  } catch (e) {
    return e instanceof Deno.errors.NotFound
      ? `no ${CHECKPOINT_MARKER} (killed while it was written?)`
      : `${CHECKPOINT_MARKER} is unreadable: ${(e as Error).message}`;
  }
  if (marker.format !== CHECKPOINT_FORMAT) return `format ${marker.format}, expected ${CHECKPOINT_FORMAT}`;
  if (marker.step !== step) return `the marker says step ${marker.step}, the name ${step}`;
  if (typeof marker.files !== "object" || marker.files === null) return "the marker lists no files";
  for (const [file, size] of Object.entries(marker.files)) {
    try {
      const actual = (await Deno.stat(`${path}/${file}`)).size;
      if (actual !== size) return `${file} has ${actual} bytes, the marker says ${size}`;
    } catch {
      return `${file} is missing`;
    }
  }
  return null;
}

/**
 * The `checkpoint-NNNNNN` directories of a run, by step (oldest first), each checked: complete when its
 * marker is valid and every file it lists is there with its size. A missing folder has none.
 *
 * @example
 * ```ts
 * import { listCheckpoints } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/checkpoint-000010`); // torn: no marker
 * const [entry] = await listCheckpoints(dir);
 * assertEquals([entry.step, entry.complete], [10, false]);
 * assertEquals(await listCheckpoints(`${dir}/missing`), []);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function listCheckpoints(dir: string): Promise<CheckpointEntry[]> {
  const out: CheckpointEntry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const m = /^checkpoint-(\d+)$/.exec(e.name);
      if (!m || !e.isDirectory) continue;
      const path = `${dir}/${e.name}`, step = Number(m[1]);
      const problem = await checkComplete(path, step);
      out.push({ name: e.name, path, step, complete: problem === null, problem });
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return out.sort((a, b) => a.step - b.step);
}

/** Removes a checkpoint directory, its marker first: a removal cut short leaves a torn one, never a false complete one. */
async function removeCheckpoint(path: string): Promise<void> {
  try {
    await Deno.remove(`${path}/${CHECKPOINT_MARKER}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** What a resumable checkpoint holds besides tensors (`trainer_state.json`). */
export interface TrainingState {
  /** Optimizer steps done. */
  step: number;
  /** Of this many. */
  steps: number;
  /** Mean training loss of the last step. */
  loss: number;
  /** The optimizer: its kind, steps taken (bias correction) and learning rate (the schedule's position). */
  optimizer: { kind: string; stepCount: number; lr: number };
  /** The configuration the run started with; a resume must match it. */
  run: Record<string, unknown>;
  /** The batch source's position (`BatchSource.getState`), null when it keeps none. */
  data: unknown;
  /** Each LoRA layer's dropout counter ({@linkcode LoRALinear.dropoutStep}), in block order. */
  dropoutSteps: number[];
  /** Every step so far. */
  history: StepInfo[];
}

/** The optimizer as a checkpoint sees it (AdamW, PagedAdamW and AdamW8bit are). */
export interface CheckpointOptimizer {
  /** Steps taken. */
  stepCount: number;
  /** Learning rate of the next step. */
  lr: number;
  /** Its state tensors. */
  stateTensors(): StateTensor[];
}

/** Options of {@linkcode writeTrainingCheckpoint}. */
export interface WriteCheckpointOptions {
  /** Keep this many complete checkpoints, the newest (default 3); older and torn ones are removed. */
  keep?: number;
  /** `base_model_name_or_path` of the adapter config. */
  baseModel?: string;
}

/**
 * Writes a resumable checkpoint of a run into `runDir/checkpoint-NNNNNN` (replacing one of the same step):
 * the weights ({@linkcode saveCheckpoint}), `optimizer.safetensors`, `trainer_state.json`, then the
 * marker; then removes all but the newest `keep` complete checkpoints, and torn ones
 * ({@linkcode pruneCheckpoints}).
 * Returns the checkpoint's path.
 *
 * @example
 * ```ts
 * import { AdamW, LlamaModel, listCheckpoints, writeTrainingCheckpoint } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 2 });
 * using optimizer = new AdamW(model.trainables());
 * const dir = await Deno.makeTempDir();
 * for (const step of [1, 2, 3]) {
 *   const state = { step, steps: 3, loss: 0, optimizer: { kind: "adamw", stepCount: step, lr: 1e-3 }, run: {},
 *     data: null, dropoutSteps: [], history: [] };
 *   await writeTrainingCheckpoint(dir, { model, optimizer, state }, { keep: 2 });
 * }
 * assertEquals((await listCheckpoints(dir)).map((c) => [c.name, c.complete]), [
 *   ["checkpoint-000002", true],
 *   ["checkpoint-000003", true],
 * ]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeTrainingCheckpoint(
  runDir: string,
  parts: { model: LlamaModel; optimizer: CheckpointOptimizer; state: TrainingState },
  options: WriteCheckpointOptions = {},
): Promise<string> {
  const { model, optimizer, state } = parts;
  const keep = options.keep ?? 3;
  if (!Number.isSafeInteger(keep) || keep < 1) {
    throw new InvalidArgumentError(`Cannot write a checkpoint: keep must be an integer >= 1, got ${keep}`);
  }
  const step = state.step, path = `${runDir}/${checkpointName(step)}`;
  await pauseForTest(`checkpoint:${step}:start`);
  await removeCheckpoint(path);
  await Deno.mkdir(path, { recursive: true });
  const files = await saveCheckpoint(model, path, { ...state, format: CHECKPOINT_FORMAT }, {
    baseModel: options.baseModel,
  });
  await pauseForTest(`checkpoint:${step}:weights`);
  const tensors = optimizer.stateTensors();
  {
    await using writer = await SafetensorsWriter.create(
      `${path}/${OPTIMIZER_FILE}`,
      tensors.map(({ name, dtype, shape }) => ({ name, dtype, shape })),
      { step_count: String(optimizer.stepCount), kind: state.optimizer.kind },
    );
    for (const [i, t] of tensors.entries()) {
      await writer.write(t.name, t.read());
      if (i === 0) await pauseForTest(`checkpoint:${step}:optimizer`); // the file half written
    }
    await writer.close();
  }
  files.push(`${path}/${OPTIMIZER_FILE}`);
  await pauseForTest(`checkpoint:${step}:marker`);
  const sizes: Record<string, number> = {};
  for (const f of files) sizes[f.slice(path.length + 1)] = (await Deno.stat(f)).size;
  await writeFileAtomic(
    `${path}/${CHECKPOINT_MARKER}`,
    JSON.stringify({ format: CHECKPOINT_FORMAT, step, files: sizes }, null, 2) + "\n",
  );
  await pauseForTest(`checkpoint:${step}:prune`);
  await pruneCheckpoints(runDir, keep);
  return path;
}

/**
 * Removes every torn checkpoint of a run and all but the newest `keep` complete ones (each marker first);
 * returns the directories removed. {@linkcode writeTrainingCheckpoint} calls it after each checkpoint, and
 * a resume from the latest checkpoint calls it too (a run killed while pruning).
 *
 * @example
 * ```ts
 * import { pruneCheckpoints } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/checkpoint-000003`); // torn
 * assertEquals((await pruneCheckpoints(dir, 2)).map((p) => p.slice(dir.length + 1)), ["checkpoint-000003"]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function pruneCheckpoints(runDir: string, keep: number): Promise<string[]> {
  const all = await listCheckpoints(runDir);
  const kept = new Set(all.filter((c) => c.complete).slice(-keep).map((c) => c.path));
  const removed: string[] = [];
  for (const c of all) {
    if (kept.has(c.path)) continue;
    await removeCheckpoint(c.path);
    removed.push(c.path);
  }
  return removed;
}

/**
 * The differences between two configurations, as `path: A in the checkpoint, B now` (nested objects
 * compared field by field; an empty list when they agree).
 *
 * @example
 * ```ts
 * import { configDifferences } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(configDifferences({ trainer: { steps: 40, lr: 1e-3 } }, { trainer: { steps: 80, lr: 1e-3 } }), [
 *   "trainer.steps: 40 in the checkpoint, 80 now",
 * ]);
 * ```
 */
export function configDifferences(saved: unknown, now: unknown): string[] {
  const flat = (v: unknown, prefix: string, out: Map<string, string>) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) flat(x, prefix ? `${prefix}.${k}` : k, out);
    } else if (v !== undefined) {
      out.set(prefix, JSON.stringify(v));
    }
    return out;
  };
  const a = flat(saved, "", new Map()), b = flat(now, "", new Map());
  const keys = [...new Set([...a.keys(), ...b.keys()])];
  return keys.filter((k) => a.get(k) !== b.get(k)).map((k) =>
    `${k}: ${a.get(k) ?? "absent"} in the checkpoint, ${b.get(k) ?? "absent"} now`
  );
}

/** Raw bytes into a tensor of the same dtype and size. */
function putBytes(t: Tensor, bytes: Uint8Array): void {
  const values = hostArray(t.dtype, t.numel);
  new Uint8Array(values.buffer, values.byteOffset, values.byteLength).set(bytes);
  t.copyFrom(values);
}

/**
 * Checks that a safetensors file holds exactly the expected tensors (names, dtypes, shapes), then copies
 * each one's bytes where `put` says. Nothing is written unless all match.
 */
async function restoreTensors(
  file: string,
  expected: { name: string; dtype: string; shape: readonly number[]; put: (bytes: Uint8Array) => void }[],
  fail: (what: string) => Error,
  write: boolean,
): Promise<void> {
  using reader = await SafetensorsReader.open(file);
  const names = new Set(expected.map((e) => e.name));
  for (const e of expected) {
    if (!reader.has(e.name)) throw fail(`${e.name} is missing from ${file}`);
    const info = reader.info(e.name);
    if (info.dtype !== e.dtype || info.shape.join() !== e.shape.join()) {
      throw fail(
        `${e.name} is ${info.dtype} [${info.shape.join(", ")}] in ${file}, the run has ${e.dtype} [${
          e.shape.join(", ")
        }]`,
      );
    }
  }
  const extra = reader.tensors.find((t) => !names.has(t.name));
  if (extra) throw fail(`${file} has ${extra.name}, which this run does not`);
  if (write) { for (const e of expected) e.put(await reader.read(e.name)); }
}

/**
 * Restores a run from a resumable checkpoint: reads `trainer_state.json`, refuses a checkpoint written by
 * a run of another configuration (naming every difference from `run`), checks every tensor's name, dtype
 * and shape, then sets the trainable weights, the optimizer's states, step count and learning rate, and
 * each LoRA layer's dropout counter, bit for bit. Returns the state (data position, history) for the
 * trainer to continue from.
 *
 * @example
 * ```ts
 * import { AdamW, LlamaModel, readTrainingCheckpoint, writeTrainingCheckpoint } from "../../mod.ts";
 * import { assertEquals, assertRejects } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using a = new LlamaModel(config, { mode: "lora", rank: 2, seed: 1 });
 * using optA = new AdamW(a.trainables());
 * a.block(0).q_proj.trainables()[1].value.copyFrom(new Float32Array(32).fill(0.5));
 * const dir = await Deno.makeTempDir();
 * const state = { step: 5, steps: 10, loss: 1, optimizer: { kind: "adamw", stepCount: 5, lr: 1e-3 },
 *   run: { lr: 1e-3 }, data: null, dropoutSteps: [0, 0, 0, 0, 0, 0, 0], history: [] };
 * const path = await writeTrainingCheckpoint(dir, { model: a, optimizer: optA, state });
 * using b = new LlamaModel(config, { mode: "lora", rank: 2, seed: 2 });
 * using optB = new AdamW(b.trainables());
 * await assertRejects(() => readTrainingCheckpoint(path, { model: b, optimizer: optB, run: { lr: 2e-3 } }),
 *   Error, "lr: 0.001 in the checkpoint, 0.002 now");
 * const restored = await readTrainingCheckpoint(path, { model: b, optimizer: optB, run: { lr: 1e-3 } });
 * assertEquals([restored.step, optB.stepCount], [5, 5]);
 * assertEquals(b.block(0).q_proj.trainables()[1].value.toFloat32(), new Float32Array(32).fill(0.5));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function readTrainingCheckpoint(
  path: string,
  parts: { model: LlamaModel; optimizer: CheckpointOptimizer; run: Record<string, unknown> },
): Promise<TrainingState> {
  const { model, optimizer } = parts;
  path = path.replace(/\/+$/, "");
  const fail = (what: string) => new InvalidArgumentError(`Cannot resume from ${path}: ${what}`);
  const problem = await checkComplete(path, Number(/checkpoint-(\d+)$/.exec(path)?.[1] ?? NaN));
  if (problem) throw fail(`the checkpoint is incomplete: ${problem}`);
  let state: TrainingState & { format?: number };
  try {
    state = JSON.parse(await Deno.readTextFile(`${path}/${STATE_FILE}`));
  } catch (e) {
    throw fail(`${STATE_FILE}: ${(e as Error).message}`);
  }
  if (state.format !== CHECKPOINT_FORMAT) throw fail(`format ${state.format}, expected ${CHECKPOINT_FORMAT}`);
  const diff = configDifferences(state.run, parts.run);
  if (diff.length) throw fail(`the run's configuration differs: ${diff.join("; ")}`);
  const loras = loraLayers(model).map((l) => l.layer);
  if (!Array.isArray(state.dropoutSteps) || state.dropoutSteps.length !== loras.length) {
    throw fail(`${state.dropoutSteps?.length} dropout counters for ${loras.length} LoRA layers`);
  }
  // Validate both files whole before writing anything: a refused resume leaves the model as it was.
  const weights = `${path}/${model.mode === "full" ? "model.safetensors" : "adapter_model.safetensors"}`;
  const weightEntries = trainableEntries(model).map(({ key, tensor }) => ({
    name: key,
    dtype: safetensorsDtypeOf(tensor.dtype),
    shape: tensor.shape,
    put: (bytes: Uint8Array) => putBytes(tensor, bytes),
  }));
  const stateEntries = optimizer.stateTensors().map((t) => ({ ...t, put: (b: Uint8Array) => t.write(b) }));
  for (const write of [false, true]) {
    await restoreTensors(weights, weightEntries, fail, write);
    await restoreTensors(`${path}/${OPTIMIZER_FILE}`, stateEntries, fail, write);
  }
  optimizer.stepCount = state.optimizer.stepCount;
  optimizer.lr = state.optimizer.lr;
  loras.forEach((l, i) => l.dropoutStep = state.dropoutSteps[i]);
  return state;
}

/**
 * The dropout counters of a model's LoRA layers, in block order (for {@linkcode TrainingState}).
 *
 * @example
 * ```ts
 * import { dropoutSteps, LlamaModel } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const config = { vocabSize: 16, dim: 16, layers: 1, heads: 2, kvHeads: 1, hiddenDim: 32, maxSeq: 8,
 *   normEps: 1e-5, ropeTheta: 10000 };
 * using model = new LlamaModel(config, { mode: "lora", rank: 2, targetModules: ["q_proj", "v_proj"] });
 * assertEquals(dropoutSteps(model), [0, 0]);
 * ```
 */
export function dropoutSteps(model: LlamaModel): number[] {
  return loraLayers(model).map((l) => l.layer.dropoutStep);
}
