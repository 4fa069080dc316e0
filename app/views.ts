/**
 * Drawing the page's results: the gallery, the differential table, the
 * patch-PCA view and PNG renderings of figures. DOM only; the numbers come
 * from eval/ and app/classify.ts.
 */
import type { DifferentialTable } from "../eval/differential.ts";
import type { PatchColours } from "../eval/patch_pca.ts";
import { type GalleryCell, galleryOrder, type GalleryView } from "./gallery.ts";

/** Renders the gallery; returns how many cells match (all shown up to `limit`). */
export function renderGallery(
  root: HTMLElement,
  cells: readonly GalleryCell[],
  v: GalleryView,
): number {
  const order = galleryOrder(cells, v);
  const frag = document.createDocumentFragment();
  for (const c of order.slice(0, v.limit)) {
    const fig = document.createElement("figure");
    fig.className = "cell";
    if (c.id === v.selected) fig.classList.add("selected");
    if (c.label !== null && c.predicted !== null && c.label !== c.predicted) {
      fig.classList.add("wrong");
    }
    fig.dataset.id = String(c.id);
    fig.title = `${c.path}${c.label ? ` · folder label ${c.label}` : ""}`;
    const img = document.createElement("img");
    img.src = c.url;
    img.loading = "lazy";
    img.alt = c.name;
    const pred = document.createElement("span");
    pred.className = "pred";
    pred.textContent = c.predicted ?? "—";
    const conf = document.createElement("span");
    conf.className = "conf";
    conf.textContent = c.confidence === null ? c.name : `${Math.round(100 * c.confidence)} %`;
    fig.append(img, pred, conf);
    frag.append(fig);
  }
  root.replaceChildren(frag);
  return order.length;
}

/** The differential count as a table: a row per sample, a column per cell type. */
export function renderDifferential(root: HTMLElement, t: DifferentialTable): void {
  const table = document.createElement("table");
  table.className = "diff";
  const head = table.createTHead().insertRow();
  for (const h of ["Sample", "Cells", ...t.classes.map(String)]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  const body = table.createTBody();
  for (const s of t.samples) {
    const tr = body.insertRow();
    tr.dataset.sample = s.sample;
    tr.insertCell().textContent = s.sample;
    tr.insertCell().textContent = String(s.counted);
    t.classes.forEach((c, k) => {
      const td = tr.insertCell();
      td.dataset.class = String(c);
      td.textContent = Number.isNaN(s.percent[k]) ? "–" : `${s.percent[k].toFixed(1)} %`;
      const ci = document.createElement("span");
      ci.className = "ci";
      ci.textContent = Number.isNaN(s.low[k])
        ? ""
        : `n = ${s.counts[k]} · CI ${s.low[k].toFixed(0)}–${s.high[k].toFixed(0)} %`;
      td.append(ci);
    });
  }
  const note = document.createElement("p");
  note.className = "info";
  note.textContent =
    "Percent of each sample's classified cells, with the count and a 95 % Wilson interval.";
  root.replaceChildren(table, note);
}

/** Draws the cell as the model saw it and its patch-PCA colours side by side, each `side` px. */
export function renderPca(
  canvas: HTMLCanvasElement,
  pixels: Uint8Array,
  size: number,
  colours: PatchColours,
  side = 224,
): void {
  canvas.width = 2 * side + 8;
  canvas.height = side;
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  const paint = (rgb: Uint8Array, n: number, x: number) => {
    const img = new ImageData(n, n);
    for (let i = 0; i < n * n; i++) {
      img.data.set(rgb.subarray(3 * i, 3 * i + 3), 4 * i);
      img.data[4 * i + 3] = 255;
    }
    const tile = new OffscreenCanvas(n, n);
    tile.getContext("2d")!.putImageData(img, 0, 0);
    ctx.drawImage(tile, x, 0, side, side);
  };
  paint(pixels, size, 0);
  paint(colours.rgb, colours.grid, side + 8);
}

/** An SVG document rendered to PNG by the browser, at `scale` times its size. */
export async function svgToPng(svg: string, scale = 2): Promise<Blob> {
  const url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(img.naturalWidth * scale);
    canvas.height = Math.round(img.naturalHeight * scale);
    const ctx = canvas.getContext("2d")!;
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    return await canvasPng(canvas);
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** A canvas as a PNG Blob. */
export function canvasPng(canvas: HTMLCanvasElement): Promise<Blob> {
  return new Promise((resolve, reject) =>
    canvas.toBlob(
      (b) => (b ? resolve(b) : reject(new Error("the canvas gave no PNG"))),
      "image/png",
    )
  );
}
