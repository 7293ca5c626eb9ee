/**
 * AdamW, and a paged AdamW whose states move to host RAM under device-memory pressure.
 *
 * Adam keeps two f32 states per parameter (8 bytes); with bf16 parameters a full fine-tuning run also
 * keeps an f32 master copy (4 more bytes, counted with the states as ZeRO does): the precision policy
 * is explicit (`masterWeights`) and visible in the ledger under optimizer_states. One fused native call
 * updates every tensor of the group.
 *
 * The paged variant keeps the states in pages (2 MiB by default). While the budget has room they stay in
 * device memory; when another allocation needs the room (an activation spike), the least recently used
 * pages are copied to the host pool and their device memory freed; `step()` brings them back before the
 * update that needs them. Every page moved is counted.
 *
 * @module
 */

import type { Device } from "./device.ts";
import { hostArray } from "./dtype.ts";
import { InvalidArgumentError, OutOfMemoryError } from "./errors.ts";
import { ADAMW8_BLOCK as BLOCK8 } from "./ffi/abi.ts";
import * as ffi from "./ffi/mod.ts";
import type { Trainable } from "./lora.ts";
import { Tensor } from "./tensor.ts";

/** Options of {@linkcode AdamW}, {@linkcode PagedAdamW} and {@linkcode AdamW8bit}. */
export interface AdamWOptions {
  /** Learning rate (default 1e-3); may be changed between steps through `lr`. */
  lr?: number;
  /** beta1 and beta2 (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to the denominator (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (default 0.01, as torch.optim.AdamW). */
  weightDecay?: number;
  /** Clip gradients to this global L2 norm before the update (default: no clipping). */
  maxGradNorm?: number;
  /** Keep an f32 master copy of bf16 parameters (default true: mixed precision). false: update bf16 directly. */
  masterWeights?: boolean;
}

/** What one step did. */
export interface StepResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** The factor the gradients were scaled by (1 when not clipped). */
  clipScale: number;
}

/**
 * One tensor of an optimizer's state as a resumable checkpoint stores it (m, v, master copies, 8-bit
 * codes and block absmax): `read` copies its bytes from wherever it lives (device memory, or the host pool
 * for an evicted page) without moving anything; `write` puts bytes back in the same place.
 */
export interface StateTensor {
  /** Unique within the optimizer: `NNNN.param.m`, `.v`, `.master`, `.m_codes`, `.m_absmax`, ... */
  name: string;
  /** Element type, as safetensors names it. */
  dtype: "F32" | "U8";
  /** Shape. */
  shape: number[];
  /** The bytes, copied to the host. */
  read(): Uint8Array;
  /** Overwrites the state with bytes of the same length. */
  write(bytes: Uint8Array): void;
}

function checkLength(name: string, bytes: Uint8Array, expected: number): void {
  if (bytes.byteLength !== expected) {
    throw new InvalidArgumentError(
      `Cannot restore optimizer state ${name}: expected ${expected} bytes, got ${bytes.byteLength}`,
    );
  }
}

/** A state tensor held whole in one device tensor. */
function tensorState(name: string, t: Tensor): StateTensor {
  const dtype = t.dtype === "u8" ? "U8" : "F32";
  return {
    name,
    dtype,
    shape: [...t.shape],
    read() {
      const a = t.toArray();
      return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    },
    write(bytes) {
      checkLength(name, bytes, t.byteLength);
      const values = hostArray(t.dtype, t.numel);
      new Uint8Array(values.buffer, values.byteOffset, values.byteLength).set(bytes);
      t.copyFrom(values);
    },
  };
}

/** `0003.lora_A`: parameter names repeat across blocks, so their position makes them unique. */
function stateKey(i: number, p: Trainable): string {
  return `${i.toString().padStart(4, "0")}.${p.name}`;
}

interface Hyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number | undefined;
  masterWeights: boolean;
}

