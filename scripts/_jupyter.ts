/**
 * A classic Jupyter Notebook server (Debian's `jupyter-notebook` 6.4) for `./deno task jupyter` and the
 * browser run of `./deno task notebooks`: bound to 127.0.0.1 only, token authentication with a fresh
 * random token, its output in a log file, and a `stop()` that always ends it (SIGTERM, which makes it
 * shut its kernels down, then SIGKILL after 10 s).
 *
 * @module
 */

/** A running Jupyter server. */
export interface JupyterServer {
  /** `http://127.0.0.1:PORT` (no trailing slash). */
  readonly base: string;
  /** The port it listens on. */
  readonly port: number;
  /** The token every request carries (`?token=` or `Authorization: token ...`). */
  readonly token: string;
  /** Where its stdout and stderr go. */
  readonly log: string;
  /** `base + path` with the token as a query parameter: a URL a browser can open. */
  url(path: string): string;
  /** A GET or DELETE on the REST API (`/api/...`), with the token; the parsed JSON body, if any. */
  api(method: "GET" | "DELETE", path: string): Promise<unknown>;
  /** Stops the server and its kernels; safe to call more than once. */
  stop(): Promise<void>;
  /** Resolves with the exit code when the server process ends. */
  readonly exited: Promise<number>;
}

/** A free TCP port on 127.0.0.1 (the OS picks it; closed again at once). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function tail(path: string, lines: number): string {
  try {
    return Deno.readTextFileSync(path).split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/**
 * Starts `jupyter notebook` serving `root` and waits until its REST API answers (at most 90 s).
 * `port` 0 (the default) takes a free one.
 */
export async function startJupyterServer(options: {
  jupyter: string;
  root: string;
  log: string;
  port?: number;
}): Promise<JupyterServer> {
  const port = options.port || freePort();
  const token = Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => b.toString(16).padStart(2, "0"))
    .join("");
  const args = [
    "notebook",
    "--no-browser",
    "--ip=127.0.0.1",
    `--port=${port}`,
    "--port-retries=0",
    `--notebook-dir=${options.root}`,
    `--NotebookApp.token=${token}`,
    "--NotebookApp.password=",
    ...(Deno.uid() === 0 ? ["--allow-root"] : []),
  ];
  Deno.mkdirSync(options.log.replace(/\/[^/]+$/, ""), { recursive: true });
  const logFile = Deno.openSync(options.log, { write: true, create: true, truncate: true });
  // stdin null: without a terminal the server takes Ctrl+C (SIGINT) as "stop" instead of asking y/n.
  const child = new Deno.Command(options.jupyter, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    cwd: options.root,
  }).spawn();
  const copy = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      for (let done = 0; done < chunk.length;) done += logFile.writeSync(chunk.subarray(done));
    }
  };
  const copied = Promise.all([copy(child.stdout), copy(child.stderr)]).catch(() => {});
  const exited = child.status.then(async (s) => {
    await copied;
    logFile.close();
    return s.code;
  });
  let stopped = false;
  const base = `http://127.0.0.1:${port}`;
  const server: JupyterServer = {
    base,
    port,
    token,
    log: options.log,
    exited,
    url: (path) => `${base}${path}${path.includes("?") ? "&" : "?"}token=${token}`,
    async api(method, path) {
      const r = await fetch(`${base}${path}`, { method, headers: { Authorization: `token ${token}` } });
      const text = await r.text();
      if (!r.ok) throw new Error(`Cannot ${method} ${path} on the Jupyter server: ${r.status} ${text}`);
      return text ? JSON.parse(text) : null;
    },
    async stop() {
      if (stopped) return void await exited;
      stopped = true;
      try {
        child.kill("SIGTERM");
      } catch {
        // already exited
      }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // exited meanwhile
        }
      }, 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + 90_000;
  let ended: number | null = null;
  exited.then((code) => ended = code);
  while (true) {
    if (ended !== null) {
      throw new Error(
        `Cannot start Jupyter: ${options.jupyter} notebook exited with ${ended}; ${options.log}:\n${
          tail(options.log, 30)
        }`,
      );
    }
    try {
      const r = await fetch(`${base}/api/status`, { headers: { Authorization: `token ${token}` } });
      await r.body?.cancel();
      if (r.ok) return server;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(
        `Cannot start Jupyter: no answer on ${base} after 90 s; ${options.log}:\n${tail(options.log, 30)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}
