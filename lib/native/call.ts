/**
 * What every typed wrapper of `lib/native` shares: the handle it calls through, device buffers, status
 * checks, `u64` arguments, enum names turned into native codes, and pointer offsets. Nothing outside
 * `lib/native` builds a pointer, a `BigInt` argument or reads a status code.
 *
 * @module
 */

import { InvalidArgumentError, OutOfMemoryError } from "../base/mod.ts";
import { CATEGORY, type COPY_KIND, type DTYPE, LEDGER_SNAPSHOT, type QUANT_TYPE, STATUS } from "./abi.ts";
import { enumNames } from "./enums.ts";
import { lastError, nativeError } from "./library.ts";
import type { QloraSymbols } from "./symbols.ts";

/** Anything that calls into an opened library: a `Device` (its `native` library). */
export interface Native {
  /** The opened library. */
  readonly native: { readonly symbols: QloraSymbols };
  /**
   * Makes room for a refused request of `requested` bytes through the memory-pressure handlers (a paged
   * optimizer moves state pages to host RAM); returns the bytes freed. A `Device` has it; {@linkcode call}
   * uses it.
   */
  relieve?(requested: number): number;
}

/** Device memory: a tensor, a page, or a byte offset into one (see {@linkcode offset}). */
export interface DeviceBuffer {
  /** The device address (a tensor's getter throws once it is disposed). */
  readonly ptr: Deno.PointerObject;
}

/** Host memory a native call reads or writes. */
export type HostBuffer = ArrayBufferView<ArrayBuffer>;

/** A dtype of `qlora_dtype`: `"f32" | "bf16" | "f16" | "u8" | "i32"`. */
export type DTypeName = Lowercase<keyof typeof DTYPE>;
/** A 4-bit type of `qlora_quant_type`: `"nf4" | "fp4" | "int4"`. */
export type QuantTypeName = Lowercase<keyof typeof QUANT_TYPE>;
/** A ledger category of `qlora_category` (`"weights"`, ..., `"workspace"`). */
export type CategoryName = Lowercase<keyof typeof CATEGORY>;
/** A direction of `qlora_copy_kind`: `"host_to_device" | "device_to_host" | "device_to_device"`. */
export type CopyKindName = Lowercase<keyof typeof COPY_KIND>;

/**
 * Throws the typed error of a native status (see `nativeError`): the class follows the status, the
 * message is the library's `qlora_last_error()`. Out of memory inside any call (an output, or a kernel's
 * scratch) is an `OutOfMemoryError` carrying the refused request and the ledger at that moment.
 *
 * @example
 * ```ts
 * import { check } from "./call.ts";
 * import { getDevice, InvalidArgumentError } from "../../mod.ts";
 * import { assertThrows } from "@std/assert";
 * check(getDevice("cpu"), 0);
 * assertThrows(() => check(getDevice("cpu"), 1), InvalidArgumentError);
 * ```
 */
export function check(on: Native, status: number): void {
  if (status === 0) return;
  const message = lastError(on.native);
  throw status === STATUS.OUT_OF_MEMORY ? outOfMemory(on, message) : nativeError(status, message);
}

/**
 * `qlora_memory_stats`: the ledger as the words of `qlora_ledger_snapshot` (decoded by
 * `LedgerSnapshot.fromWords`).
 *
 * @example
 * ```ts
 * import { memoryStats } from "./call.ts";
 * import { LEDGER_SNAPSHOT } from "./abi.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(memoryStats(getDevice("cpu")).length === LEDGER_SNAPSHOT.size / 8);
 * ```
 */
export function memoryStats(on: Native): BigUint64Array<ArrayBuffer> {
  const words = new BigUint64Array(LEDGER_SNAPSHOT.size / 8);
  check(on, on.native.symbols.qlora_memory_stats(words));
  return words;
}

const CATEGORIES = enumNames(CATEGORY);

// The bytes of the request the ledger refused last (the failed call's).
function refusedBytes(on: Native): number {
  return Number(memoryStats(on)[LEDGER_SNAPSHOT.offsets.refused_bytes / 8]);
}

// The ledger's words as an OutOfMemoryError's details: the request the ledger refused last (this call's),
// the budget, current use.
function outOfMemory(on: Native, message: string): OutOfMemoryError {
  const w = memoryStats(on);
  const word = (f: keyof typeof LEDGER_SNAPSHOT.offsets) => Number(w[LEDGER_SNAPSHOT.offsets[f] / 8]);
  const current: Record<string, number> = {};
  CATEGORIES.forEach((c, i) => current[c] = Number(w[LEDGER_SNAPSHOT.offsets.current / 8 + i]));
  return new OutOfMemoryError(message, {
    requested: word("refused_bytes"),
    category: CATEGORIES[word("refused_category")] ?? "unknown",
    budget: word("budget"),
    current,
    totalCurrent: word("total_current"),
  });
}

