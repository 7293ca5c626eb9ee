/**
 * Typed wrappers of the device and memory functions of `qlora.h`: the device's name, synchronisation,
 * device and host allocations, copies, memset and the ledger.
 *
 * @module
 */

import { CATEGORY, COPY_KIND, STATUS } from "./abi.ts";
import {
  anyAddress,
  call,
  type CategoryName,
  check,
  code,
  type CopyKindName,
  type DeviceBuffer,
  type HostBuffer,
  type Native,
  pointerOut,
  u64,
} from "./call.ts";

/**
 * `qlora_device_name`: a description of the device (name, memory, threads).
 *
 * @example
 * ```ts
 * import { deviceName } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert(deviceName(getDevice("cpu")).startsWith("CPU"));
 * ```
 */
export function deviceName(on: Native): string {
  const buf = new Uint8Array(256);
  call(on, () => on.native.symbols.qlora_device_name(buf, u64(buf.length)));
  return new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
}

/**
 * `qlora_synchronize`: waits for all queued work of the backend.
 *
 * @example
 * ```ts
 * import { synchronize } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * synchronize(getDevice("cpu"));
 * ```
 */
export function synchronize(on: Native): void {
  call(on, () => on.native.symbols.qlora_synchronize());
}

/**
 * `qlora_malloc`: `bytes` (> 0) of device memory counted under `category`. Returns the pointer (null
 * if the library gave NULL), or `undefined` for `QLORA_ERR_OUT_OF_MEMORY` (the message is then in
 * `lastError`), so that the caller can free memory and try again; other failures throw.
 *
 * @example
 * ```ts
 * import { free, malloc } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const device = getDevice("cpu");
 * const ptr = malloc(device, 64, "workspace");
 * assert(ptr);
 * free(device, { ptr });
 * ```
 */
export function malloc(on: Native, bytes: number, category: CategoryName): Deno.PointerValue | undefined {
  const { out, read } = pointerOut();
  const status = on.native.symbols.qlora_malloc(out, u64(bytes), code(CATEGORY, category));
  if (status === STATUS.OUT_OF_MEMORY) return undefined;
  check(on, status);
  return read();
}

/**
 * `qlora_free`: frees memory of {@linkcode malloc}.
 *
 * @example
 * ```ts
 * import { free, malloc } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * const device = getDevice("cpu");
 * free(device, { ptr: malloc(device, 16, "workspace")! });
 * ```
 */
export function free(on: Native, buffer: DeviceBuffer): void {
  call(on, () => on.native.symbols.qlora_free(buffer.ptr));
}

/**
 * `qlora_memcpy`: copies `bytes` from `src` to `dst`; `kind` says which side is the host (a typed
 * array) and which the device (a tensor or a page).
 *
 * @example
 * ```ts
 * import { memcpy } from "./memory.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using t = Tensor.zeros([2]);
 * memcpy(getDevice(), t, new Float32Array([1, 2]), 8, "host_to_device");
 * assertEquals([...t.toFloat32()], [1, 2]);
 * ```
 */
export function memcpy(
  on: Native,
  dst: DeviceBuffer | HostBuffer,
  src: DeviceBuffer | HostBuffer,
  bytes: number,
  kind: CopyKindName,
): void {
  call(
    on,
    () => on.native.symbols.qlora_memcpy(anyAddress(dst), anyAddress(src), u64(bytes), code(COPY_KIND, kind)),
  );
}

/**
 * `qlora_memset`: sets `bytes` bytes of device memory to the byte `value`.
 *
 * @example
 * ```ts
 * import { memset } from "./memory.ts";
 * import { getDevice, Tensor } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * using t = Tensor.from([1, 2]);
 * memset(getDevice(), t, 0, t.byteLength);
 * assertEquals([...t.toFloat32()], [0, 0]);
 * ```
 */
export function memset(on: Native, buffer: DeviceBuffer, value: number, bytes: number): void {
  call(on, () => on.native.symbols.qlora_memset(buffer.ptr, value, u64(bytes)));
}

// qlora_memory_stats lives in call.ts (an out-of-memory error reads the ledger through it).
export { memoryStats } from "./call.ts";

/**
 * `qlora_reset_peak`: sets every peak to the current value.
 *
 * @example
 * ```ts
 * import { resetPeak } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * resetPeak(getDevice("cpu"));
 * ```
 */
export function resetPeak(on: Native): void {
  call(on, () => on.native.symbols.qlora_reset_peak());
}

/**
 * `qlora_set_memory_budget`: limits the ledger's total to `bytes` (0 = unlimited).
 *
 * @example
 * ```ts
 * import { setMemoryBudget } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * setMemoryBudget(getDevice("cpu"), 0);
 * ```
 */
export function setMemoryBudget(on: Native, bytes: number): void {
  call(on, () => on.native.symbols.qlora_set_memory_budget(u64(bytes)));
}

/**
 * `qlora_host_malloc`: `bytes` of zero-filled host memory for paged-out data (counted in the ledger's
 * host pool). Its bytes can be read in place with {@linkcode hostView}.
 *
 * @example
 * ```ts
 * import { hostFree, hostMalloc, hostView } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const device = getDevice("cpu");
 * const page = hostMalloc(device, 256);
 * assert(hostView(page, 256).every((b) => b === 0));
 * hostFree(device, page);
 * ```
 */
export function hostMalloc(on: Native, bytes: number): DeviceBuffer {
  const { out, read } = pointerOut();
  call(on, () => on.native.symbols.qlora_host_malloc(out, u64(bytes)));
  return { ptr: read()! };
}

/**
 * `qlora_host_free`: frees memory of {@linkcode hostMalloc}.
 *
 * @example
 * ```ts
 * import { hostFree, hostMalloc } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * hostFree(getDevice("cpu"), hostMalloc(getDevice("cpu"), 64));
 * ```
 */
export function hostFree(on: Native, buffer: DeviceBuffer): void {
  call(on, () => on.native.symbols.qlora_host_free(buffer.ptr));
}

/**
 * The `bytes` bytes of a host allocation of {@linkcode hostMalloc}, read and written in place.
 *
 * @example
 * ```ts
 * import { hostFree, hostMalloc, hostView } from "./memory.ts";
 * import { getDevice } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const page = hostMalloc(getDevice("cpu"), 8);
 * hostView(page, 8)[0] = 7;
 * assert(hostView(page, 8)[0] === 7);
 * hostFree(getDevice("cpu"), page);
 * ```
 */
export function hostView(buffer: DeviceBuffer, bytes: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(buffer.ptr, bytes));
}
