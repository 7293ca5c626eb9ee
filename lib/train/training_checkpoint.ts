/**
 * Resumable checkpoints of a training run ({@linkcode writeTrainingCheckpoint} /
 * {@linkcode readTrainingCheckpoint}): one directory per step (`checkpoint-000040/`) holding the weights as
 * `adapters.ts` writes them, the optimizer's state (`optimizer.safetensors`: m and v, or 8-bit codes and
 * block absmax, master copies, paged states read from wherever their pages are), and `trainer_state.json`
 * (step, schedule position, optimizer step count, the position of every random stream: data order and
 * each LoRA layer's dropout counter, the loss history, and the configuration the run started with). Every
 * file is written atomically, and the completion marker `checkpoint_complete.json` (each file with its
 * size) last: a directory without a valid marker is a torn checkpoint, killed while written, and
 * {@linkcode listCheckpoints} says so.
 *
 * @module
 */

import { InvalidArgumentError, pauseForTest } from "../base/mod.ts";
import type { LlamaModel } from "../llama/mod.ts";
import type { StateTensor } from "../optim/mod.ts";
import { safetensorsDtypeOf, SafetensorsReader, SafetensorsWriter, writeFileAtomic } from "../io/mod.ts";
import { hostArray, type Tensor } from "../core/mod.ts";
import type { StepInfo } from "./training_progress.ts";

import { loraLayers, trainableEntries } from "./_peft_entries.ts";
import { saveCheckpoint } from "./adapters.ts";

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
