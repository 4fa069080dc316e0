/**
 * Files the user hands the page, with their relative paths: a drop of files
 * and folders (walked through the File System entries API, every directory
 * read to its end) or a file input (`webkitRelativePath` for a folder input).
 */

/** A dropped file and its path relative to what was dropped (`root/sub/cell.png`). */
export interface PickedFile {
  file: File;
  path: string;
}

function fileOf(entry: FileSystemFileEntry): Promise<File> {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

/** All entries of a directory (readEntries returns them in batches until an empty one). */
async function readAll(dir: FileSystemDirectoryEntry): Promise<FileSystemEntry[]> {
  const reader = dir.createReader();
  const out: FileSystemEntry[] = [];
  for (;;) {
    const batch = await new Promise<FileSystemEntry[]>((resolve, reject) =>
      reader.readEntries(resolve, reject)
    );
    if (batch.length === 0) return out;
    out.push(...batch);
  }
}

async function walk(entry: FileSystemEntry, prefix: string, out: PickedFile[]): Promise<void> {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  if (entry.isFile) {
    out.push({ file: await fileOf(entry as FileSystemFileEntry), path });
  } else if (entry.isDirectory) {
    for (const child of await readAll(entry as FileSystemDirectoryEntry)) {
      await walk(child, path, out);
    }
  }
}

/** The files of a drop, folders walked, sorted by path. */
export async function droppedFiles(dt: DataTransfer): Promise<PickedFile[]> {
  const out: PickedFile[] = [];
  const entries = [...dt.items]
    .filter((it) => it.kind === "file")
    .map((it) => it.webkitGetAsEntry())
    .filter((e): e is FileSystemEntry => e !== null);
  if (entries.length) {
    for (const e of entries) await walk(e, "", out);
  } else {
    for (const file of dt.files) out.push({ file, path: file.name });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The files of a file input (a folder input gives relative paths), sorted by path. */
export function inputFiles(input: HTMLInputElement): PickedFile[] {
  const out = [...(input.files ?? [])].map((file) => ({
    file,
    path: file.webkitRelativePath || file.name,
  }));
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Offers `data` as a download called `name`. */
export function download(name: string, data: Blob | Uint8Array | string, type: string): void {
  const blob = data instanceof Blob ? data : new Blob([data as BlobPart], { type });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
