/**
 * bloom's checkpoint and array formats: PyTorch `.pth` (zip + restricted
 * pickle), safetensors and npy, all read lazily by seeking and written
 * atomically, with one tensor type (TensorRecord) for all of them.
 *
 * ```ts
 * import { openPth, withPrefix } from "./data/mod.ts";
 * using ckpt = await openPth("DinoBloom-S.pth");
 * const backbone = withPrefix(ckpt.tensors, "teacher.backbone.");
 * const pos = await backbone.get("pos_embed")!.f32(); // [1, 257, 384]
 * ```
 *
 * @module
 */
export {
  CheckpointError,
  type CheckpointErrorInfo,
  CorruptFileError,
  InputError,
  InvalidTensorError,
  LimitError,
  MissingKeyError,
  UnsafeFileError,
  UnsupportedFormatError,
} from "./errors.ts";
export {
  bf16ToNumber,
  DTYPE_SIZE,
  type DtypeName,
  DTYPES,
  f16ToNumber,
  fromFloat32,
  isDtype,
  numberToBf16,
  numberToF16,
  toFloat32,
} from "./dtypes.ts";
export {
  isTensorData,
  isTensorRecord,
  type TensorData,
  type TensorFile,
  type TensorRecord,
  type TensorSource,
} from "./record.ts";
export {
  openPth,
  type OpenPthOptions,
  PthCheckpoint,
  PthDict,
  PthTensor,
  type PthValue,
} from "./pth.ts";
export { type PthLeaf, type PthTree, writePth, type WritePthOptions } from "./pth_writer.ts";
export {
  encodeSafetensors,
  openSafetensors,
  SafetensorsFile,
  writeSafetensors,
} from "./safetensors.ts";
export { blobSource, type ByteSource, type FileSource } from "./file.ts";
export {
  createNpyWriter,
  NpyFile,
  type NpyHeader,
  NpyRowWriter,
  type NpyWriterOptions,
  openNpy,
  readNpy,
  writeNpy,
} from "./npy.ts";
export { openTensorFile, sniffFormat, type TensorFileFormat, withPrefix } from "./open.ts";
export { type ZipEntry, ZipReader } from "./zip.ts";
export { ZipWriter, type ZipWriterOptions } from "./zip_writer.ts";
export { type PickleValue, unpickle } from "./pickle.ts";
export { LIMITS } from "./limits.ts";
export { readTar, readTarFile, type TarFile, TarFormatError, type TarSource } from "./tar.ts";
