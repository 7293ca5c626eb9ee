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

// The public API, layer by layer (lib/<layer>/mod.ts; tests/layering_test.ts keeps the order). Where a
// layer's mod.ts also serves the layers above with internals, its public names are listed.
export {
  BackendError,
  type CategoryBytes,
  DisposedError,
  InvalidArgumentError,
  NonFiniteError,
  type OutOfMemoryDetails,
  OutOfMemoryError,
  QloraError,
  SafetensorsError,
  Xorshift128,
} from "./lib/base/mod.ts";
export { type Backend, libraryPath } from "./lib/native/mod.ts";
export * from "./lib/core/mod.ts";
export * from "./lib/nn/mod.ts";
export {
  type Batch,
  type BatchOptions,
  BatchSampler,
  type BatchSource,
  ByteTokenizer,
  type ByteTokenizerJSON,
  type ByteTokenizerOptions,
  CORPUS_NAMES,
  type CorpusDocument,
  type CorpusName,
  datasetSource,
  type DocumentSplit,
  type EncodedPair,
  type EncodeOptions,
  encodePair,
  type EncodePairOptions,
  type Example,
  exampleSource,
  type ExampleSourceOptions,
  fingerprint,
  type HFDecodeOptions,
  HFTokenizer,
  type HFTokenizerFiles,
  loadCorpus,
  type LoadCorpusOptions,
  loadDocuments,
  parseExamples,
  type SamplerState,
  stripBrownTags,
  TextDataset,
  type TextDatasetOptions,
  TextStream,
  type TokenBatch,
  type Tokenizer,
  TokenizerFileError,
} from "./lib/data/mod.ts";
export {
  AtomicFile,
  type AtomicFileOptions,
  bytesPerElement,
  decodeTensor,
  dequantizeCheckpoint,
  dequantizeIQ4_NL,
  dequantizeQ4_0,
  dequantizeQ8_0,
  encodeTensor,
  GGML_TYPES,
  ggmlTensorBytes,
  type GGMLType,
  type GGMLTypeInfo,
  ggmlTypeName,
  ggmlTypeOf,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_TOKEN_TYPES,
  GGUF_VALUE_TYPES,
  GGUF_VERSION,
  ggufArray,
  type GGUFMetadata,
  ggufPlain,
  GGUFReader,
  type GGUFScalar,
  type GGUFScalarType,
  type GGUFTensorEntry,
  type GGUFTensorInfo,
  ggufTokenizerFromFiles,
  ggufTokenizerMetadata,
  type GGUFTokenizerOptions,
  type GGUFValue,
  ggufValue,
  GGUFWriter,
  type GGUFWriterOptions,
  IQ4_NL_VALUES,
  isSafetensorsDtype,
  loadQuantGroup,
  parseGroup,
  parseSafetensorsHeader,
  type QuantGroup,
  quantizeCheckpoint,
  type QuantizeCheckpointOptions,
  quantizeIQ4_NL,
  quantizeQ4_0,
  quantizeQ8_0,
  readSafetensors,
  type SafetensorsDtype,
  type SafetensorsHeader,
  SafetensorsReader,
  SafetensorsWriter,
  STATE_KEY,
  type TensorData,
  type TensorEntry,
  type TensorInfo,
  type TensorReport,
  withAtomicFile,
  writeFileAtomic,
  writeSafetensors,
} from "./lib/io/mod.ts";
export * from "./lib/optim/mod.ts";
export * from "./lib/llama/mod.ts";
export * from "./lib/train/mod.ts";
export * from "./lib/estimate/mod.ts";
export * from "./lib/lab/mod.ts";
