/**
 * The `Deno.dlopen` symbol table of `cuda/include/qlora.h` and the ABI facts the loader reads, all
 * taken from `abi.ts`, which `./deno task gen:abi` generates from the header (`tests/abi_test.ts`
 * fails when it is stale), so the two cannot drift. Only `lib/ffi` calls the symbols: every other
 * module goes through the typed wrappers of `lib/ffi/mod.ts`.
 *
 * Device pointers are `pointer`; host outputs of fixed size are `buffer`; sizes are `u64`.
 *
 * @module
 */

import { ABI_VERSION, symbols } from "./abi.ts";

export { ABI_VERSION, symbols };
export { enumNames, Status } from "./enums.ts";

/** The loaded library's symbols. */
export type QloraSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
