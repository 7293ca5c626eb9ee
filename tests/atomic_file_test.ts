import { assert, assertEquals, assertRejects } from "@std/assert";
import { AtomicFile, TEMP_PREFIX, withAtomicFile, writeFileAtomic } from "../lib/io/atomic_file.ts";
import {
  dequantizeCheckpoint,
  getDevice,
  LlamaModel,
  quantizeCheckpoint,
  SafetensorsWriter,
  saveCheckpoint,
  saveWeights,
  writeSafetensors,
} from "../mod.ts";

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "atomic_file_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `fn` under a process umask, restoring the previous one afterwards. */
async function withUmask(mask: number, fn: () => Promise<void>): Promise<void> {
  const previous = Deno.umask(mask);
  try {
    await fn();
  } finally {
    Deno.umask(previous);
  }
}

const modeOf = (path: string) => Deno.statSync(path).mode! & 0o777;
const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();
const octal = (n: number) => `0${n.toString(8)}`;

const CONFIG = {
  vocabSize: 64,
  dim: 32,
  layers: 1,
  heads: 2,
  kvHeads: 2,
  hiddenDim: 64,
  maxSeq: 16,
  normEps: 1e-5,
  ropeTheta: 10000,
};

Deno.test("a new file gets 0o666 minus the umask, like a normal write (0644 under 022, not 0600)", async () => {
  await withDir(async (dir) => {
    for (const [mask, want] of [[0o022, 0o644], [0o002, 0o664], [0o077, 0o600]]) {
      await withUmask(mask, async () => {
        const path = `${dir}/new-${octal(mask)}.txt`;
        await writeFileAtomic(path, "x");
        assertEquals(octal(modeOf(path)), octal(want), `umask ${octal(mask)}`);
        // The reference: what Deno.writeTextFile gives under the same umask.
        await Deno.writeTextFile(`${path}.plain`, "x");
        assertEquals(octal(modeOf(path)), octal(modeOf(`${path}.plain`)));
      });
    }
    await withUmask(0o022, async () => {
      await writeFileAtomic(`${dir}/tool`, "#!/bin/sh\n", { mode: 0o777 });
      assertEquals(octal(modeOf(`${dir}/tool`)), "0755");
    });
  });
});

Deno.test("an existing file keeps its permission bits unless a mode is given", async () => {
  await withDir(async (dir) => {
    await withUmask(0o022, async () => {
      const path = `${dir}/private.json`;
      await Deno.writeTextFile(path, "{}");
      await Deno.chmod(path, 0o640);
      await writeFileAtomic(path, '{"a":1}');
      assertEquals(octal(modeOf(path)), "0640");
      await writeFileAtomic(path, '{"a":2}', { mode: 0o644 });
      assertEquals(octal(modeOf(path)), "0644");
      assertEquals(await Deno.readTextFile(path), '{"a":2}');
    });
  });
});

Deno.test("an existing file is replaced whole: a new inode, shorter content, open readers see the old one", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/data.bin`;
    await Deno.writeFile(path, new Uint8Array(1000).fill(7));
    const before = Deno.statSync(path).ino;
    using old = await Deno.open(path, { read: true });
    await writeFileAtomic(path, new Uint8Array([1, 2, 3]));
    assertEquals(await Deno.readFile(path), new Uint8Array([1, 2, 3]));
    assert(Deno.statSync(path).ino !== before, "written in place, not renamed over");
    const buf = new Uint8Array(1000);
    assertEquals(await old.read(buf), 1000);
    assert(buf.every((b) => b === 7), "a reader of the old file saw new bytes");
    assertEquals(names(dir), ["data.bin"]);
  });
});

Deno.test("while writing, the target is untouched and the bytes go to .qlora-tmp-* in the same folder", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/report.html`;
    await Deno.writeTextFile(path, "old");
    await withUmask(0o022, async () => {
      await withAtomicFile(path, async (file) => {
        await file.write(new TextEncoder().encode("new, not yet committed"));
        assertEquals(await Deno.readTextFile(path), "old");
        const temps = names(dir).filter((n) => n !== "report.html");
        assertEquals(temps.length, 1);
        assert(temps[0].startsWith(TEMP_PREFIX), temps[0]);
        assertEquals(octal(modeOf(`${dir}/${temps[0]}`)), octal(modeOf(path)));
      });
    });
    assertEquals(await Deno.readTextFile(path), "new, not yet committed");
    assertEquals(names(dir), ["report.html"]);
  });
});

