/**
 * Small helpers shared by the command-line scripts: flag parsing with clear errors, a progress bar on
 * stderr, and a failure path that prints "error: ..." and exits 1.
 *
 * @module
 */

import { TARGET_MODULES, type TargetModule } from "../mod.ts";

/** A flag's kind: a boolean switch, or one that takes a value. */
export type FlagSpec = Record<string, "boolean" | "string">;

/** Parsed command line: positional arguments and flags. */
export interface ParsedArgs {
  /** Arguments that are not flags. */
  positional: string[];
  /** Flags by name (without dashes). */
  flags: Record<string, string | boolean>;
}

/** Thrown for a bad command line; scripts print it with the usage. */
export class UsageError extends Error {}

/**
 * `--targets q,k,v,o,gate,up,down` (with or without `_proj`) as target modules; absent: all seven. An
 * unknown name is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { targetsFlag } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(targetsFlag("q,v_proj"), ["q_proj", "v_proj"]);
 * assertEquals(targetsFlag(undefined).length, 7);
 * assertThrows(() => targetsFlag("q,x"), Error, "--targets: x_proj");
 * ```
 */
export function targetsFlag(value: string | boolean | undefined): TargetModule[] {
  if (value === undefined) return [...TARGET_MODULES];
  const targets = String(value).split(",").map((t) =>
    t.endsWith("_proj") ? t : `${t}_proj`
  ) as TargetModule[];
  for (const t of targets) {
    if (!TARGET_MODULES.includes(t)) {
      throw new UsageError(`--targets: ${t} is not one of ${TARGET_MODULES.join(", ")}`);
    }
  }
  return targets;
}

/**
 * A reader of positive integer flags: `int("steps", 200)` is `--steps` when given, else 200; anything but a
 * positive integer is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { intFlags } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const int = intFlags({ steps: "40", bad: "1.5" });
 * assertEquals([int("steps", 200), int("batch", 8)], [40, 8]);
 * assertThrows(() => int("bad", 1), Error, "--bad must be a positive integer");
 * ```
 */
export function intFlags(
  flags: Record<string, string | boolean>,
): (name: string, fallback: number) => number {
  return (name, fallback) => {
    const v = flags[name] === undefined ? fallback : Number(flags[name]);
    if (!Number.isSafeInteger(v) || v <= 0) throw new UsageError(`--${name} must be a positive integer`);
    return v;
  };
}

/**
 * Parses `--name value`, `--name=value` and boolean `--name`; unknown flags are an error.
 *
 * @example
 * ```ts
 * import { parseArgs } from "./_cli.ts";
 * import { assert } from "@std/assert";
 * const a = parseArgs(["in", "--blocksize", "64", "--no-double-quant"], {
 *   blocksize: "string",
 *   "no-double-quant": "boolean",
 * });
 * assert(a.flags.blocksize === "64" && a.positional[0] === "in");
 * ```
 */
export function parseArgs(argv: string[], spec: FlagSpec): ParsedArgs {
  const positional: string[] = [];
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const kind = spec[name];
    if (!kind) throw new UsageError(`unknown flag --${name}`);
    if (kind === "boolean") {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      flags[name] = true;
    } else {
      const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
      if (value === undefined || value === "") throw new UsageError(`--${name} needs a value`);
      flags[name] = value;
    }
  }
  return { positional, flags };
}

/**
 * Takes a flag whose value is optional (`--resume` or `--resume DIR`, `--resume=DIR`) out of `argv`:
 * true when given bare, its value when one follows that is not a flag, undefined when absent.
 *
 * @example
 * ```ts
 * import { takeOptionalFlag } from "./_cli.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(takeOptionalFlag(["--resume", "--steps", "4"], "resume"), { value: true, rest: ["--steps", "4"] });
 * assertEquals(takeOptionalFlag(["--resume", "out"], "resume").value, "out");
 * ```
 */
export function takeOptionalFlag(argv: string[], name: string): { value?: string | true; rest: string[] } {
  const rest: string[] = [];
  let value: string | true | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) {
      const next = argv[i + 1];
      value = next !== undefined && !next.startsWith("--") ? (i++, next) : true;
    } else if (argv[i].startsWith(`--${name}=`)) {
      value = argv[i].slice(name.length + 3) || true;
    } else {
      rest.push(argv[i]);
    }
  }
  return { value, rest };
}

/**
 * A one-line progress bar on stderr, drawn only when stderr is a terminal.
 *
 * @example
 * ```ts
 * import { ProgressBar } from "./_cli.ts";
 * const bar = new ProgressBar("quantize");
 * bar.update(0.5);
 * bar.done();
 * ```
 */
export class ProgressBar {
  #label: string;
  #tty: boolean;
  #last = -1;
  /** Creates a bar with a label. */
  constructor(label: string) {
    this.#label = label;
    this.#tty = Deno.stderr.isTerminal();
  }
  /** Draws the fraction done (0..1). */
  update(fraction: number): void {
    if (!this.#tty) return;
    const pct = Math.floor(fraction * 100);
    if (pct === this.#last) return;
    this.#last = pct;
    const width = 30;
    const filled = Math.round((pct / 100) * width);
    const line = `\r${this.#label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${pct}%`;
    Deno.stderr.writeSync(new TextEncoder().encode(line));
  }
  /** Clears the bar. */
  done(): void {
    if (this.#tty && this.#last >= 0) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
  }
}

/**
 * Runs a script's main function: errors print "error: message" (plus the usage for a
 * {@linkcode UsageError}) and exit with status 1 instead of a stack trace.
 *
 * @example
 * ```ts
 * import { runMain } from "./_cli.ts";
 * await runMain(() => {}, "usage: nothing");
 * ```
 */
export async function runMain(main: () => Promise<void> | void, usage: string): Promise<void> {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    if (e instanceof UsageError) console.error(usage);
    Deno.exit(1);
  }
}
