/**
 * The memory ledger: every byte of device memory, by category, current and peak. The figures come
 * from the native library, which counts each allocation it makes: they are the real bytes allocated.
 *
 * @module
 */

import { InvalidArgumentError } from "../base/mod.ts";
import { CATEGORY, enumNames, LEDGER_SNAPSHOT } from "../native/mod.ts";

/**
 * The key under which Deno's Jupyter kernel looks for a rich display method: an object with a
 * `[JUPYTER_DISPLAY]()` method returning a MIME bundle renders as that bundle when it is a cell's value.
 *
 * @example
 * ```ts
 * import { JUPYTER_DISPLAY } from "./memory.ts";
 * import { assert } from "@std/assert";
 * const card = { [JUPYTER_DISPLAY]: () => ({ "text/plain": "hello" }) };
 * assert(card[JUPYTER_DISPLAY]()["text/plain"] === "hello");
 * ```
 */
export const JUPYTER_DISPLAY: unique symbol = Symbol.for("Jupyter.display") as typeof JUPYTER_DISPLAY;

/**
 * What an allocation is for; the ledger keeps current and peak bytes per category: `"weights"`,
 * `"quantized_weights"`, `"quant_constants"`, `"adapters"`, `"gradients"`, `"optimizer_states"`,
 * `"activations"`, `"workspace"` or `"kv_cache"` (`qlora_category`).
 */
export type Category =
  | "weights"
  | "quantized_weights"
  | "quant_constants"
  | "adapters"
  | "gradients"
  | "optimizer_states"
  | "activations"
  | "workspace"
  | "kv_cache";

/** Compile-time proof that {@linkcode Category} is the header's `enum qlora_category`, no more and no less. */
const _categoryIsTheAbis: [Category] extends [Lowercase<keyof typeof CATEGORY>]
  ? ([Lowercase<keyof typeof CATEGORY>] extends [Category] ? true : never)
  : never = true;

/** Every category, in native code order (`qlora_category`). */
export const CATEGORIES: readonly Category[] = enumNames(CATEGORY);

/** Index of a field of `qlora_ledger_snapshot` in the snapshot read as an array of 64-bit words. */
function word(field: keyof typeof LEDGER_SNAPSHOT.offsets): number {
  return LEDGER_SNAPSHOT.offsets[field] / 8;
}

/**
 * The native code of a category; throws on an unknown name.
 *
 * @example
 * ```ts
 * import { categoryCode } from "./memory.ts";
 * import { assert } from "@std/assert";
 * assert(categoryCode("gradients") === 4);
 * ```
 */
export function categoryCode(category: Category): number {
  const code = CATEGORIES.indexOf(category);
  if (code < 0) {
    throw new InvalidArgumentError(
      `Cannot use category ${JSON.stringify(category)}: expected one of ${CATEGORIES.join(", ")}`,
    );
  }
  return code;
}

