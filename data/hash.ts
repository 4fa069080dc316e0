/**
 * SHA-256 of a file, streamed (checkpoints reach 4.5 GB, more than one
 * buffer should hold). Saved heads record the hash of the weights their
 * embeddings came from, so a head is never applied to another model's
 * embeddings by mistake; `--verify-sha256` holds a checkpoint to a known hash.
 */
import { createHash } from "node:crypto";
import { CorruptFileError, InputError, ioError } from "./errors.ts";

/** Lower-case hex SHA-256 of the file at `path`; a missing file is a CheckpointError naming it. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw ioError(path, "open the file to hash it", e);
  }
  try {
    for await (const chunk of file.readable) hash.update(chunk);
  } catch (e) {
    throw ioError(path, "read the file to hash it", e);
  }
  return hash.digest("hex");
}

/**
 * The lower-case form of `hex` when it is a SHA-256 (64 hex digits, any
 * case); an InputError naming `flag` otherwise. Commands call it while
 * checking flags, before anything is read.
 */
export function parseSha256(hex: string, flag: string): string {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new InputError(
      `${flag}: expected a SHA-256 of 64 hex digits (as sha256sum prints it), found '${hex}'`,
    );
  }
  return hex.toLowerCase();
}

/**
 * Checks that the file at `path` has SHA-256 `expected` (64 hex digits):
 * a CorruptFileError naming the file and both hashes otherwise. One streamed
 * pass over the file, before any of it is parsed (`--verify-sha256`).
 */
export async function verifySha256(path: string, expected: string): Promise<void> {
  const want = parseSha256(expected, "--verify-sha256");
  const got = await sha256File(path);
  if (got !== want) {
    throw new CorruptFileError("SHA-256 mismatch: not the file that was meant, or damaged", {
      file: path,
      key: "SHA-256",
      expected: want,
      found: got,
      fix: "download or copy the file again, or check the hash given to --verify-sha256",
    });
  }
}