/**
 * Runs one native call and throws the typed error of its status ({@linkcode check}). When the library
 * refuses the call for lack of memory (the budget, or the device, had no room for an output or a kernel's
 * scratch), `on.relieve` is asked to make room for the refused request and the call runs again, as long
 * as it frees something.
 * Safe because a native call that reports out of memory has written none of its outputs (qlora.h:
 * every backend reserves its scratch before its first write).
 *
 * @example
 * ```ts
 * import { call } from "./call.ts";
 * import { getDevice, OutOfMemoryError } from "../../mod.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const tries: number[] = [];
 * const device = { native: getDevice("cpu").native, relieve: (bytes: number) => (tries.push(bytes), tries.length < 3 ? 1 : 0) };
 * // A call that keeps failing with QLORA_ERR_OUT_OF_MEMORY (2): asked again while relief frees something.
 * assertThrows(() => call(device, () => 2), OutOfMemoryError);
 * assertEquals(tries.length, 3);
 * call(device, () => 0);
 * ```
 */
export function call(on: Native, fn: () => number): void {
  let status = fn();
  while (status === STATUS.OUT_OF_MEMORY && on.relieve?.(refusedBytes(on))) status = fn();
  check(on, status);
}

/**
 * A `uint64_t` argument from a count (`BigInt` refuses a fraction with a `RangeError`).
 *
 * @example
 * ```ts
 * import { u64 } from "./call.ts";
 * import { assert } from "@std/assert";
 * assert(u64(4096) === 4096n);
 * ```
 */
export function u64(n: number): bigint {
  return BigInt(n);
}

/**
 * The native code of a name of a generated enum (`code(DTYPE, "bf16") === 1`); throws
 * `InvalidArgumentError` on a name it does not have.
 *
 * @example
 * ```ts
 * import { code } from "./call.ts";
 * import { DTYPE } from "./abi.ts";
 * import { assert } from "@std/assert";
 * assert(code(DTYPE, "bf16") === 1);
 * ```
 */
export function code<K extends string>(values: Readonly<Record<K, number>>, name: Lowercase<K>): number {
  const c = (values as Record<string, number>)[String(name).toUpperCase()];
  if (typeof name !== "string" || c === undefined) {
    throw new InvalidArgumentError(
      `Cannot pass ${JSON.stringify(name)} to the native library: expected one of ${
        Object.keys(values).map((k) => k.toLowerCase()).join(", ")
      }`,
    );
  }
  return c;
}

/**
 * The device buffer `bytes` bytes into another (a chunk of a tensor).
 *
 * @example
 * ```ts
 * import { offset } from "./call.ts";
 * import { Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.zeros([4]);
 * assert(offset(t, 8).ptr !== t.ptr);
 * ```
 */
export function offset(buffer: DeviceBuffer, bytes: number): DeviceBuffer {
  return { ptr: Deno.UnsafePointer.offset(buffer.ptr, bytes)! };
}

/**
 * The address of a device buffer, or NULL (an optional argument).
 *
 * @example
 * ```ts
 * import { address } from "./call.ts";
 * import { Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.zeros([1]);
 * assert(address(t) === t.ptr && address(null) === null);
 * ```
 */
export function address(buffer: DeviceBuffer | null): Deno.PointerObject | null {
  return buffer === null ? null : buffer.ptr;
}

/**
 * The address of a host buffer (a typed array) or of a device buffer.
 *
 * @example
 * ```ts
 * import { anyAddress } from "./call.ts";
 * import { assert } from "@std/assert";
 * assert(anyAddress(new Float32Array(4)) !== null);
 * ```
 */
export function anyAddress(buffer: DeviceBuffer | HostBuffer): Deno.PointerValue {
  return ArrayBuffer.isView(buffer) ? Deno.UnsafePointer.of(buffer) : buffer.ptr;
}

/**
 * The `void** out` argument of `qlora_malloc` and `qlora_host_malloc`, and the pointer it received.
 *
 * @example
 * ```ts
 * import { pointerOut } from "./call.ts";
 * import { assert } from "@std/assert";
 * const { out, read } = pointerOut();
 * assert(out.length === 1 && read() === null); // nothing received yet
 * ```
 */
export function pointerOut(): { out: BigUint64Array<ArrayBuffer>; read(): Deno.PointerValue } {
  const out = new BigUint64Array(1);
  return { out, read: () => Deno.UnsafePointer.create(out[0]) };
}

/**
 * The bits of a pointer, as a field of a descriptor stores it (NULL is 0).
 *
 * @example
 * ```ts
 * import { pointerBits } from "./call.ts";
 * import { Tensor } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * using t = Tensor.zeros([1]);
 * assert(pointerBits(null) === 0n && pointerBits(t) > 0n);
 * ```
 */
export function pointerBits(buffer: DeviceBuffer | null): bigint {
  return buffer === null ? 0n : Deno.UnsafePointer.value(buffer.ptr);
}
