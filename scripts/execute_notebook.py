"""Executes one notebook headlessly and writes it, with its outputs, as .ipynb and .html.

Run by scripts/notebooks.ts with the Python that runs `jupyter` (Debian: /usr/bin/python3, with
python3-nbclient and jupyter-nbconvert):

    python3 scripts/execute_notebook.py NOTEBOOK.ipynb OUT_DIR [--kernel deno] [--timeout 300] [--grace 0.5]

Why not `jupyter nbconvert --execute`: Deno's kernel (2.9) can publish a cell's last outputs (console
output, and the cell's value when it is large, such as a figure carrying plotly.js) on the IOPub channel
after the cell's `idle` status. nbclient stops listening to a cell at `idle`, so those outputs are lost
or, worse, silently missing from the HTML. Here each cell keeps collecting its own messages (matched by
parent message id) until the channel has been quiet for `--grace` seconds after `idle`.

Deno 2.9's kernel now and then publishes an IOPub message whose HMAC signature jupyter_client refuses
("Invalid Signature"); the cells never see it. Such a notebook is run again, once, with a fresh kernel, and
the run says so; a cell error is never retried.

`--plain` runs the stock nbclient instead (no grace period), as `jupyter nbconvert --execute` or any other
tool would: the notebooks must show every figure there too (they display them with `await show(fig)`,
which waits until the kernel has sent the figure; see lib/lab/plot.ts).

Exit status: 0 when every cell ran, 1 on a cell error (the error is printed), 2 on bad arguments.
"""

import argparse
import os
import sys
import time
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete, CellExecutionError
from nbclient.util import ensure_async
from nbconvert import HTMLExporter


class LateOutputClient(NotebookClient):
    """A NotebookClient that also keeps a cell's outputs that arrive after the cell's idle status."""

    grace_s = 0.5

    async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
        await super()._async_poll_output_msg(parent_msg_id, cell, cell_index)
        while True:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=self.grace_s))
            except Empty:
                return
            if msg["parent_header"].get("msg_id") != parent_msg_id:
                continue
            try:
                self.process_message(msg, cell, cell_index)
            except CellExecutionComplete:
                pass


def execute(nb, path, args):
    """Runs `nb` (read from `path`) in place with a fresh kernel; returns the seconds it took."""
    client = (NotebookClient if args.plain else LateOutputClient)(
        nb,
        kernel_name=args.kernel,
        timeout=args.timeout,
        startup_timeout=120,
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
    )
    if not args.plain:
        client.grace_s = args.grace
    t0 = time.monotonic()
    client.execute()
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("out_dir")
    parser.add_argument("--kernel", default="deno")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--grace", type=float, default=0.5, help="quiet seconds after a cell's idle status")
    parser.add_argument("--plain", action="store_true", help="the stock nbclient, no grace period")
    args = parser.parse_args()

    stem = os.path.splitext(os.path.basename(args.notebook))[0]
    os.makedirs(args.out_dir, exist_ok=True)
    for attempt in (1, 2):
        nb = nbformat.read(args.notebook, as_version=4)
        try:
            seconds = execute(nb, args.notebook, args)
            break
        except CellExecutionError as e:
            print(str(e), file=sys.stderr)
            nbformat.write(nb, os.path.join(args.out_dir, f"{stem}.failed.ipynb"))
            return 1
        except ValueError as e:
            # A message from the kernel that jupyter_client refuses (seen rarely with Deno 2.9's kernel:
            # "Invalid Signature" on an IOPub message). Not a cell error: the cells never see it. Run the
            # notebook again, once, with a fresh kernel, and say so; a second failure fails the run.
            if attempt == 2 or "Signature" not in str(e):
                raise
            print(f"kernel protocol error ({e}); running {stem} again with a fresh kernel", file=sys.stderr)
    nb.metadata.setdefault("qlora_lab", {})["run_seconds"] = round(seconds, 2)
    nbformat.write(nb, os.path.join(args.out_dir, f"{stem}.ipynb"))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with open(os.path.join(args.out_dir, f"{stem}.html"), "w", encoding="utf-8") as f:
        f.write(body)
    print(f"{seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
