/**
 * A device is one opened backend of the native library (CPU or CUDA) with its memory ledger and
 * budget. Tensors live on a device; every byte they hold is counted by its ledger.
 *
 * @module
 */

import { InvalidArgumentError, OutOfMemoryError } from "../base/mod.ts";
import { type Backend, lastError, loadLibrary, type NativeLibrary, openLibrary } from "../native/mod.ts";
import * as ffi from "../native/mod.ts";
import { type Category, categoryCode, formatBytes, LedgerSnapshot, parseBytes } from "./memory.ts";

/** Frees device memory on request (see {@linkcode Device.onMemoryPressure}); returns the bytes freed. */
export type PressureHandler = (bytesNeeded: number) => number;

/**
 * A backend of the native library with its ledger.
 *
 * @example
 * ```ts
 * import { getDevice, OutOfMemoryError, Tensor } from "../../mod.ts";
 * import { assert, assertThrows } from "@std/assert";
 * const device = getDevice("cpu");
 * assert(device.backend === "cpu" && device.toString().startsWith("cpu: "));
 * device.setMemoryBudget(device.memory().totalCurrent + 1024);
 * try {
 *   assertThrows(() => Tensor.empty([1024], { device }), OutOfMemoryError); // 4 KiB > 1 KiB left
 * } finally {
 *   device.setMemoryBudget(0);
 * }
 * ```
 */
export class Device {
  /**
   * The opened native library (read by the wrappers of lib/native only; not a user API).
   *
   * @internal
   */
  readonly native: NativeLibrary;
  /** "cpu", "cuda" or "cuda-emu" (the CUDA kernels on the CPU emulator). */
  readonly backend: Backend;
  /** Description of the hardware, e.g. "CPU (2 OpenMP threads, 23.44 GiB RAM)". */
  readonly name: string;

  /** Wraps an opened library; use {@linkcode getDevice} instead. */
  constructor(native: NativeLibrary) {
    this.native = native;
    this.backend = native.backend;
    this.name = ffi.deviceName(this);
  }

  /**
   * The ledger now: bytes per category, current and peak, budget, driver figures.
   *
   * @example
   * ```ts
   * import { getDevice } from "./device.ts";
   * import { assert } from "@std/assert";
   * const snap = getDevice("cpu").memory();
   * assert(snap.totalCurrent >= 0);
   * ```
   */
  memory(): LedgerSnapshot {
    return LedgerSnapshot.fromWords(this.backend, ffi.memoryStats(this));
  }

  /**
   * Sets every peak to the current value.
   *
   * @example
   * ```ts
   * import { getDevice } from "./device.ts";
   * import { assert } from "@std/assert";
   * const dev = getDevice("cpu");
   * dev.resetPeak();
   * assert(dev.memory().totalPeak === dev.memory().totalCurrent);
   * ```
   */
  resetPeak(): void {
    ffi.resetPeak(this);
  }

  /**
   * Limits total device memory to `bytes` (a number, or text such as "6GiB"); 0 removes the limit.
   * An allocation past it throws {@linkcode OutOfMemoryError}; live allocations are never revoked.
   *
   * @example
   * ```ts
   * import { getDevice } from "./device.ts";
   * import { assert } from "@std/assert";
   * const dev = getDevice("cpu");
   * dev.setMemoryBudget("6GiB");
   * assert(dev.memory().budget === 6 * 2 ** 30);
   * dev.setMemoryBudget(0);
   * ```
   */
  setMemoryBudget(bytes: number | string): void {
    const b = parseBytes(bytes);
    if (!Number.isSafeInteger(b) || b < 0) {
      throw new InvalidArgumentError(`Cannot set the memory budget: ${bytes} is not a byte count >= 0`);
    }
    ffi.setMemoryBudget(this, b);
  }

  /** Waits for all queued native work. */
  synchronize(): void {
    ffi.synchronize(this);
  }

  #pressureHandlers: PressureHandler[] = [];

  /**
   * Registers a handler called when an allocation would fail for lack of memory: it frees what it can
   * (a paged optimizer moves state pages to host RAM) and returns the bytes it freed; the allocation is
   * then tried again. Returns a function that removes the handler.
   *
   * @example
   * ```ts
   * import { getDevice } from "./device.ts";
   * const remove = getDevice("cpu").onMemoryPressure(() => 0);
   * remove();
   * ```
   */
  onMemoryPressure(handler: PressureHandler): () => void {
    this.#pressureHandlers.push(handler);
    return () => {
      this.#pressureHandlers = this.#pressureHandlers.filter((h) => h !== handler);
    };
  }