Deno.test("a failing writer leaves the target unchanged (or absent) and no temporary file", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/config.json`;
    await Deno.writeTextFile(path, "old");
    const ino = Deno.statSync(path).ino;
    const failing = (target: string) =>
      withAtomicFile(target, async (file) => {
        await file.write(new Uint8Array(4096));
        throw new RangeError("producer failed");
      });
    await assertRejects(() => failing(path), RangeError, "producer failed");
    assertEquals(await Deno.readTextFile(path), "old");
    assertEquals(Deno.statSync(path).ino, ino);
    await assertRejects(() => failing(`${dir}/fresh.json`), RangeError);
    assertEquals(names(dir), ["config.json"]);

    // A callback that closes the file itself makes the commit fail: same outcome.
    await assertRejects(() => withAtomicFile(path, (file) => file.close()));
    assertEquals(await Deno.readTextFile(path), "old");
    assertEquals(names(dir), ["config.json"]);

    // Committing twice, or after an abort, is refused.
    const out = await AtomicFile.open(path);
    await out.abort();
    await assertRejects(() => out.commit(), Error, "already aborted");
    assertEquals(names(dir), ["config.json"]);
  });
});

Deno.test("targets that cannot be written fail before any byte and leave nothing behind", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/sub`);
    await assertRejects(() => writeFileAtomic(`${dir}/sub`, "x"), Deno.errors.IsADirectory);
    await assertRejects(() => writeFileAtomic(`${dir}/missing/x.txt`, "x"), Deno.errors.NotFound);
    assertEquals(names(dir), ["sub"]);
    assertEquals(names(`${dir}/sub`), []);
  });
});

Deno.test("a symbolic link is written through: the file it points to is replaced, the link stays", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/real`);
    await Deno.writeTextFile(`${dir}/real/w.txt`, "old");
    await Deno.symlink(`${dir}/real/w.txt`, `${dir}/link.txt`);
    await writeFileAtomic(`${dir}/link.txt`, "new");
    assert(Deno.lstatSync(`${dir}/link.txt`).isSymlink);
    assertEquals(await Deno.readTextFile(`${dir}/real/w.txt`), "new");
    assertEquals(names(`${dir}/real`), ["w.txt"]); // the temporary file was beside the real file
    assertEquals(names(dir), ["link.txt", "real"]);
  });
});

Deno.test("a relative path in the working folder and a file: URL both work", async () => {
  await withDir(async (dir) => {
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      await writeFileAtomic("plain.txt", "a");
      await writeFileAtomic("./dot.txt", "b");
    } finally {
      Deno.chdir(cwd);
    }
    await writeFileAtomic(new URL(`file://${dir}/url.txt`), "c");
    assertEquals(names(dir), ["dot.txt", "plain.txt", "url.txt"]);
    assertEquals(await Deno.readTextFile(`${dir}/url.txt`), "c");
  });
});

Deno.test("every file the library writes has the mode of a normal write (0644 under umask 022)", async () => {
  await withDir(async (dir) => {
    await withUmask(0o022, async () => {
      const w = new Float32Array(64 * 64).map((_, i) => Math.sin(i));
      const written: string[] = [];
      await writeSafetensors(`${dir}/in.safetensors`, [
        { name: "w", dtype: "F32", shape: [64, 64], data: new Uint8Array(w.buffer) },
      ]);
      written.push(`${dir}/in.safetensors`);
      const writer = await SafetensorsWriter.create(`${dir}/stream.safetensors`, []);
      await writer.close();
      written.push(`${dir}/stream.safetensors`);
      const cpu = getDevice("cpu");
      await quantizeCheckpoint(cpu, `${dir}/in.safetensors`, `${dir}/q.safetensors`);
      await dequantizeCheckpoint(cpu, `${dir}/q.safetensors`, `${dir}/d.safetensors`);
      written.push(`${dir}/q.safetensors`, `${dir}/d.safetensors`);
      {
        using model = new LlamaModel(CONFIG);
        await saveWeights(model, `${dir}/base.safetensors`);
        written.push(`${dir}/base.safetensors`);
        written.push(...await saveCheckpoint(model, `${dir}/full`, { step: 1, loss: 1 }));
      }
      {
        using model = new LlamaModel(CONFIG, { mode: "lora", rank: 4, targetModules: ["q_proj"] });
        written.push(...await saveCheckpoint(model, `${dir}/lora`, { step: 1, loss: 1 }));
      }
      assertEquals(written.length, 10);
      const modes = written.map((p) => `${p.slice(dir.length + 1)} ${octal(modeOf(p))}`);
      assertEquals(modes, written.map((p) => `${p.slice(dir.length + 1)} 0644`));
      for (const sub of [dir, `${dir}/full`, `${dir}/lora`]) {
        assertEquals(names(sub).filter((n) => n.startsWith(TEMP_PREFIX)), [], `temporary files in ${sub}`);
      }
    });
  });
});
