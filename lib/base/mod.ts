/**
 * The bottom layer, plain TypeScript with no native code: the library's typed errors and its seeded
 * random numbers. (`test_hooks.ts`, the kill-and-resume test's hook, is here for lib/ and is not public.)
 *
 * @module
 */

export * from "./errors.ts";
export * from "./random.ts";
export * from "./test_hooks.ts";
