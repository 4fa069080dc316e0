/**
 * Small plotting helpers shared by the figures: a categorical palette, XML
 * escaping and number formatting for axes. Pure string work, so the browser
 * page draws with them too; rasterising is plot_png.ts.
 */

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
