/**
 * Names of the generated enums of `abi.ts` as the rest of `lib/` reads them: status codes, and the
 * lower-case member names of an enum in native code order.
 *
 * @module
 */

import { STATUS } from "./abi.ts";

/**
 * `qlora_status` values of the header (`QLORA_ERR_INVALID_ARGUMENT` is `Status.INVALID_ARGUMENT`).
 *
 * @example
 * ```ts
 * import { Status } from "./enums.ts";
 * import { assert } from "@std/assert";
 * assert(Status.OK === 0 && Status.OUT_OF_MEMORY === 2);
 * ```
 */
export const Status: typeof STATUS = STATUS;

/**
 * The member names of a generated enum of `abi.ts`, lower-cased, in code order (index = native code);
 * throws unless the codes are exactly 0, 1, ..., n - 1.
 *
 * @example
 * ```ts
 * import { enumNames } from "./enums.ts";
 * import { DTYPE } from "./abi.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(enumNames(DTYPE), ["f32", "bf16", "f16", "u8", "i32"]);
 * ```
 */
export function enumNames<K extends string>(values: Readonly<Record<K, number>>): Lowercase<K>[] {
  const entries = (Object.entries(values) as [K, number][]).sort((a, b) => a[1] - b[1]);
  entries.forEach(([name, code], i) => {
    if (code !== i) throw new Error(`Cannot list enum names: ${name} = ${code}, expected ${i}`);
  });
  return entries.map(([name]) => name.toLowerCase() as Lowercase<K>);
}