function hyper(options: AdamWOptions): Hyper {
  const h = {
    lr: options.lr ?? 1e-3,
    beta1: options.betas?.[0] ?? 0.9,
    beta2: options.betas?.[1] ?? 0.999,
    eps: options.eps ?? 1e-8,
    weightDecay: options.weightDecay ?? 0.01,
    maxGradNorm: options.maxGradNorm,
    masterWeights: options.masterWeights ?? true,
  };
  const bad = (what: string) => new InvalidArgumentError(`Cannot create an optimizer: ${what}`);
  if (!(h.lr >= 0) || !Number.isFinite(h.lr)) throw bad(`lr ${h.lr} must be finite and >= 0`);
  if (!(h.beta1 >= 0 && h.beta1 < 1) || !(h.beta2 >= 0 && h.beta2 < 1)) throw bad("betas must be in [0, 1)");
  if (!(h.eps > 0) || !Number.isFinite(h.eps)) throw bad(`eps ${h.eps} must be finite and > 0`);
  if (!(h.weightDecay >= 0) || !Number.isFinite(h.weightDecay)) {
    throw bad("weightDecay must be finite and >= 0");
  }
  if (h.maxGradNorm !== undefined && !(h.maxGradNorm > 0)) throw bad("maxGradNorm must be > 0");
  return h;
}

function checkTrainables(params: Trainable[]): Device {
  if (params.length === 0) throw new InvalidArgumentError("Cannot create an optimizer: no parameters");
  const device = params[0].value.device;
  for (const p of params) {
    if (p.value.dtype !== "f32" && p.value.dtype !== "bf16") {
      throw new InvalidArgumentError(
        `Cannot optimize ${p.name}: dtype must be f32 or bf16, got ${p.value.dtype}`,
      );
    }
    if (p.value.device !== device) {
      throw new InvalidArgumentError(`Cannot optimize ${p.name}: on another device`);
    }
  }
  return device;
}

function gradOf(p: Trainable): Tensor {
  const g = p.grad;
  if (!g) throw new InvalidArgumentError(`Cannot step: ${p.name} has no gradient (run backward first)`);
  if (g.numel !== p.value.numel || (g.dtype !== "f32" && g.dtype !== "bf16")) {
    throw new InvalidArgumentError(
      `Cannot step: the gradient of ${p.name} is ${g.dtype}[${g.numel}], expected f32 or bf16 [${p.value.numel}]`,
    );
  }
  return g;
}

/** Shared by both optimizers: hyperparameters, step count, clipping, master weights, zeroing. */
abstract class OptimizerBase implements Disposable {
  /** The tensors trained. */
  readonly params: readonly Trainable[];
  /** The device of the parameters. */
  readonly device: Device;
  /** Learning rate of the next step (a schedule may change it). */
  lr: number;
  /** Steps taken. */
  stepCount = 0;
  protected readonly h: Hyper;
  /** f32 master copies of bf16 parameters (null for f32 ones, or when masterWeights is false). */
  protected readonly masters: (Tensor | null)[];

  constructor(params: Trainable[], options: AdamWOptions) {
    this.device = checkTrainables(params);
    this.h = hyper(options);
    this.lr = this.h.lr;
    this.params = [...params];
    this.masters = [];
    try {
      for (const p of params) {
        this.masters.push(
          p.value.dtype === "bf16" && this.h.masterWeights
            ? p.value.cast("f32", { category: "optimizer_states" })
            : null,
        );
      }
    } catch (e) {
      for (const m of this.masters) m?.dispose();
      throw e;
    }
  }

  /** "bf16 parameters with f32 master weights and f32 Adam states: 12 bytes per parameter". */
  get policy(): string {
    const dtypes = [...new Set(this.params.map((p) => p.value.dtype))].join("/");
    const masters = this.masters.some((m) => m !== null);
    const perParam = 8 + (masters ? 4 : 0);
    return `${dtypes} parameters${
      masters ? " with f32 master weights" : ""
    } and f32 Adam states: ${perParam} bytes of optimizer state per ${masters ? "bf16 " : ""}parameter`;
  }

