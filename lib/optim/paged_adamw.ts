/**
 * A paged AdamW whose states move to host RAM under device-memory pressure.
 *
 * The states live in pages (2 MiB by default). While the budget has room they stay in device memory;
 * when another allocation needs the room (an activation spike), the least recently used pages are copied
 * to the host pool and their device memory freed; `step()` brings them back before the update that needs
 * them. Every page moved is counted ({@linkcode PagingStats}). The update is the arithmetic of
 * `adamw.ts`, so results are identical.
 *
 * @module
 */

import { InvalidArgumentError, OutOfMemoryError } from "../base/mod.ts";
import * as ffi from "../native/mod.ts";
import type { Trainable } from "../nn/mod.ts";
import { type AdamWOptions, OptimizerBase, type StateTensor, type StepResult } from "./optimizer.ts";

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
 * import { Linear, PagedAdamW, Tensor } from "../../mod.ts";
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
          throw this.#noRoom(seg);
        }
      }
      batch.push(seg);
    }
    flush();
    return result;
  }

  /** The error when even one segment's pages cannot come back to the device. */
  #noRoom(seg: Segment): OutOfMemoryError {
    const snap = this.device.memory();
    return new OutOfMemoryError(
      `Cannot step: even one state page pair (${2 * seg.m.bytes} bytes) does not fit the device budget ` +
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

  /** The fused step's view of one segment: its slice of the parameter, gradient and master copy. */
  #describe(seg: Segment): ffi.AdamwSegment {
    const p = this.params[seg.param];
    const g = this.gradOf(p);
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
    return [
      ...this.params.flatMap((_, i) => [this.#pagedState(i, "m"), this.#pagedState(i, "v")]),
      ...this.masterStates(),
    ];
  }

  /** m or v of parameter `i` as one state tensor over its pages. */
  #pagedState(i: number, which: "m" | "v"): StateTensor {
    const p = this.params[i], name = this.stateName(i, which);
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
        this.checkStateBytes(name, bytes, p.value.numel * 4);
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
