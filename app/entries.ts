/**
 * Walking what the user dropped: files and folders as the browser's File
 * System entries API hands them over (`DataTransferItem.webkitGetAsEntry`).
 * Every directory is read to its end (`readEntries` answers in batches, an
 * empty one last), and a folder or file that cannot be read is reported with
 * the reason while the rest of the drop goes on. Typed structurally, so the
 * tests walk fake trees under Deno.
 */

/** A dropped file and its path relative to what was dropped (`root/sub/cell.png`). */
export interface PickedFile {
  file: File;
  path: string;
}

/** What the walk needs of a `FileSystemEntry`. */
export interface EntryLike {
  readonly name: string;
  readonly isFile: boolean;
  readonly isDirectory: boolean;
  /** FileSystemFileEntry. */
  file?(ok: (f: File) => void, fail: (e: unknown) => void): void;
  /** FileSystemDirectoryEntry. */
  createReader?(): {
    readEntries(ok: (batch: EntryLike[]) => void, fail: (e: unknown) => void): void;
  };
}

/** A dropped path the page could not read, and why. */
export interface Unreadable {
  path: string;
  reason: string;
}

function reason(e: unknown): string {
  return e instanceof Error ? (e.message || e.name) : String(e);
}

async function walk(
  entry: EntryLike,
  prefix: string,
  out: { files: PickedFile[]; unreadable: Unreadable[] },
): Promise<void> {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  try {
    if (entry.isFile && entry.file) {
      const f = entry.file.bind(entry);
      out.files.push({ file: await new Promise<File>((ok, fail) => f(ok, fail)), path });
    } else if (entry.isDirectory && entry.createReader) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise<EntryLike[]>((ok, fail) => reader.readEntries(ok, fail));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child, path, out);
      }
    }
  } catch (e) {
    out.unreadable.push({
      path: entry.isDirectory ? `${path}/` : path,
      reason: `could not be read (${reason(e)})`,
    });
  }
}

const byPath = (a: PickedFile, b: PickedFile) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/** The files under `entries`, folders walked, sorted by path; and what could not be read. */
export async function walkEntries(
  entries: readonly EntryLike[],
): Promise<{ files: PickedFile[]; unreadable: Unreadable[] }> {
  const out = { files: [] as PickedFile[], unreadable: [] as Unreadable[] };
  for (const e of entries) await walk(e, "", out);
  out.files.sort(byPath);
  return out;
}

/** Loose files (no entries API, or a file input), sorted by path. */
export function looseFiles(files: Iterable<File>): PickedFile[] {
  return [...files].map((file) => ({
    file,
    path: (file as File & { webkitRelativePath?: string }).webkitRelativePath || file.name,
  })).sort(byPath);
}
