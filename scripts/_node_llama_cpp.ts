/**
 * llama.cpp for the tests and benchmarks that compare with it: node-llama-cpp's prebuilt CPU binary,
 * installed with npm under `build/llama-cpp/` on first use (its package and this platform's binaries
 * only, no install scripts, ~85 MB) and driven under Node.js by a runner script (Deno cannot import the
 * package from a folder of its own node_modules under this repository's config). Used by
 * `tests/gguf_llama_cpp_test.ts` and `bench/peer_llama_cpp.ts`; where npm cannot reach its registry,
 * {@linkcode ensureNodeLlamaCpp} gives the reason to skip instead of failing.
 *
 * @module
 */

/** The pinned node-llama-cpp release (its llama.cpp is the one compared with). */
export const NODE_LLAMA_CPP_VERSION = "3.21.1";

const ROOT = new URL("..", import.meta.url).pathname;

/** Where npm installs it (a `package.json` of its own, under build/). */
export const NODE_LLAMA_CPP_CACHE = `${ROOT}build/llama-cpp`;

/** The `node_modules` folder a runner script imports node-llama-cpp from. */
export const NODE_LLAMA_CPP_MODULES = `${NODE_LLAMA_CPP_CACHE}/node_modules`;

/**
 * node-llama-cpp's package of prebuilt binaries for a platform (`Deno.build`'s by default), or null where
 * it ships none.
 *
 * @example
 * ```ts
 * import { nodeLlamaCppPlatformPackage } from "./_node_llama_cpp.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(nodeLlamaCppPlatformPackage("linux", "x86_64"), "@node-llama-cpp/linux-x64");
 * assertEquals(nodeLlamaCppPlatformPackage("windows", "aarch64"), null);
 * ```
 */
export function nodeLlamaCppPlatformPackage(
  os: string = Deno.build.os,
  arch: string = Deno.build.arch,
): string | null {
  const name = os === "linux"
    ? ({ x86_64: "linux-x64", aarch64: "linux-arm64" } as Record<string, string>)[arch]
    : os === "darwin"
    ? ({ x86_64: "mac-x64", aarch64: "mac-arm64-metal" } as Record<string, string>)[arch]
    : os === "windows" && arch === "x86_64"
    ? "win-x64"
    : undefined;
  return name ? `@node-llama-cpp/${name}` : null;
}

/**
 * Runs a command to its end; its exit code and output (stdout, stderr) as text.
 *
 * @example
 * ```ts
 * import { runCommand } from "./_node_llama_cpp.ts";
 * import { assertEquals } from "@std/assert";
 * const r = await runCommand(Deno.execPath(), ["eval", "console.log(6 * 7)"]);
 * assertEquals([r.code, r.out.trim()], [0, "42"]);
 * ```
 */
export async function runCommand(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

/**
 * The reason to skip, when npm's output says it could not reach its registry (no network); null for any
 * other failure, which the caller should report as one.
 *
 * @example
 * ```ts
 * import { npmNetworkFailure } from "./_node_llama_cpp.ts";
 * import { assertEquals } from "@std/assert";
 * const text = "npm error code ENOTFOUND\nnpm error request to https://registry.example/x failed\n";
 * assertEquals(npmNetworkFailure(text), "npm cannot reach its registry (ENOTFOUND): request to https://registry.example/x failed");
 * assertEquals(npmNetworkFailure("npm error code E404\nnpm error 404 Not Found"), null);
 * ```
 */
export function npmNetworkFailure(text: string): string | null {
  const code = /\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH)\b/.exec(
    text,
  );
  if (!code && !/^npm error network/m.test(text)) return null;
  const line = text.split("\n").find((l) => /request to|network/.test(l))?.replace(/^npm error\s*/, "");
  return `npm cannot reach its registry (${code?.[1] ?? "network error"}): ${line ?? "see npm's log"}`;
}

/**
 * Installs node-llama-cpp under {@linkcode NODE_LLAMA_CPP_CACHE} unless that version is there; the reason
 * to skip where npm is missing or cannot reach its registry, null when ready. Any other failure throws.
 *
 * @example
 * ```ts ignore
 * import { ensureNodeLlamaCpp } from "./_node_llama_cpp.ts";
 * const skip = await ensureNodeLlamaCpp(); // npm install on first use: ~85 MB
 * if (skip) console.log(`SKIPPED: ${skip}`);
 * ```
 */
export async function ensureNodeLlamaCpp(): Promise<string | null> {
  const platform = nodeLlamaCppPlatformPackage();
  if (!platform) throw new Error(`node-llama-cpp has no prebuilt binary for ${Deno.build.target}`);
  const installed = async (pkg: string) => {
    try {
      const json = await Deno.readTextFile(`${NODE_LLAMA_CPP_MODULES}/${pkg}/package.json`);
      return JSON.parse(json).version === NODE_LLAMA_CPP_VERSION;
    } catch {
      return false;
    }
  };
  if (await installed("node-llama-cpp") && await installed(platform)) return null;
  await Deno.mkdir(NODE_LLAMA_CPP_CACHE, { recursive: true });
  await Deno.writeTextFile(`${NODE_LLAMA_CPP_CACHE}/package.json`, '{ "private": true }\n');
  const t0 = performance.now();
  let r;
  try {
    r = await runCommand("npm", [
      "install",
      "--omit=optional",
      "--ignore-scripts",
      "--no-audit",
      "--no-fund",
      "--no-save",
      `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`,
      `${platform}@${NODE_LLAMA_CPP_VERSION}`,
    ], NODE_LLAMA_CPP_CACHE);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return "npm is not installed";
    throw e;
  }
  if (r.code !== 0) {
    const network = npmNetworkFailure(r.out + r.err);
    if (network) return network;
    throw new Error(`npm install of node-llama-cpp failed:\n${r.out}${r.err}`);
  }
  console.log(
    `installed node-llama-cpp ${NODE_LLAMA_CPP_VERSION} in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return null;
}
