/**
 * bloom — DinoBloom, the foundation model for single blood-cell images, on
 * Deno and WebGPU.
 *
 * ```ts
 * import { Model } from "./mod.ts";
 * const model = await Model.load("DinoBloom-S.pth");
 * const { cls, patchTokens } = await model.embedPixels(rgb, batch, 224, { patchTokens: true });
 * ```
 *
 * The layers underneath are exported too: the WebGPU runtime and kernels,
 * the autodiff graph and the ViT, checkpoint and array formats, the data
 * pipelines, training and evaluation.
 *
 * @module
 */

// Embedding with a checkpoint.
export { type Embeddings, Model } from "./pipelines/model.ts";

// GPU runtime.
export {
  type AdapterDescription,
  getGpu,
  Gpu,
  type GpuFeatures,
  type GpuLimits,
  type GpuOptions,
  Recording,
  type SubmitStats,
  type Timing,
} from "./kernels/runtime.ts";
export {
  DeviceLostError,
  GpuError,
  GpuLimitError,
  NoAdapterError,
  ShaderCompileError,
} from "./kernels/errors.ts";
export { type BufferView, type DType, GpuTensor } from "./kernels/tensor.ts";
export {
  grid,
  type Kernel,
  kernel,
  Params as KernelParams,
  type StorageAccess,
} from "./kernels/kernel.ts";
export { BufferPool, type PoolStats } from "./kernels/pool.ts";

// Autodiff graph, modules and the DINOv2 ViT family.
export { Graph } from "./graph/graph.ts";
export { Tensor } from "./graph/tensor.ts";
export { type Param, ParamArena, type ParamSpec } from "./graph/arena.ts";
export { Params } from "./graph/params.ts";
export * as ops from "./graph/ops.ts";
export {
  ARCHS,
  type VitArch,
  type VitConfig,
  vitConfig,
  vitForward,
  type VitOutputs,
  vitParamSpecs,
} from "./graph/vit.ts";
export { type HeadConfig, headConfig, headForward, headParamSpecs } from "./graph/heads.ts";
export {
  type CheckpointLayout,
  CheckpointMismatchError,
  loadCheckpoint,
  type LoadedModel,
  openCheckpoint,
} from "./graph/checkpoint.ts";

// File formats (.pth, safetensors, npy, tar).
export * from "./data/mod.ts";

// Data pipelines.
export { type Batch, openLoader, uploadBatch } from "./pipelines/loader.ts";
export { runIngest } from "./pipelines/ingest/run.ts";
export { Progress } from "./pipelines/progress.ts";
export { augmentGlobalCrops, evalTransform } from "./pipelines/augment.ts";
export {
  renderCell,
  SYNTHETIC_CLASSES,
  syntheticDataset,
  writeSyntheticImageFolder,
} from "./pipelines/synthetic.ts";
export { embedBatch, type Pool } from "./pipelines/embed.ts";
export { stratifiedKFold, trainTestSplit } from "./eval/split.ts";

// Training.
export { dinobloomConfig, PRESETS, type TrainConfig } from "./pipelines/train/config.ts";
export { NonFiniteLossError, type StepMetrics, Trainer } from "./pipelines/train/trainer.ts";
export { type RunOptions, type RunSummary, runTraining } from "./pipelines/train/run.ts";

// Evaluation.
export { evaluateEmbeddings } from "./eval/protocols.ts";
export { KNeighborsClassifier } from "./eval/knn.ts";
export { LogisticRegression, probeC } from "./eval/logreg.ts";
export {
  accuracy,
  balancedAccuracy,
  classificationMetrics,
  confusionMatrix,
  meanStd,
  precisionRecallF1,
  weightedF1,
} from "./eval/metrics.ts";
export { markdownTable, reportJson } from "./eval/report.ts";
export { matrix } from "./eval/matrix.ts";
export { writeUmapFigure } from "./eval/umap_figure.ts";
export { writePatchPcaFigure } from "./eval/patch_pca_figure.ts";
