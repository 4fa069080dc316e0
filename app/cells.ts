/**
 * What the page makes of dropped files: which are cell images, and each
 * cell's sample and label from the folders it came in. Pure (no DOM), so the
 * rules are tested under Deno.
 *
 * The folder rule, as the command line's image-folder layout reads it:
 * - a loose image (dropped on its own) belongs to the sample "single images";
 * - `root/cell.png` belongs to the sample `root`, without a label;
 * - `root/…/<folder>/cell.png`: the sample is `root`; `<folder>` is the label
 *   when subfolders are read as cell types (the default), or the sample is
 *   `root/…/<folder>` when subfolders are read as samples (a folder per smear
 *   or patient).
 */

/** How subfolders of a dropped folder are read. */
export type FolderRule = "labels" | "samples";

/** The sample loose images are counted in. */
export const LOOSE_SAMPLE = "single images";

/** Extensions of the images browsers decode (TIFF is not one: convert it first). */
export const IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"] as const;

/** Where a cell came from. */
export interface CellSource {
  /** Relative path as dropped: `root/sub/cell.png`, or `cell.png` for a loose file. */
  path: string;
  /** File name. */
  name: string;
  /** The folder holding it (`root/sub`), "" for a loose file. */
  folder: string;
  /** Sample (smear, patient) it is counted in. */
  sample: string;
  /** Cell type from its folder, or null. */
  label: string | null;
}

/** A file that is not taken as a cell, and why. */
export interface Refused {
  path: string;
  reason: string;
}

/** Whether the page tries to decode `path` as an image (by extension). */
export function looksLikeImage(path: string): boolean {
  const lower = path.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

/** Hidden files and folders (`.DS_Store`, `.git/…`) and `Thumbs.db` are passed over silently. */
export function isHidden(path: string): boolean {
  const parts = path.split("/");
  return parts.some((p) => p.startsWith(".")) || parts[parts.length - 1] === "Thumbs.db";
}

/** The sample and label of the file at relative path `path` under `rule`. */
export function placeCell(path: string, rule: FolderRule = "labels"): CellSource {
  const parts = path.split("/").filter((p) => p !== "");
  const name = parts[parts.length - 1] ?? path;
  const folder = parts.slice(0, -1).join("/");
  if (parts.length === 1) return { path, name, folder, sample: LOOSE_SAMPLE, label: null };
  if (parts.length === 2) return { path, name, folder, sample: parts[0], label: null };
  if (rule === "samples") return { path, name, folder, sample: folder, label: null };
  return { path, name, folder, sample: parts[0], label: parts[parts.length - 2] };
}

/**
 * Sorts dropped paths into cells and refusals: hidden files are dropped
 * silently, other non-image names are refused with the reason, the rest
 * are placed by `rule`. Order: as given.
 */
export function sortDropped(
  paths: readonly string[],
  rule: FolderRule = "labels",
): { cells: CellSource[]; refused: Refused[] } {
  const cells: CellSource[] = [];
  const refused: Refused[] = [];
  for (const p of paths) {
    if (isHidden(p)) continue;
    if (!looksLikeImage(p)) {
      const dot = p.lastIndexOf(".");
      const ext = dot > p.lastIndexOf("/") ? p.slice(dot) : "";
      const tiff = /^\.tiff?$/i.test(ext);
      refused.push({
        path: p,
        reason: tiff
          ? "TIFF images are not decoded by browsers; convert them to PNG (e.g. with bloom ingest)"
          : `not an image (${ext ? `a ${ext} file` : "no extension"}); ` +
            `the page reads ${IMAGE_EXTENSIONS.join(" ")}`,
      });
      continue;
    }
    cells.push(placeCell(p, rule));
  }
  return { cells, refused };
}
