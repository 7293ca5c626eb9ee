/**
 * Hooks for the library's own tests, kept out of the public API (mod.ts does not export this module):
 * the kill-and-resume test stops a training process at a named point.
 *
 * @module
 */

let pauseAt: string | null | undefined;

/**
 * A hook for the kill-and-resume test (tests/resume_test.ts): when the environment variable
 * `QLORA_TEST_PAUSE_AT` names `point` (`step:N:backward`, `step:N:optimizer`, `checkpoint:N:start`,
 * `checkpoint:N:weights`, `checkpoint:N:optimizer`, `checkpoint:N:marker`, `checkpoint:N:prune`), prints
 * `QLORA_TEST_PAUSED point` on stderr and waits for the test to kill the process (exiting with status
 * 86 after a minute if nobody does). Without the variable, or without permission to read it, it returns
 * at once.
 *
 * @example
 * ```ts
 * import { pauseForTest } from "./test_hooks.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(await pauseForTest("step:1:backward"), undefined); // QLORA_TEST_PAUSE_AT is not set here
 * ```
 */
export async function pauseForTest(point: string): Promise<void> {
  if (pauseAt === undefined) {
    const name = "QLORA_TEST_PAUSE_AT";
    pauseAt = Deno.permissions.querySync({ name: "env", variable: name }).state === "granted"
      ? Deno.env.get(name) ?? null
      : null;
  }
  if (pauseAt !== point) return;
  Deno.stderr.writeSync(new TextEncoder().encode(`QLORA_TEST_PAUSED ${point}\n`));
  await new Promise((resolve) => setTimeout(resolve, 60_000));
  Deno.exit(86);
}
