/**
 * The process holds what the ledger says, with QLORA_CPU_RETURN_MEMORY=1: on the CPU backend device memory is
 * host memory, so the growth of the process's peak resident set over a training step is the ledger's peak
 * plus what the runtime itself takes, and freeing the model gives the memory back to the system: the
 * process's anonymous memory returns to within 5% of the ledger's peak of where it was. (By default the
 * backend allocates from malloc, faster, and glibc keeps freed chunks: see cuda/src/cpu/memory.cpp.)
 */
import { assert } from "@std/assert";
import { getDevice, type TrainMode } from "../mod.ts";

const CHILD = new URL("./_rss_child.ts", import.meta.url).pathname;
const cpu = getDevice().backend === "cpu";
if (!cpu) console.log("ledger_rss_test: skipped, the suite runs on another backend than the CPU's");

for (const mode of ["full", "lora", "qlora"] as TrainMode[]) {
  Deno.test({
    name:
      `ledger = RSS (${mode}, QLORA_CPU_RETURN_MEMORY=1): a 0.5B model's two steps, >= 95%, memory given back`,
    ignore: !cpu,
    async fn() {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CHILD, mode],
        env: { QLORA_BACKEND: "cpu", QLORA_CPU_RETURN_MEMORY: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert(out.success, new TextDecoder().decode(out.stderr));
      const r = JSON.parse(text.trim().split("\n").at(-1)!) as { peak: number; growth: number; kept: number };
      const ratio = r.peak / r.growth;
      console.log(
        `${mode}: ledger peak ${(r.peak / 2 ** 20).toFixed(0)} MiB, peak RSS growth ${
          (r.growth / 2 ** 20).toFixed(0)
        } MiB (${(100 * ratio).toFixed(1)}%), still held after freeing ${(r.kept / 2 ** 20).toFixed(0)} MiB`,
      );
      assert(
        ratio >= 0.95 && ratio <= 1.0,
        `the ledger's peak is ${(100 * ratio).toFixed(1)}% of the RSS growth`,
      );
      assert(r.kept <= 0.05 * r.peak, `${r.kept} bytes still held after everything was freed`);
    },
  });
}
