/**
 * Files the user hands the page, with their relative paths: a drop of files
 * and folders (walked by app/entries.ts) or a file input (`webkitRelativePath`
 * for a folder input); and downloads. DOM glue only.
 */
import { looseFiles, type PickedFile, type Unreadable, walkEntries } from "./entries.ts";

export type { PickedFile, Unreadable };

/** The files of a drop, folders walked, sorted by path; and what could not be read. */
export async function droppedFiles(
  dt: DataTransfer,
): Promise<{ files: PickedFile[]; unreadable: Unreadable[] }> {
  const entries = [...dt.items]
    .filter((it) => it.kind === "file")
    .map((it) => it.webkitGetAsEntry())
    .filter((e): e is FileSystemEntry => e !== null);
  if (entries.length === 0) return { files: looseFiles(dt.files), unreadable: [] };
  return await walkEntries(entries as unknown as Parameters<typeof walkEntries>[0]);
}

/** The files of a file input (a folder input gives relative paths), sorted by path. */
export function inputFiles(input: HTMLInputElement): PickedFile[] {
  return looseFiles(input.files ?? []);
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
