/** The repository's TypeScript sources, for the tests that read them (docs, layering). */

/** The repository root. */
export const ROOT = new URL("../", import.meta.url);

/** Every `.ts` file under `dir`, recursively. */
export function* sources(dir: URL): Generator<URL> {
  for (const entry of Deno.readDirSync(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* sources(url);
    else if (entry.name.endsWith(".ts")) yield url;
  }
}
