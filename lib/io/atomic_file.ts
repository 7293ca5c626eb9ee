/**
 * Atomic file writes: the bytes go to a temporary file beside the target (`.qlora-tmp-*`, same folder,
 * so on the same file system), which is flushed to disk and renamed over the target at the end, or
 * removed on any failure. A reader, or a crash, sees the old file or the new one, never half of one.
 *
 * Permissions are those of a normal write: a new file is created with mode `0o666` (or the mode given)
 * and the kernel applies the process umask, so it gets `0o644` under umask 022 (not the `0o600` of
 * `Deno.makeTempFile`), without reading the umask (`Deno.umask()` would need `--allow-sys`); an existing
 * target keeps its permission bits. A symbolic link as target is written through, as a normal write
 * would: the file it points to is replaced, the link stays. Needs read and write permission on the folder.
 *
 * @module
 */

import { DisposedError } from "../base/mod.ts";

/** Start of every temporary file's name (`.gitignore` lists `.qlora-tmp-*`). */
export const TEMP_PREFIX = ".qlora-tmp-";

/** Options of {@linkcode AtomicFile.open}, {@linkcode withAtomicFile} and {@linkcode writeFileAtomic}. */
export interface AtomicFileOptions {
  /**
   * Permission bits of the file, before the umask, as `Deno.open`'s `mode` (e.g. `0o755` for a program).
   * Default: an existing target's own bits, else `0o666` before the umask.
   */
  mode?: number;
}

function pathOf(path: string | URL): string {
  if (!(path instanceof URL)) return path;
  if (path.protocol !== "file:") throw new TypeError(`Cannot write ${path.href}: not a file: URL`);
  return decodeURIComponent(path.pathname);
}

function folderOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** The file a normal write would replace (a link's target), and its permission bits when it exists. */
async function resolveTarget(path: string): Promise<{ target: string; mode: number | null }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { target: path, mode: null };
    throw e;
  }
  let target = path;
  if (info.isSymlink) {
    try {
      target = await Deno.realPath(path);
      info = await Deno.stat(target);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return { target: path, mode: null }; // dangling: replace the link
      throw e;
    }
  }
  if (info.isDirectory) throw new Deno.errors.IsADirectory(`Cannot write ${path}: it is a directory`);
  return { target, mode: info.mode === null ? null : info.mode & 0o777 };
}

