/**
 * qlora-lab: see and measure why fine-tuning large language models runs out of memory, and how LoRA
 * and QLoRA fix it. A native library (CPU and CUDA backends behind one C ABI) loaded through
 * `Deno.dlopen`, with a memory ledger that counts every byte by category.
 *
 * @example
 * ```ts
 * import { getDevice, quantize, Tensor } from "./mod.ts";
 * const device = getDevice();
 * using w = Tensor.randn([4096, 256], { std: 0.02, dtype: "bf16", category: "weights" });
 * using q = quantize(w, { quantType: "nf4", doubleQuant: true });
 * console.log(q.toString(), device.memory().current.quantized_weights);
 * ```
 *
 * @module
 */

export * from "./lib/errors.ts";
export * from "./lib/dtype.ts";
export * from "./lib/memory.ts";
export { type Backend, libraryPath } from "./lib/ffi/library.ts";
export {
  backendAvailable,
  Device,
  getDevice,
  memory,
  type PressureHandler,
  setMemoryBudget,
} from "./lib/device.ts";
export { fillOrDispose, type RandnOptions, shapeSize, Tensor, type TensorOptions } from "./lib/tensor.ts";
export { HostTensor } from "./lib/host_tensor.ts";
export * from "./lib/quant.ts";
export * from "./lib/ops.ts";
export * from "./lib/lora.ts";
export * from "./lib/linear_speed.ts";
export * from "./lib/optimizer.ts";
export * from "./lib/adamw.ts";
export * from "./lib/adamw8bit.ts";
export * from "./lib/paged_adamw.ts";
export * from "./lib/model_ops.ts";
export * from "./lib/llama_config.ts";
export * from "./lib/model.ts";
export * from "./lib/kv_cache.ts";
export * from "./lib/sampling.ts";
export * from "./lib/generation.ts";
export * from "./lib/text_stream.ts";
export * from "./lib/weights_file.ts";
export * from "./lib/model_dir.ts";
export * from "./lib/examples.ts";
export * from "./lib/batches.ts";
export * from "./lib/schedule.ts";
export * from "./lib/trainer.ts";
export * from "./lib/training_progress.ts";
export * from "./lib/tiny_base.ts";
export * from "./lib/stats.ts";
export * from "./lib/quality.ts";
export * from "./lib/resume.ts";
export { AtomicFile, type AtomicFileOptions, withAtomicFile, writeFileAtomic } from "./lib/atomic_file.ts";
export {
  bytesPerElement,
  isSafetensorsDtype,
  parseSafetensorsHeader,
  type SafetensorsDtype,
  type SafetensorsHeader,
  type TensorEntry,
  type TensorInfo,
} from "./lib/safetensors_header.ts";
export * from "./lib/safetensors_reader.ts";
export * from "./lib/safetensors_writer.ts";
export * from "./lib/checkpoint.ts";
export * from "./lib/plot.ts";
export * from "./lib/data.ts";
export * from "./lib/estimate.ts";
export * from "./lib/estimate_inference.ts";
export * from "./lib/fit.ts";
export * from "./lib/tokenizer.ts";
export * from "./lib/gguf_quant.ts";
export * from "./lib/gguf_format.ts";
export * from "./lib/gguf_writer.ts";
export * from "./lib/gguf_reader.ts";
export * from "./lib/gguf_tokenizer.ts";
export * from "./lib/gguf.ts";