/**
 * Formats a byte count with binary units ("1.50 GiB").
 *
 * @example
 * ```ts
 * import { formatBytes } from "./memory.ts";
 * import { assert } from "@std/assert";
 * assert(formatBytes(1536 * 1024 * 1024) === "1.50 GiB");
 * ```
 */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} B` : `${v.toFixed(2)} ${units[u]}`;
}

/**
 * Parses "6GiB", "512 MiB", "6GB", "1e9" or a plain number of bytes.
 *
 * @example
 * ```ts
 * import { parseBytes } from "./memory.ts";
 * import { assert } from "@std/assert";
 * assert(parseBytes("6GiB") === 6 * 2 ** 30);
 * assert(parseBytes("6GB") === 6e9);
 * ```
 */
export function parseBytes(text: string | number): number {
  if (typeof text === "number") return text;
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]i?B|B)?\s*$/i.exec(text);
  if (!m) {
    throw new InvalidArgumentError(`Cannot parse a byte size: ${JSON.stringify(text)} (try 6GiB or 512MiB)`);
  }
  const value = Number(m[1]);
  const unit = (m[2] ?? "B").toUpperCase();
  const powers: Record<string, number> = {
    B: 1,
    KB: 1e3,
    MB: 1e6,
    GB: 1e9,
    TB: 1e12,
    KIB: 2 ** 10,
    MIB: 2 ** 20,
    GIB: 2 ** 30,
    TIB: 2 ** 40,
  };
  return Math.round(value * powers[unit]);
}

/**
 * A snapshot of the ledger of one device.
 *
 * @example
 * ```ts
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assert, assertEquals } from "@std/assert";
 * const device = getDevice("cpu");
 * const before = device.memory();
 * using t = Tensor.zeros([256], { category: "gradients", device });
 * const after = device.memory();
 * assertEquals(after.current.gradients - before.current.gradients, t.byteLength); // 1024 bytes
 * assert(after.toString().includes("gradients"));
 * ```
 */
export class LedgerSnapshot {
  /** Backend the figures belong to. */
  readonly backend: string;
  /** Bytes live now, per category. */
  readonly current: Readonly<Record<Category, number>>;
  /** Highest bytes per category since the last peak reset. */
  readonly peak: Readonly<Record<Category, number>>;
  /** Sum of `current`. */
  readonly totalCurrent: number;
  /** Highest total since the last peak reset (not the sum of the per-category peaks). */
  readonly totalPeak: number;
  /** Memory budget in bytes, 0 = unlimited. */
  readonly budget: number;
  /** Allocations not yet freed. */
  readonly liveAllocations: number;
  /** CUDA: the driver's free bytes; CPU: 0 (not measured). */
  readonly deviceFree: number;
  /** CUDA: the driver's total bytes; CPU: physical RAM. */
  readonly deviceTotal: number;
  /** Host pool (paged-out data): bytes live now. Not part of the device total or the budget. */
  readonly hostCurrent: number;
  /** Host pool: highest bytes since the last peak reset. */
  readonly hostPeak: number;
  /**
   * The process's own view of the memory it holds: CPU, the native heap in use (glibc `mallinfo2`,
   * which sees every allocation of the process, not only the ledger's); CUDA, the driver's used bytes.
   */
  readonly processUsed: number;

  /**
   * Builds a snapshot from the native `qlora_ledger_snapshot` words.
   *
   * @example
   * ```ts
   * import { LedgerSnapshot } from "./memory.ts";
   * import { assert } from "@std/assert";
   * const s = LedgerSnapshot.fromWords("cpu", new BigUint64Array(28));
   * assert(s.totalCurrent === 0);
   * ```
   */
  static fromWords(backend: string, w: BigUint64Array): LedgerSnapshot {
    const current = {} as Record<Category, number>;
    const peak = {} as Record<Category, number>;
    CATEGORIES.forEach((c, i) => {
      current[c] = Number(w[word("current") + i]);
      peak[c] = Number(w[word("peak") + i]);
    });
    return new LedgerSnapshot(backend, current, peak, {
      totalCurrent: Number(w[word("total_current")]),
      totalPeak: Number(w[word("total_peak")]),
      budget: Number(w[word("budget")]),
      liveAllocations: Number(w[word("live_allocations")]),
      deviceFree: Number(w[word("device_free")]),
      deviceTotal: Number(w[word("device_total")]),
      hostCurrent: Number(w[word("host_current")]),
      hostPeak: Number(w[word("host_peak")]),
      processUsed: Number(w[word("process_used")]),
    });
  }

  /** Creates a snapshot from its figures. */
  constructor(
    backend: string,
    current: Record<Category, number>,
    peak: Record<Category, number>,
    totals: {
      totalCurrent: number;
      totalPeak: number;
      budget: number;
      liveAllocations: number;
      deviceFree: number;
      deviceTotal: number;
      hostCurrent?: number;
      hostPeak?: number;
      processUsed?: number;
    },
  ) {
    this.backend = backend;
    this.current = current;
    this.peak = peak;
    this.totalCurrent = totals.totalCurrent;
    this.totalPeak = totals.totalPeak;
    this.budget = totals.budget;
    this.liveAllocations = totals.liveAllocations;
    this.deviceFree = totals.deviceFree;
    this.deviceTotal = totals.deviceTotal;
    this.hostCurrent = totals.hostCurrent ?? 0;
    this.hostPeak = totals.hostPeak ?? 0;
    this.processUsed = totals.processUsed ?? 0;
  }

  /** One line per non-empty category, then the totals. */
  toString(): string {
    const rows = CATEGORIES.filter((c) => this.current[c] || this.peak[c]).map((c) =>
      `${c.padEnd(18)} ${formatBytes(this.current[c]).padStart(11)}  peak ${
        formatBytes(this.peak[c]).padStart(11)
      }`
    );
    rows.push(
      `${"total".padEnd(18)} ${formatBytes(this.totalCurrent).padStart(11)}  peak ${
        formatBytes(this.totalPeak).padStart(11)
      }` + (this.budget ? `  budget ${formatBytes(this.budget)}` : ""),
    );
    if (this.hostCurrent || this.hostPeak) {
      rows.push(
        `${"host pool".padEnd(18)} ${formatBytes(this.hostCurrent).padStart(11)}  peak ${
          formatBytes(this.hostPeak).padStart(11)
        }`,
      );
    }
    if (this.processUsed) {
      const what = this.backend === "cpu" ? "native heap (mallinfo2)" : "driver's used memory";
      rows.push(
        `${"process".padEnd(18)} ${formatBytes(this.processUsed).padStart(11)}  ${what}, beside the ledger`,
      );
    }
    return rows.join("\n");
  }

  /** Rendering in a Jupyter notebook (Deno kernel): an HTML table and plain text. */
  [JUPYTER_DISPLAY](): Record<string, string> {
    const cell = (s: string) => `<td style="text-align:right">${s}</td>`;
    const rows = CATEGORIES.map((c) =>
      `<tr><td>${c}</td>${cell(formatBytes(this.current[c]))}${cell(formatBytes(this.peak[c]))}</tr>`
    ).join("");
    const html =
      `<table><thead><tr><th>${this.backend} ledger</th><th>current</th><th>peak</th></tr></thead>` +
      `<tbody>${rows}<tr><th>total</th>${cell(formatBytes(this.totalCurrent))}${
        cell(formatBytes(this.totalPeak))
      }</tr>${
        this.processUsed
          ? `<tr><td>process (${this.backend === "cpu" ? "native heap" : "driver used"})</td>${
            cell(formatBytes(this.processUsed))
          }<td></td></tr>`
          : ""
      }</tbody></table>`;
    return { "text/plain": this.toString(), "text/html": html };
  }
}

/**
 * How much of the memory the process took over a step the ledger accounts for: the growth of the
 * ledger's total between two snapshots over the growth of the process's own measure
 * ({@linkcode LedgerSnapshot.processUsed}: the native heap on the CPU, the driver's used bytes on
 * CUDA) over the same step, as a fraction (1 = every byte counted; below 1, memory the ledger never
 * saw). 1 when the process did not grow. Both snapshots must come from one device.
 *
 * @example
 * ```ts
 * import { getDevice, ledgerCoverage, Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const device = getDevice("cpu");
 * const before = device.memory();
 * using t = Tensor.zeros([1 << 20], { category: "activations", device }); // 4 MiB
 * const after = device.memory();
 * assert(ledgerCoverage(before, after) > 0.9);
 * ```
 */
export function ledgerCoverage(before: LedgerSnapshot, after: LedgerSnapshot): number {
  if (before.backend !== after.backend) {
    throw new InvalidArgumentError(
      `Cannot compare ledger snapshots of two backends (${before.backend}, ${after.backend})`,
    );
  }
  const process = after.processUsed - before.processUsed;
  const ledger = after.totalCurrent - before.totalCurrent;
  return process <= 0 ? 1 : ledger / process;
}