function randomTag(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

async function syncFolder(folder: string): Promise<void> {
  // Makes the rename itself durable; best effort (some file systems refuse to open or sync a folder).
  try {
    using dir = await Deno.open(folder, { read: true });
    await dir.sync();
  } catch {
    // the data is safe in the file; only the rename may not have reached the disk yet
  }
}

/**
 * A file being written atomically: write through {@linkcode AtomicFile.file}, then
 * {@linkcode AtomicFile.commit} to replace the target, or {@linkcode AtomicFile.abort} (also what
 * `await using` does when `commit` was not reached) to leave the target as it was.
 *
 * @example
 * ```ts
 * import { AtomicFile } from "./atomic_file.ts";
 * import { assert } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const out = await AtomicFile.open(`${dir}/a.bin`);
 * await out.file.write(new Uint8Array([1, 2, 3]));
 * assert(out.tempPath.startsWith(`${dir}/.qlora-tmp-`));
 * await out.commit();
 * assert((await Deno.readFile(`${dir}/a.bin`))[2] === 3);
 * assert([...Deno.readDirSync(dir)].length === 1); // no temporary file left
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class AtomicFile implements AsyncDisposable {
  /** The target, as given. */
  readonly path: string;
  /** The temporary file, in the target's folder, renamed over the target by `commit`. */
  readonly tempPath: string;
  /** The temporary file, open for writing at offset 0. Do not close it: `commit` and `abort` do. */
  readonly file: Deno.FsFile;
  readonly #target: string;
  #state: "open" | "committed" | "aborted" = "open";

  private constructor(path: string, target: string, tempPath: string, file: Deno.FsFile) {
    this.path = path;
    this.#target = target;
    this.tempPath = tempPath;
    this.file = file;
  }

  /**
   * Creates a new, empty temporary file beside `path` (a unique `.qlora-tmp-*` name, created
   * exclusively) with the permissions the target will have. The target is untouched until `commit`.
   *
   * @throws Deno's error when the folder is missing or not writable, or `path` is a directory.
   *
   * @example
   * ```ts
   * import { AtomicFile } from "./atomic_file.ts";
   * import { assert } from "@std/assert";
   * const dir = await Deno.makeTempDir();
   * await Deno.writeTextFile(`${dir}/keep.txt`, "old");
   * {
   *   await using out = await AtomicFile.open(`${dir}/keep.txt`);
   *   await out.file.write(new TextEncoder().encode("half of the new"));
   * } // never committed: the temporary file is removed
   * assert((await Deno.readTextFile(`${dir}/keep.txt`)) === "old");
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  static async open(path: string | URL, options: AtomicFileOptions = {}): Promise<AtomicFile> {
    const given = pathOf(path);
    const { target, mode } = await resolveTarget(given);
    const folder = target.slice(0, target.lastIndexOf("/") + 1); // "" (the working folder) or ending in "/"
    const base = target.slice(folder.length).slice(0, 200);
    for (let attempt = 0;; attempt++) {
      const tempPath = `${folder}${TEMP_PREFIX}${randomTag()}-${base}`;
      let file: Deno.FsFile;
      try {
        file = await Deno.open(tempPath, { write: true, createNew: true, mode: options.mode ?? 0o666 });
      } catch (e) {
        if (e instanceof Deno.errors.AlreadyExists && attempt < 10) continue;
        throw e;
      }
      const out = new AtomicFile(given, target, tempPath, file);
      if (options.mode === undefined && mode !== null && Deno.build.os !== "windows") {
        try {
          await Deno.chmod(tempPath, mode);
        } catch (e) {
          await out.abort();
          throw e;
        }
      }
      return out;
    }
  }

  /**
   * Flushes the temporary file to disk, closes it and renames it over the target (then flushes the
   * folder). On failure the temporary file is removed and the error rethrown; the target is unchanged.
   *
   * @throws {DisposedError} after `commit` or `abort`; Deno's error when the flush or rename fails.
   *
   * @example
   * ```ts
   * import { AtomicFile } from "./atomic_file.ts";
   * import { assert } from "@std/assert";
   * const dir = await Deno.makeTempDir();
   * await Deno.writeTextFile(`${dir}/x.txt`, "a much longer old content");
   * const out = await AtomicFile.open(`${dir}/x.txt`);
   * await out.file.write(new TextEncoder().encode("new"));
   * await out.commit();
   * assert((await Deno.readTextFile(`${dir}/x.txt`)) === "new"); // replaced whole
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async commit(): Promise<void> {
    if (this.#state !== "open") {
      throw new DisposedError(`Cannot commit ${this.path}: the file was already ${this.#state}`);
    }
    try {
      await this.file.sync();
      this.file.close();
      await Deno.rename(this.tempPath, this.#target);
    } catch (e) {
      await this.abort();
      throw e;
    }
    this.#state = "committed";
    await syncFolder(folderOf(this.#target));
  }

  /**
   * Closes and removes the temporary file; the target stays as it was. Idempotent, and does nothing
   * after a successful `commit`. Never throws.
   *
   * @example
   * ```ts
   * import { AtomicFile } from "./atomic_file.ts";
   * import { assert } from "@std/assert";
   * const dir = await Deno.makeTempDir();
   * const out = await AtomicFile.open(`${dir}/never.txt`);
   * await out.abort();
   * await out.abort();
   * assert([...Deno.readDirSync(dir)].length === 0);
   * await Deno.remove(dir);
   * ```
   */
  async abort(): Promise<void> {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    try {
      this.file.close();
    } catch {
      // already closed (by a failed commit)
    }
    await Deno.remove(this.tempPath).catch(() => {});
  }

  /** Aborts unless committed (for `await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.abort();
  }
}

/**
 * Writes a file atomically through a callback that gets the open temporary file; commits when the
 * callback resolves, aborts (and rethrows) when it throws. Returns what the callback returns.
 *
 * @example
 * ```ts
 * import { withAtomicFile } from "./atomic_file.ts";
 * import { assert, assertRejects } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * const path = `${dir}/data.bin`;
 * const n = await withAtomicFile(path, (file) => file.write(new Uint8Array(5)));
 * assert(n === 5 && (await Deno.stat(path)).size === 5);
 * await assertRejects(() =>
 *   withAtomicFile(path, async (file) => {
 *     await file.write(new Uint8Array(9));
 *     throw new RangeError("producer failed");
 *   }), RangeError);
 * assert((await Deno.stat(path)).size === 5); // unchanged, and no temporary file left
 * assert([...Deno.readDirSync(dir)].length === 1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function withAtomicFile<T>(
  path: string | URL,
  write: (file: Deno.FsFile) => Promise<T> | T,
  options: AtomicFileOptions = {},
): Promise<T> {
  const out = await AtomicFile.open(path, options);
  let result: T;
  try {
    result = await write(out.file);
  } catch (e) {
    await out.abort();
    throw e;
  }
  await out.commit();
  return result;
}

/**
 * Writes bytes, or a string as UTF-8, to a file atomically: the `Deno.writeFile` of this project.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./atomic_file.ts";
 * import { assert } from "@std/assert";
 * const dir = await Deno.makeTempDir();
 * await writeFileAtomic(`${dir}/config.json`, '{"r":8}\n');
 * assert(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)).r === 8);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeFileAtomic(
  path: string | URL,
  data: Uint8Array | string,
  options: AtomicFileOptions = {},
): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  await withAtomicFile(path, async (file) => {
    let done = 0;
    while (done < bytes.length) done += await file.write(bytes.subarray(done));
  }, options);
}
