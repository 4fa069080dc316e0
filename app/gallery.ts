/**
 * The gallery's order and filters: by name, predicted type, confidence or
 * sample; filtered by predicted type and by name. Pure (app/views.ts draws).
 */

/** What the gallery shows of a cell. */
export interface GalleryCell {
  id: number;
  path: string;
  name: string;
  sample: string;
  label: string | null;
  url: string;
  predicted: string | null;
  confidence: number | null;
}

/** Gallery order and filters. */
export interface GalleryView {
  sort: "path" | "predicted" | "confidence-asc" | "confidence-desc" | "sample";
  type: string;
  text: string;
  limit: number;
  selected: number | null;
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The cells the gallery shows, in its order (pure, for the page and its tests). */
export function galleryOrder(cells: readonly GalleryCell[], v: GalleryView): GalleryCell[] {
  const text = v.text.trim().toLowerCase();
  const shown = cells.filter((c) =>
    (v.type === "" || c.predicted === v.type) &&
    (text === "" || c.path.toLowerCase().includes(text))
  );
  const conf = (c: GalleryCell) => c.confidence ?? -1;
  const cmp: Record<GalleryView["sort"], (a: GalleryCell, b: GalleryCell) => number> = {
    path: (a, b) => byString(a.path, b.path),
    predicted: (a, b) =>
      byString(a.predicted ?? "\uffff", b.predicted ?? "\uffff") || byString(a.path, b.path),
    "confidence-asc": (a, b) => conf(a) - conf(b) || byString(a.path, b.path),
    "confidence-desc": (a, b) => conf(b) - conf(a) || byString(a.path, b.path),
    sample: (a, b) => byString(a.sample, b.sample) || byString(a.path, b.path),
  };
  return shown.sort(cmp[v.sort]);
}
