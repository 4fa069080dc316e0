/**
 * Small plotting helpers shared by the figures: a categorical palette, XML
 * escaping, number formatting for axes, and SVG → PNG rasterisation with
 * sharp (librsvg; text is drawn with the fonts fontconfig finds, DejaVu Sans
 * on our machines — without any font, labels would be missing from the PNG
 * while the SVG still carries them).
 */
import sharp from "sharp";

/** Font stack for every text element (DejaVu Sans ships with most Linux systems). */
export const FONT = "DejaVu Sans, Verdana, Arial, sans-serif";

/**
 * Twenty well-separated colours (matplotlib's tab10, then the lighter tab20
 * partners), enough for BMC's 21 classes with one generated extra.
 */
const BASE_PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
  "#aec7e8",
  "#ffbb78",
  "#98df8a",
  "#ff9896",
  "#c5b0d5",
  "#c49c94",
  "#f7b6d2",
  "#c7c7c7",
  "#dbdb8d",
  "#9edae5",
]; // deno-fmt-ignore

/** The colour of class `i`: the palette, then golden-angle hues beyond it. */
export function classColor(i: number): string {
  if (i < BASE_PALETTE.length) return BASE_PALETTE[i];
  const hue = ((i - BASE_PALETTE.length) * 137.508) % 360;
  return `hsl(${hue.toFixed(1)}, 65%, 45%)`;
}

/** Escapes text for SVG content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&apos;");
}

/** A coordinate for SVG output: two decimals, no trailing zeros. */
export function fmt(v: number): string {
  return String(Math.round(v * 100) / 100);
}

/**
 * Renders an SVG document to PNG with sharp. `scale` multiplies the SVG's
 * own pixel size (density 72·scale dpi).
 */
export async function svgToPng(svg: string, scale = 1): Promise<Uint8Array> {
  if (!(scale > 0)) throw new RangeError(`svgToPng: scale ${scale} must be > 0`);
  const png = await sharp(new TextEncoder().encode(svg), { density: 72 * scale }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/** Writes `svg` to `<base>.svg` and its PNG rendering to `<base>.png`; returns both paths. */
export async function writeSvgAndPng(
  base: string,
  svg: string,
  scale = 1,
): Promise<{ svg: string; png: string }> {
  const paths = { svg: `${base}.svg`, png: `${base}.png` };
  await Deno.writeTextFile(paths.svg, svg);
  await Deno.writeFile(paths.png, await svgToPng(svg, scale));
  return paths;
}
