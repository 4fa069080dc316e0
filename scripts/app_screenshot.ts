/**
 * Regenerates docs/app.png, the README's picture of the web page: a small
 * random ViT (no download), a folder of synthetic cells in five labelled
 * types, kNN with the labelled cells left out of their own vote, one cell's
 * patch PCA; captured in headless Chromium (app/driver.ts) and shrunk.
 *
 *   deno run -A scripts/app_screenshot.ts [OUT.png]
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import {
  findChromium,
  loadWeights,
  openPage,
  waitSettled,
  writeRandomCheckpoint,
} from "../app/driver.ts";
import { writeSyntheticImageFolder } from "../pipelines/synthetic.ts";

const out = Deno.args[0] ?? new URL("../docs/app.png", import.meta.url).pathname;
const chromium = findChromium();
if (!chromium) throw new Error("no Chromium: install Debian's chromium package");
const dir = await Deno.makeTempDir({ prefix: "bloom-screenshot-" });
const s = await openPage(chromium);
try {
  const weights = join(dir, "bloom-demo.pth");
  await writeRandomCheckpoint(weights, {
    arch: "custom",
    dim: 48,
    depth: 2,
    heads: 3,
    mlpHidden: 96,
    ffn: "mlp",
    patch: 14,
    registers: 0,
    posGrid: 4,
    eps: 1e-6,
    posInterp: "runtime",
  }, 1);
  await writeSyntheticImageFolder(join(dir, "smear-01"), { perClass: 6, size: 96, seed: 3 });
  if (await loadWeights(s.page, weights, { size: 56, heads: 3, batch: 10 }) !== "loaded") {
    throw new Error(
      `the page could not load the weights: ${await s.page.textContent("#messages")}`,
    );
  }
  await s.page.fill("#k", "5");
  await s.page.setInputFiles("#folder-input", join(dir, "smear-01"));
  await waitSettled(s.page);
  await s.page.locator("#gallery figure.cell").nth(7).click();
  await s.page.waitForSelector("body[data-pca=shown]");
  await s.page.locator("#umap circle[data-i]").nth(3).hover({ force: true });
  const shot = await s.page.screenshot({ fullPage: true });
  const png = await sharp(shot).resize({ width: 960 }).png({ palette: true, quality: 90 })
    .toBuffer();
  await Deno.writeFile(out, png);
  console.log(`wrote ${out} (${(png.length / 1024).toFixed(0)} KiB)`);
} finally {
  await s.close();
  await Deno.remove(dir, { recursive: true });
}