  /** Number of parameters trained. */
  get parameterCount(): number {
    return this.params.reduce((s, p) => s + p.value.numel, 0);
  }

  /** Sets every gradient to zero (memset on the device). */
  zeroGrad(): void {
    for (const p of this.params) {
      const g = p.grad;
      if (g) ffi.memset(this.device, g, 0, g.byteLength);
    }
  }

  /** Global L2 norm of the gradients and the clipping factor. */
  protected clip(): StepResult {
    let total = 0;
    for (const p of this.params) {
      const g = gradOf(p);
      total += ffi.sumSquares(this.device, g, g.dtype, g.numel);
    }
    const gradNorm = Math.sqrt(total);
    const max = this.h.maxGradNorm;
    const clipScale = max !== undefined && gradNorm > max ? max / (gradNorm + 1e-6) : 1;
    return { gradNorm, clipScale };
  }

  /** The hyperparameters of the step being taken, as the fused native steps take them. */
  protected hyper(clipScale: number): ffi.AdamwHyper {
    const t = this.stepCount;
    return {
      lr: this.lr,
      beta1: this.h.beta1,
      beta2: this.h.beta2,
      eps: this.h.eps,
      weightDecay: this.h.weightDecay,
      biasCorrection1: 1 - Math.pow(this.h.beta1, t),
      biasCorrection2: 1 - Math.pow(this.h.beta2, t),
      gradScale: clipScale,
    };
  }

  /** Runs one fused native AdamW step over the segments. */
  protected fused(segments: ffi.AdamwSegment[], clipScale: number): void {
    ffi.adamwStep(this.device, segments, this.hyper(clipScale));
  }

  /**
   * Every tensor of the state, for a checkpoint: with {@linkcode OptimizerBase.stepCount} (bias
   * correction) and the learning rate, what a resumed run needs to continue bit for bit.
   */
  abstract stateTensors(): StateTensor[];

  /** The master copies' state tensors (f32, one per bf16 parameter). */
  protected masterStates(): StateTensor[] {
    return this.masters.flatMap((m, i) => m ? [tensorState(`${stateKey(i, this.params[i])}.master`, m)] : []);
  }

  /** Frees the states. */
  abstract dispose(): void;

  /** Same as dispose(). */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * AdamW with decoupled weight decay (as torch.optim.AdamW), f32 states, optional clipping by global norm,
 * one fused native call per step.
 *
 * @example
 * ```ts
 * import { AdamW, Linear, Tensor } from "../mod.ts";
 * import { assert } from "@std/assert";
 * using layer = new Linear(16, 8);
 * using opt = new AdamW(layer.trainables(), { lr: 1e-2 });
 * using x = Tensor.randn([4, 16]);
 * using y = layer.forward(x);
 * layer.backward(y).dispose();
 * opt.step();
 * assert(opt.stepCount === 1);
 * ```
 */
export class AdamW extends OptimizerBase {
  readonly #m: Tensor[] = [];
  readonly #v: Tensor[] = [];

