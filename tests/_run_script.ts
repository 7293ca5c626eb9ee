/**
 * `runScript`: one of the repository's scripts in a process of its own on the CPU backend, as a user runs
 * it (`deno run -A scripts/NAME.ts ...`), for the tests of the commands.
 *
 * @module
 */

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs `scripts/<script>` with `args`; returns its exit code and output. */
export async function runScript(
  script: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}scripts/${script}`, ...args],
    cwd: options.cwd,
    env: { QLORA_BACKEND: "cpu", ...options.env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
