/**
 * Layout `voc`: Pascal-VOC detection sets (BCCD): `Annotations/*.xml` and
 * `JPEGImages/*.jpg` under the input. Every box of a wanted class (default
 * WBC) becomes a cell sample: the box grown by `margin` of its size on each
 * side, clamped to the image by the decoder. Images without an annotation and
 * annotations without an image are recorded as errors.
 */
import { join } from "node:path";
import {
  type Box,
  byCodeUnit,
  dedupeKeys,
  type Enumeration,
  type InputError,
  isImageName,
  safeKeyPart,
  type SampleSource,
} from "./sample.ts";
import { listDir, requireDir } from "./walk.ts";

/** One object of an annotation file. */
export interface VocObject {
  name: string;
  box: Box;
}

/** A parsed annotation: the image file it names and its objects. */
export interface VocAnnotation {
  filename: string | null;
  width: number | null;
  height: number | null;
  objects: VocObject[];
}

const ENTITIES: Record<string, string> = {
  "&lt;": "<",
  "&gt;": ">",
  "&amp;": "&",
  "&quot;": '"',
  "&apos;": "'",
};

function text(xml: string, tag: string): string | null {
  const m = xml.match(new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`));
  if (!m) return null;
  return m[1]
    .replace(/<!\[CDATA\[([\s\S]*?)\]\]>/g, "$1")
    .replace(/&(lt|gt|amp|quot|apos);/g, (e) => ENTITIES[e])
    .trim();
}

/**
 * Parses the parts of a Pascal-VOC annotation that matter here. VOC files are
 * flat and machine-written, so tag matching is enough; anything that is not
 * an `<annotation>` document, or a box that is not four numbers, throws with
 * the reason.
 */
export function parseVocXml(xml: string): VocAnnotation {
  const body = text(xml.replace(/<!--[\s\S]*?-->/g, ""), "annotation");
  if (body === null) throw new Error("not a Pascal-VOC annotation (no <annotation> element)");
  const size = text(body, "size");
  const num = (s: string | null) => (s === null || s === "" ? null : Number(s));
  const objects: VocObject[] = [];
  for (const m of body.matchAll(/<object(?:\s[^>]*)?>([\s\S]*?)<\/object>/g)) {
    const o = m[1];
    const name = text(o, "name") ?? "";
    const bb = text(o, "bndbox");
    if (bb === null) throw new Error(`object '${name}' has no <bndbox>`);
    const coords = ["xmin", "ymin", "xmax", "ymax"].map((k) => num(text(bb, k)));
    if (coords.some((c) => c === null || !Number.isFinite(c))) {
      throw new Error(`object '${name}' has a <bndbox> without four numbers`);
    }
    const [xmin, ymin, xmax, ymax] = coords as number[];
    objects.push({ name, box: { xmin, ymin, xmax, ymax } });
  }
  return {
    filename: text(body, "filename"),
    width: size ? num(text(size, "width")) : null,
    height: size ? num(text(size, "height")) : null,
    objects,
  };
}

/** The crop for a box: grown by `margin` × its width/height on each side (clamped later). */
export function boxWithMargin(box: Box, margin: number) {
  const w = box.xmax - box.xmin;
  const h = box.ymax - box.ymin;
  return {
    left: box.xmin - margin * w,
    top: box.ymin - margin * h,
    width: w * (1 + 2 * margin),
    height: h * (1 + 2 * margin),
  };
}

function stem(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

/** Lists one cell sample per wanted box of a VOC tree. */
export async function enumerateVoc(
  root: string,
  opts: { classes?: string[] } = {},
): Promise<Enumeration> {
  await requireDir(root, "--input");
  const annDir = join(root, "Annotations");
  const imgDir = join(root, "JPEGImages");
  await requireDir(annDir, "VOC annotation folder (<input>/Annotations)");
  await requireDir(imgDir, "VOC image folder (<input>/JPEGImages)");
  const wanted = opts.classes ?? ["WBC"];
  const errors: InputError[] = [];
  const samples: SampleSource[] = [];

  const images = new Map<string, string>(); // stem -> file name
  for (const f of (await listDir(imgDir)).files) {
    if (isImageName(f) && !images.has(stem(f))) images.set(stem(f), f);
  }
  const annotations = (await listDir(annDir)).files.filter((f) => f.toLowerCase().endsWith(".xml"))
    .sort(byCodeUnit);
  const annotated = new Set<string>();
  for (const a of annotations) {
    const annPath = join(annDir, a);
    const s = stem(a);
    annotated.add(s);
    let ann: VocAnnotation;
    try {
      ann = parseVocXml(await Deno.readTextFile(annPath));
    } catch (e) {
      errors.push({ path: annPath, reason: `bad annotation: ${(e as Error).message}` });
      continue;
    }
    // VOC names the image after the annotation; <filename> is the fallback.
    const file = images.get(s) ??
      (ann.filename && images.has(stem(ann.filename)) ? images.get(stem(ann.filename)) : null);
    if (!file) {
      errors.push({
        path: annPath,
        reason: `orphan annotation: no image JPEGImages/${s}.jpg (or <filename> ${ann.filename})`,
      });
      continue;
    }
    const rel = `JPEGImages/${file}`;
    ann.objects.forEach((o, i) => {
      const where = `${annPath}#object${i}`;
      if (o.name === "") {
        errors.push({ path: where, reason: "empty label" });
        return;
      }
      if (!wanted.includes(o.name)) return; // other classes are not cells we want
      if (!(o.box.xmax > o.box.xmin && o.box.ymax > o.box.ymin)) {
        const b = o.box;
        errors.push({
          path: where,
          reason: `degenerate box (${b.xmin},${b.ymin})-(${b.xmax},${b.ymax})`,
        });
        return;
      }
      samples.push({
        key: `${safeKeyPart(s)}__box${String(i).padStart(2, "0")}`,
        path: join(imgDir, file),
        rel,
        label: o.name,
        box: o.box,
        boxIndex: i,
      });
    });
  }
  for (const [s, f] of [...images].sort((a, b) => byCodeUnit(a[0], b[0]))) {
    if (!annotated.has(s)) {
      errors.push({
        path: join(imgDir, f),
        reason: `missing annotation file Annotations/${s}.xml`,
      });
    }
  }
  return { samples: dedupeKeys(samples, errors), classes: wanted, errors };
}