  /** Allocates m and v (zeros, f32, category optimizer_states) and master copies of bf16 parameters. */
  constructor(params: Trainable[], options: AdamWOptions = {}) {
    super(params, options);
    try {
      for (const p of this.params) {
        this.#m.push(Tensor.zeros(p.value.shape, { category: "optimizer_states", device: this.device }));
        this.#v.push(Tensor.zeros(p.value.shape, { category: "optimizer_states", device: this.device }));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** One update of every parameter from its gradient. */
  step(): StepResult {
    const result = this.clip();
    this.stepCount++;
    const segments = this.params.map((p, i): ffi.AdamwSegment => {
      const g = gradOf(p);
      return {
        param: p.value,
        grad: g,
        m: this.#m[i],
        v: this.#v[i],
        master: this.masters[i],
        n: p.value.numel,
        paramDtype: p.value.dtype,
        gradDtype: g.dtype,
      };
    });
    this.fused(segments, result.clipScale);
    return result;
  }

  /** m and v of every parameter (f32), then the master copies. */
  stateTensors(): StateTensor[] {
    return [
      ...this.params.flatMap((p, i) => [
        tensorState(`${stateKey(i, p)}.m`, this.#m[i]),
        tensorState(`${stateKey(i, p)}.v`, this.#v[i]),
      ]),
      ...this.masterStates(),
    ];
  }

  /** Frees m, v and master copies. */
  dispose(): void {
    for (const t of [...this.#m, ...this.#v]) t.dispose();
    for (const m of this.masters) m?.dispose();
  }
}

/** Values per block of the 8-bit states (`QLORA_ADAMW8_BLOCK`): one f32 absmax per block and state. */
export const ADAMW8_BLOCK: number = BLOCK8;

/**
 * AdamW with 8-bit states, as bitsandbytes' blockwise 8-bit Adam: m and v are stored as 8-bit codes of a
 * dynamic map (signed for m, unsigned for v) with one f32 absmax per block of 256 values, 2.03 bytes per
 * parameter instead of 8. Each step decodes a block, updates it in f32 exactly as {@linkcode AdamW} does,
 * and encodes it again with the block's new absmax. Master weights and clipping as in AdamW.
 *
 * @example
 * ```ts
 * import { AdamW8bit, getDevice, Linear, Tensor } from "../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const device = getDevice();
 * using layer = new Linear(64, 32);
 * const before = device.memory().current.optimizer_states;
 * using opt = new AdamW8bit(layer.trainables(), { lr: 1e-2 });
 * // 2048 weights: two 1-byte codes each, and two f32 absmax per block of 256
 * assertEquals(device.memory().current.optimizer_states - before, 2 * 2048 + 2 * 4 * 8);
 * using x = Tensor.randn([4, 64]);
 * using y = layer.forward(x);
 * layer.backward(y).dispose();
 * const w0 = layer.weight.toFloat32();
 * opt.step();
 * assert(layer.weight.toFloat32().some((w, i) => w !== w0[i]));
 * ```
 */
export class AdamW8bit extends OptimizerBase {
  readonly #mCodes: Tensor[] = [];
  readonly #vCodes: Tensor[] = [];
  readonly #mAbsmax: Tensor[] = [];
  readonly #vAbsmax: Tensor[] = [];

  /** Allocates the codes (u8) and block absmax (f32) of m and v, zero (category optimizer_states). */
  constructor(params: Trainable[], options: AdamWOptions = {}) {
    super(params, options);
    try {
      for (const p of this.params) {
        const n = p.value.numel, blocks = Math.ceil(n / ADAMW8_BLOCK);
        const o = { category: "optimizer_states" as const, device: this.device };
        this.#mCodes.push(Tensor.zeros([n], { ...o, dtype: "u8" }));
        this.#vCodes.push(Tensor.zeros([n], { ...o, dtype: "u8" }));
        this.#mAbsmax.push(Tensor.zeros([blocks], o));
        this.#vAbsmax.push(Tensor.zeros([blocks], o));
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** "bf16 parameters with f32 master weights and 8-bit Adam states: 6.03 bytes ...". */
  override get policy(): string {
    const dtypes = [...new Set(this.params.map((p) => p.value.dtype))].join("/");
    const masters = this.masters.some((m) => m !== null);
    const perParam = 2 + 8 / ADAMW8_BLOCK + (masters ? 4 : 0);
    return `${dtypes} parameters${masters ? " with f32 master weights" : ""} and 8-bit Adam states ` +
      `(blocks of ${ADAMW8_BLOCK}): ${perParam.toFixed(2)} bytes of optimizer state per ${
        masters ? "bf16 " : ""
      }parameter`;
  }

  /** One update of every parameter from its gradient (one fused native call). */
  step(): StepResult {
    const result = this.clip();
    this.stepCount++;
    const segments = this.params.map((p, i): ffi.Adamw8Segment => {
      const g = gradOf(p);
      return {
        param: p.value,
        grad: g,
        mCodes: this.#mCodes[i],
        vCodes: this.#vCodes[i],
        mAbsmax: this.#mAbsmax[i],
        vAbsmax: this.#vAbsmax[i],
        master: this.masters[i],
        n: p.value.numel,
        paramDtype: p.value.dtype,
        gradDtype: g.dtype,
      };
    });
    ffi.adamw8Step(this.device, segments, this.hyper(result.clipScale));
    return result;
  }

  /** The codes (u8) and block absmax (f32) of m and v for every parameter, then the master copies. */
  stateTensors(): StateTensor[] {
    return [
      ...this.params.flatMap((p, i) => [
        tensorState(`${stateKey(i, p)}.m_codes`, this.#mCodes[i]),
        tensorState(`${stateKey(i, p)}.m_absmax`, this.#mAbsmax[i]),
        tensorState(`${stateKey(i, p)}.v_codes`, this.#vCodes[i]),
        tensorState(`${stateKey(i, p)}.v_absmax`, this.#vAbsmax[i]),
      ]),
      ...this.masterStates(),
    ];
  }

  /** Frees the codes, the block absmax and master copies. */
  dispose(): void {
    for (const t of [...this.#mCodes, ...this.#vCodes, ...this.#mAbsmax, ...this.#vAbsmax]) t.dispose();
    for (const m of this.masters) m?.dispose();
  }
}

/** Statistics of a {@linkcode PagedAdamW}. */
export interface PagingStats {
  /** State pages in all. */
  pages: number;
  /** Pages in device memory now. */
  resident: number;
  /** Pages in the host pool now. */
  evicted: number;
  /** Pages brought back to the device. */
  pageIns: number;
  /** Pages moved to the host. */
  pageOuts: number;
  /** Bytes copied host -> device. */
  bytesIn: number;
  /** Bytes copied device -> host. */
  bytesOut: number;
  /** Milliseconds spent paging in. */
  msIn: number;
  /** Milliseconds spent paging out. */
  msOut: number;
}

/** One page of optimizer state: device memory while resident, a host buffer once evicted. */
interface Page {
  bytes: number;
  device: ffi.DeviceBuffer | null;
  host: ffi.DeviceBuffer | null;
  lastUsed: number;
  pinned: boolean;
}

/** A piece of a parameter whose m and v each lie in one page. */
interface Segment {
  param: number;
  offset: number;
  n: number;
  m: Page;
  v: Page;
}

/**
 * AdamW whose states live in pages that move to host RAM when a device allocation needs the room, and
 * come back before the update that needs them. The update is the same arithmetic as {@linkcode AdamW}:
 * results are identical.
 *
 * @example
 * ```ts
 * import { Linear, PagedAdamW, Tensor } from "../mod.ts";
 * import { assert } from "@std/assert";
 * using layer = new Linear(64, 64);
 * using opt = new PagedAdamW(layer.trainables(), { pageSize: 4096 });
 * using x = Tensor.randn([2, 64]);
 * using y = layer.forward(x);
 * layer.backward(y).dispose();
 * opt.step();
 * assert(opt.stats().pages === 8);
 * ```
 */
export class PagedAdamW extends OptimizerBase {
  /** Bytes per page. */
  readonly pageSize: number;
  readonly #segments: Segment[] = [];
  readonly #pages: Page[] = [];
  #clock = 0;
  #removeHandler: () => void;
  #stats = { pageIns: 0, pageOuts: 0, bytesIn: 0, bytesOut: 0, msIn: 0, msOut: 0 };
  #disposed = false;

  /** Allocates the state pages (zeros) and master copies; registers for memory pressure on the device. */
  constructor(params: Trainable[], options: AdamWOptions & { pageSize?: number } = {}) {
    super(params, options);
    const pageSize = options.pageSize ?? 2 << 20;
    if (!Number.isSafeInteger(pageSize) || pageSize < 256 || pageSize % 256 !== 0) {
      throw new InvalidArgumentError(
        `Cannot create a paged optimizer: pageSize ${pageSize} must be a multiple of 256`,
      );
    }
    this.pageSize = pageSize;
    this.#removeHandler = this.device.onMemoryPressure((needed) => this.#evict(needed));
    try {
      const perPage = pageSize / 4;
      this.params.forEach((p, i) => {
        for (let offset = 0; offset < p.value.numel; offset += perPage) {
          const n = Math.min(perPage, p.value.numel - offset);
          this.#segments.push({ param: i, offset, n, m: this.#newPage(n * 4), v: this.#newPage(n * 4) });
        }
      });
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** A zeroed page: on the device if it fits, else straight into the host pool. */
  #newPage(bytes: number): Page {
    const page: Page = { bytes, device: null, host: null, lastUsed: 0, pinned: true };
    this.#pages.push(page);
    try {
      page.device = { ptr: this.device.allocate(bytes, "optimizer_states") };
      ffi.memset(this.device, page.device, 0, bytes);
    } catch {
      page.host = ffi.hostMalloc(this.device, bytes); // zero-filled
    }
    page.pinned = false;
    return page;
  }

  /** Moves least recently used, unpinned resident pages to the host until `needed` bytes are freed. */
  #evict(needed: number): number {
    if (this.#disposed) return 0;
    const candidates = this.#pages.filter((p) => p.device && !p.pinned).sort((a, b) =>
      a.lastUsed - b.lastUsed
    );
    let freed = 0;
    const t0 = performance.now();
    for (const page of candidates) {
      if (freed >= needed) break;
      page.host ??= ffi.hostMalloc(this.device, page.bytes);
      ffi.memcpy(this.device, page.host, page.device!, page.bytes, "device_to_host");
      this.device.free(page.device!.ptr);
      page.device = null;
      freed += page.bytes;
      this.#stats.pageOuts++;
      this.#stats.bytesOut += page.bytes;
    }
    this.#stats.msOut += performance.now() - t0;
    return freed;
  }

  /** Brings a page back to the device (evicting others if needed); false when it cannot fit now. */
  #pageIn(page: Page): boolean {
    page.lastUsed = ++this.#clock;
    if (page.device) {
      page.pinned = true;
      return true;
    }
    page.pinned = true; // our own pressure handler must not pick it while we make room for it
    let buffer: ffi.DeviceBuffer;
    const t0 = performance.now();
    try {
      buffer = { ptr: this.device.allocate(page.bytes, "optimizer_states") };
    } catch {
      page.pinned = false;
      return false;
    }
    ffi.memcpy(this.device, buffer, page.host!, page.bytes, "host_to_device");
    page.device = buffer;
    this.#stats.pageIns++;
    this.#stats.bytesIn += page.bytes;
    this.#stats.msIn += performance.now() - t0;
    return true;
  }

  /**
   * One update of every parameter. Pages come back to the device first; if they cannot all fit at once,
   * the update runs in as few fused calls as the budget allows.
   */
  step(): StepResult {
    const result = this.clip();
    this.stepCount++;
    let batch: Segment[] = [];
    const flush = () => {
      if (batch.length === 0) return;
      this.fused(batch.map((seg) => this.#describe(seg)), result.clipScale);
      for (const seg of batch) seg.m.pinned = seg.v.pinned = false;
      batch = [];
    };
    for (const seg of this.#segments) {
      if (!(this.#pageIn(seg.m) && this.#pageIn(seg.v))) {
        seg.m.pinned = seg.v.pinned = false;
        flush(); // frees the pins of the batch so far: its pages become evictable
        if (!(this.#pageIn(seg.m) && this.#pageIn(seg.v))) {
          seg.m.pinned = seg.v.pinned = false;
          const snap = this.device.memory();
          throw new OutOfMemoryError(
            `Cannot step: even one state page pair (${
              2 * seg.m.bytes
            } bytes) does not fit the device budget ` +
              `(budget ${snap.budget} bytes, ${snap.totalCurrent} in use)`,
            {
              requested: 2 * seg.m.bytes,
              category: "optimizer_states",
              budget: snap.budget,
              current: { ...snap.current },
              totalCurrent: snap.totalCurrent,
            },
          );
        }
      }
      batch.push(seg);
    }
    flush();
    return result;
  }

  #describe(seg: Segment): ffi.AdamwSegment {
    const p = this.params[seg.param];
    const g = gradOf(p);
    const master = this.masters[seg.param];
    const pe = p.value.byteLength / p.value.numel, ge = g.byteLength / g.numel;
    return {
      param: ffi.offset(p.value, seg.offset * pe),
      grad: ffi.offset(g, seg.offset * ge),
      m: seg.m.device!,
      v: seg.v.device!,
      master: master ? ffi.offset(master, seg.offset * 4) : null,
      n: seg.n,
      paramDtype: p.value.dtype,
      gradDtype: g.dtype,
    };
  }

  /** Pages, where they are, and what moving them cost so far. */
  stats(): PagingStats {
    const resident = this.#pages.filter((p) => p.device).length;
    return { pages: this.#pages.length, resident, evicted: this.#pages.length - resident, ...this.#stats };
  }

  /**
   * m and v of every parameter (f32, whole), gathered from their pages wherever each page is (device or
   * host pool) and written back to the same places: saving a checkpoint moves no page.
   */
  stateTensors(): StateTensor[] {
    const state = (i: number, which: "m" | "v"): StateTensor => {
      const p = this.params[i], name = `${stateKey(i, p)}.${which}`;
      const segments = this.#segments.filter((seg) => seg.param === i);
      const hostView = (page: Page) => ffi.hostView(page.host!, page.bytes);
      return {
        name,
        dtype: "F32",
        shape: [...p.value.shape],
        read: () => {
          const out = new Uint8Array(p.value.numel * 4);
          for (const seg of segments) {
            const page = seg[which];
            if (page.device) {
              const chunk = new Uint8Array(page.bytes);
              ffi.memcpy(this.device, chunk, page.device, page.bytes, "device_to_host");
              out.set(chunk, seg.offset * 4);
            } else {
              out.set(hostView(page), seg.offset * 4); // evicted: its bytes are in the host pool
            }
          }
          return out;
        },
        write: (bytes) => {
          checkLength(name, bytes, p.value.numel * 4);
          for (const seg of segments) {
            const page = seg[which];
            const chunk = bytes.slice(seg.offset * 4, seg.offset * 4 + page.bytes);
            if (page.device) {
              ffi.memcpy(this.device, page.device, chunk, page.bytes, "host_to_device");
            } else {
              hostView(page).set(chunk);
            }
          }
        },
      };
    };
    return [...this.params.flatMap((_, i) => [state(i, "m"), state(i, "v")]), ...this.masterStates()];
  }

  /** Moves every unpinned page to the host now (for demonstrations and tests); returns bytes moved. */
  evictAll(): number {
    return this.#evict(Number.MAX_SAFE_INTEGER);
  }

  /** Frees pages (device and host) and master copies, and stops listening for memory pressure. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#removeHandler?.();
    for (const page of this.#pages) {
      if (page.device) this.device.free(page.device.ptr);
      if (page.host) ffi.hostFree(this.device, page.host);
      page.device = page.host = null;
    }
    for (const m of this.masters) m?.dispose();
  }
}