  /**
   * Makes room for a request of `requested` bytes that failed for lack of memory: asks the handlers of
   * {@linkcode Device.onMemoryPressure}, in turn, for what is really missing (the request plus whatever
   * use already exceeds the budget, when a budget was lowered below current use) until they have freed
   * it. Returns the bytes the ledger really went down by (0: nothing freed, do not retry). Both
   * {@linkcode Device.allocate} and a refused native call (lib/native `call`: an output or a kernel's
   * scratch) retry while this frees something.
   *
   * @example
   * ```ts
   * import { getDevice, Tensor } from "../../mod.ts";
   * import { assertEquals } from "@std/assert";
   * const device = getDevice("cpu");
   * let held: Tensor | null = Tensor.zeros([256], { device }); // 1 KiB someone gives back under pressure
   * const remove = device.onMemoryPressure(() => {
   *   held?.dispose();
   *   held = null;
   *   return 1024;
   * });
   * assertEquals(device.relieve(64), 1024);
   * assertEquals(device.relieve(64), 0); // nothing left to give: the ledger did not go down
   * remove();
   * ```
   */
  relieve(requested: number): number {
    const before = this.memory();
    const missing = before.budget > 0
      ? Math.max(requested, before.totalCurrent + requested - before.budget)
      : requested;
    let claimed = 0;
    for (const handler of [...this.#pressureHandlers]) {
      if (claimed >= missing) break;
      claimed += Math.max(0, handler(missing - claimed));
    }
    return Math.max(0, before.totalCurrent - this.memory().totalCurrent);
  }

  /**
   * Allocates device memory under a category (for lib/ modules; users make tensors instead). Under
   * memory pressure, the handlers of {@linkcode Device.onMemoryPressure} may free memory first; then
   * failure throws {@linkcode OutOfMemoryError} with the request, the budget and the ledger.
   */
  allocate(bytes: number, category: Category): Deno.PointerObject {
    categoryCode(category);
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new InvalidArgumentError(`Cannot allocate: ${bytes} is not a positive byte count`);
    }
    let result = ffi.malloc(this, bytes, category); // undefined: out of memory
    while (result === undefined && this.relieve(bytes) > 0) result = ffi.malloc(this, bytes, category);
    if (result === undefined) {
      const message = lastError(this.native);
      const snap = this.memory();
      throw new OutOfMemoryError(message, {
        requested: bytes,
        category,
        budget: snap.budget,
        current: { ...snap.current },
        totalCurrent: snap.totalCurrent,
      });
    }
    const ptr = result;
    if (ptr === null) {
      throw new OutOfMemoryError(`Cannot allocate ${formatBytes(bytes)}: null pointer`, {
        requested: bytes,
        category,
        budget: 0,
        current: {},
        totalCurrent: 0,
      });
    }
    return ptr;
  }

  /** Frees memory from {@linkcode Device.allocate}. */
  free(ptr: Deno.PointerObject): void {
    ffi.free(this, { ptr });
  }

  /** Throws the typed error of a native status (for lib/ modules). */
  check(status: number): void {
    ffi.check(this, status);
  }

  /** "cpu: CPU (2 OpenMP threads, ...)" */
  toString(): string {
    return `${this.backend}: ${this.name}`;
  }
}

const devices = new Map<string, Device>();

/**
 * The device of a backend, opened once and shared. Without an argument: `QLORA_BACKEND`
 * (cpu, cuda, cuda-emu, or auto = CUDA where usable, else CPU).
 *
 * @example
 * ```ts
 * import { getDevice } from "./device.ts";
 * import { assert } from "@std/assert";
 * const cpu = getDevice("cpu");
 * assert(cpu === getDevice("cpu"));
 * ```
 */
export function getDevice(backend?: Backend | "auto"): Device {
  const key = backend ?? "default";
  let dev = devices.get(key);
  if (!dev) {
    const lib = backend === undefined || backend === "auto" ? loadLibrary(backend) : openLibrary(backend);
    // One Device per library file, whatever name it was asked by.
    dev = devices.get(lib.backend);
    if (dev) lib.close();
    else {
      dev = new Device(lib);
      devices.set(lib.backend, dev);
    }
    devices.set(key, dev);
  }
  return dev;
}

/**
 * Whether a backend can be opened here (the library is built and, for CUDA, a GPU is usable).
 *
 * @example
 * ```ts
 * import { backendAvailable } from "./device.ts";
 * import { assert } from "@std/assert";
 * assert(backendAvailable("cpu"));
 * ```
 */
export function backendAvailable(backend: Backend): boolean {
  try {
    getDevice(backend);
    return true;
  } catch {
    return false;
  }
}

/**
 * Sets the memory budget of the default device (see {@linkcode Device.setMemoryBudget}).
 *
 * @example
 * ```ts
 * import { setMemoryBudget } from "./device.ts";
 * setMemoryBudget("6GiB");
 * setMemoryBudget(0);
 * ```
 */
export function setMemoryBudget(bytes: number | string, device: Device = getDevice()): void {
  device.setMemoryBudget(bytes);
}

/**
 * The ledger of the default device (see {@linkcode Device.memory}).
 *
 * @example
 * ```ts
 * import { memory } from "./device.ts";
 * import { assert } from "@std/assert";
 * assert(memory().liveAllocations >= 0);
 * ```
 */
export function memory(device: Device = getDevice()): LedgerSnapshot {
  return device.memory();
}
