/**
 * The cells a MIL head looked at: a grid of a patient's most-attended cells
 * (up to 16, 4 per row), each tile the cell image with its rank, attention
 * weight and file name, titled with the patient and the head's call. Pure
 * SVG (images embedded as data URIs), rasterised by plot_png.ts.
 */
import { escapeXml, FONT } from "./plot.ts";

/** One tile: a cell image (PNG bytes, or null when it could not be read) and its attention. */
export interface AttentionTile {
  /** PNG bytes of the cell, or null: a grey tile saying the image is missing. */
  png: Uint8Array | null;
  path: string;
  attention: number;
}

/** Options of `attentionGridSvg`. */
export interface AttentionGridOptions {
  title: string;
  subtitle?: string;
  /** Tile side in px. Default 128. */
  tile?: number;
  /** Tiles per row. Default 4. */
  columns?: number;
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** The last `max` characters of a path (its file name side), for a tile caption. */
function shortName(path: string, max: number): string {
  const name = path.split(/[\\/]/).pop() ?? path;
  return name.length <= max ? name : `…${name.slice(name.length - max + 1)}`;
}

/** An SVG grid of `tiles` (in the given order: most attended first). */
export function attentionGridSvg(
  tiles: readonly AttentionTile[],
  opts: AttentionGridOptions,
): string {
  if (tiles.length === 0) throw new RangeError("attentionGridSvg: no cells to show");
  const T = opts.tile ?? 128;
  const cols = Math.min(opts.columns ?? 4, tiles.length);
  const rows = Math.ceil(tiles.length / cols);
  const gap = 10, caption = 34, top = opts.subtitle ? 64 : 44;
  const W = Math.max(cols * (T + gap) + gap, 420);
  const H = top + rows * (T + caption + gap) + gap;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" ` +
    `width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="${FONT}">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="26" font-size="17" font-weight="bold" text-anchor="middle">` +
    `${escapeXml(opts.title)}</text>`,
  ];
  if (opts.subtitle) {
    out.push(
      `<text x="${W / 2}" y="48" font-size="12" fill="#444" text-anchor="middle">` +
        `${escapeXml(opts.subtitle)}</text>`,
    );
  }
  tiles.forEach((t, i) => {
    const x = gap + (i % cols) * (T + gap);
    const y = top + Math.floor(i / cols) * (T + caption + gap);
    if (t.png) {
      out.push(
        `<image x="${x}" y="${y}" width="${T}" height="${T}" preserveAspectRatio="xMidYMid slice" ` +
          `xlink:href="data:image/png;base64,${base64(t.png)}"/>`,
      );
    } else {
      out.push(
        `<rect x="${x}" y="${y}" width="${T}" height="${T}" fill="#ddd"/>`,
        `<text x="${x + T / 2}" y="${y + T / 2}" font-size="11" fill="#555" ` +
          `text-anchor="middle">image not found</text>`,
      );
    }
    out.push(
      `<rect x="${x}" y="${y}" width="${T}" height="${T}" fill="none" stroke="#888"/>`,
      `<text x="${x + 2}" y="${y + T + 13}" font-size="11">#${i + 1} · attention ` +
        `${t.attention.toFixed(3)}</text>`,
      `<text x="${x + 2}" y="${y + T + 27}" font-size="10" fill="#555">` +
        `${escapeXml(shortName(t.path, Math.floor(T / 6)))}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
