/**
 * The type of the opened library's symbols, from the `Deno.dlopen` table of `cuda/include/qlora.h` in
 * `abi.ts`, which `./deno task gen:abi` generates from the header (`tests/abi_test.ts` fails when it is
 * stale), so the two cannot drift. Only `lib/native` calls the symbols: every other
 * module goes through the typed wrappers of `lib/native/mod.ts`.
 *
 * Device pointers are `pointer`; host outputs of fixed size are `buffer`; sizes are `u64`.
 *
 * @module
 */

import type { symbols } from "./abi.ts";

/** The loaded library's symbols. */
export type QloraSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
