/**
 * The errors bloom raises for bad user input, and the checkpoint and array
 * readers'/writers' errors, which are part of that family.
 *
 * `InputError` is the one base class for "what you gave bloom cannot be used":
 * a flag, a path, a dataset, a config, a checkpoint or embeddings file. Its
 * message alone tells the user what to fix (it names the file, key or flag),
 * so the command line prints only the message and exits with code 2; any
 * other error is a failure of bloom or of the machine (exit code 1).
 *
 * Every message names the file, the key (tensor name, zip entry or header
 * field) and, where there is one, the expected against the found value and
 * what the user can do.
 */

/**
 * Bad user input: a flag, path, file or config that cannot be used as given.
 * The message names what is wrong and the fix; `runMain` prints it alone and
 * exits with code 2.
 */
export class InputError extends Error {
  override name = "InputError";
}

/**
 * A bad or unreadable field of a file in one of bloom's own formats (an
 * embeddings file, a saved head). Message shape: `FILE: FIELD: what. fix`.
 */
export class FileFieldError extends InputError {
  override name = "FileFieldError";
  readonly file: string;
  readonly field: string;
  constructor(file: string, field: string, what: string, fix?: string) {
    super(`${file}: ${field}: ${what}${fix ? `. ${fix}` : ""}`);
    this.file = file;
    this.field = field;
  }
}

/** What a CheckpointError is about. */
export interface CheckpointErrorInfo {
  /** Path of the file read or written. */
  file: string;
  /** Tensor name, zip entry, header field or byte position the problem is at. */
  key?: string;
  /** What the format requires there. */
  expected?: string;
  /** What the file holds there. */
  found?: string;
  /** What the user can do about it. */
  fix?: string;
  /** The underlying error (I/O, JSON parse), if any. */
  cause?: unknown;
}

/**
 * Base class of every error raised under data/: a checkpoint or array file
 * could not be read or written. Message shape:
 * `FILE: KEY: what happened (expected E, found F). fix`.
 *
 * An InputError: each names a file the user passed (or an output path they
 * chose) and what to do about it. That includes the writers' errors: an
 * unwritable `--out` and a tensor the caller cannot store are fixed by the
 * caller too.
 */
export class CheckpointError extends InputError {
  override name = "CheckpointError";
  readonly file: string;
  readonly key?: string;
  readonly expected?: string;
  readonly found?: string;

  constructor(what: string, info: CheckpointErrorInfo) {
    let msg = `${info.file}: ${info.key !== undefined ? `${info.key}: ` : ""}${what}`;
    if (info.expected !== undefined || info.found !== undefined) {
      msg += ` (expected ${info.expected ?? "?"}, found ${info.found ?? "?"})`;
    }
    if (info.fix) msg += `. ${info.fix}`;
    super(msg, info.cause !== undefined ? { cause: info.cause } : undefined);
    this.file = info.file;
    this.key = info.key;
    this.expected = info.expected;
    this.found = info.found;
  }
}

/** The file is damaged: truncated, offsets out of range, bad checksum, broken structure. */
export class CorruptFileError extends CheckpointError {
  override name = "CorruptFileError";
}

/**
 * The file asks for something bloom refuses on principle: a pickle global or
 * opcode that could run code, or a zip entry whose path leaves the archive.
 */
export class UnsafeFileError extends CheckpointError {
  override name = "UnsafeFileError";
}

/** The file is well formed but uses a feature bloom does not read (a dtype, Fortran order). */
export class UnsupportedFormatError extends CheckpointError {
  override name = "UnsupportedFormatError";
}

/**
 * The file asks for more than one of bloom's stated caps allows (data/limits.ts):
 * a name, nesting, rank or size past the limit, or building more than a small
 * multiple of the file's own size. Names the field and the limit.
 */
export class LimitError extends CheckpointError {
  override name = "LimitError";
}

/** A tensor or entry the caller asked for is not in the file. */
export class MissingKeyError extends CheckpointError {
  override name = "MissingKeyError";
}

/** The caller handed a writer something it cannot write (bad shape, data length, name). */
export class InvalidTensorError extends CheckpointError {
  override name = "InvalidTensorError";
}

/**
 * Wraps an I/O failure (file missing, permission, disk full) as a
 * CheckpointError naming the file and what was being done.
 */
export function ioError(file: string, doing: string, cause: unknown): CheckpointError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new CheckpointError(`cannot ${doing}: ${detail}`, { file, cause });
}
