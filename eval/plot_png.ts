/**
 * SVG → PNG rasterisation with sharp (librsvg; text is drawn with the fonts
 * fontconfig finds, DejaVu Sans on our machines — without any font, labels
 * would be missing from the PNG while the SVG still carries them), and
 * writing a figure as both. The command line's half of the figures: the
 * browser page rasterises on a canvas instead.
 */
import sharp from "npm:sharp@0.34.5";

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
