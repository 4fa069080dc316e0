/**
 * bloom — DinoBloom, the foundation model for single blood-cell images, on
 * Deno and WebGPU.
 *
 * ```ts
 * import { Model } from "./mod.ts";
 * const model = await Model.load("dinobloom-s"); // or a checkpoint path
 * // rgb: [batch, S, S, 3] uint8 cells of any side S, resized to 224 for the model.
 * const { features, patchTokens } = await model.embedPixels(rgb, batch, S, { patchTokens: true });
 * // features: [batch, 384] CLS embeddings; patchTokens: [batch, 256, 384].
 * ```
 *
 * The layers underneath are exported too: the WebGPU runtime and kernels,
 * the autodiff graph and the ViT, checkpoint and array formats, the data
 * pipelines, training and evaluation.
 *
 * @module
 */

// Embedding with a checkpoint.
export { Model } from "./pipelines/model.ts";
export {
  embedBatch,
  type Embeddings,
  embedImages,
  type EmbedModel,
  type EmbedOptions,
} from "./pipelines/embed.ts";
export { type Pooling, POOLINGS } from "./data/embeddings_file.ts";

// Named weights ("dinobloom-s", "dinov2-vitb14"): downloaded, verified, cached (docs/weights.md).
export {
  fetchWeights,
  type FetchWeightsOptions,
  resolveWeights,
  WeightsError,
  WeightsNameError,
} from "./pipelines/weights/download.ts";
export { type CachedWeights, defaultCacheDir, verifyCached } from "./pipelines/weights/cache.ts";
export {
  WEIGHTS,
  type WeightsEntry,
  type WeightsName,
  type WeightsSource,
} from "./pipelines/weights/registry.ts";
export { acquireLock, Lock, LockHeldError, type LockOptions } from "./data/lock.ts";

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
export { grid, type Kernel, kernel, type StorageAccess } from "./kernels/kernel.ts";
export { Uniforms } from "./kernels/uniforms.ts";
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
export { stratifiedKFold, trainTestSplit } from "./eval/split.ts";

// Training.
export { dinobloomConfig, PRESETS, type TrainConfig } from "./pipelines/train/config.ts";
export { NonFiniteLossError, type StepMetrics, Trainer } from "./pipelines/train/trainer.ts";
export { type RunOptions, type RunSummary, runTraining } from "./pipelines/train/run.ts";
/** Data-parallel runs (docs/distributed.md): `runTraining(gpu, { …, comm: joinWorld() })`. */
export { type Comm, SoloComm } from "./pipelines/mpi/comm.ts";
export { joinWorld, runRanked } from "./pipelines/mpi/world.ts";

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
export { type EvalOptions, markdownReport, PROTOCOLS, runEval } from "./eval/run.ts";
/** Which split a number was measured on: origin and membership hash, recorded in every report. */
export { carriedSplit, type SplitRecord, splitRecord, splitSha256 } from "./eval/split_record.ts";
export { matrix } from "./eval/matrix.ts";
export { writeUmapFigure } from "./eval/umap_figure.ts";
export { writePatchPcaFigure } from "./eval/patch_pca_figure.ts";

// Using trained heads (docs/predict.md): what `eval --save` writes and `predict` applies.
/** A saved linear probe: `Probe.load(path)`, `probe.predict(x)`, `probe.save(path)`. */
export { Probe, type ProbePrediction } from "./eval/probe.ts";
/** A saved kNN reference set with its out-of-distribution distance threshold. */
export { KnnIndex, type KnnQuery } from "./eval/knn_index.ts";
/** A saved MIL head; `predictBag` gives a patient's subtype probabilities and cell attention. */
export { MilHead } from "./eval/mil_head.ts";
/** What every head records about the embeddings it was trained on, and the errors of head files. */
export { type EmbeddingModel, HeadFileError, HeadMismatchError } from "./eval/head_file.ts";
/** Differential counts per sample, with 95 % Wilson intervals. */
export { differentialCount, type DifferentialTable, wilsonInterval } from "./eval/differential.ts";
/** Batch effects: per-source silhouettes, kNN source and cell-type accuracy, verdicts. */
export { batchEffects, type BatchEffectsReport } from "./eval/batch_effects.ts";
/** scikit-learn's silhouette coefficients. */
export { silhouetteSamples, silhouetteScore } from "./eval/silhouette.ts";
/** The exact kNN search, screened with integer SIMD codes (the float64 search's answer, faster). */
export { screenedNeighborSearch } from "./eval/knn_screened.ts";
/** `bloom predict` as a function: heads applied to images or a features file. */
export { type PredictOptions, type PredictSummary, runPredict } from "./pipelines/predict_run.ts";
