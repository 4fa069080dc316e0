/**
 * Layout `voc`: Pascal-VOC detection sets (BCCD): `Annotations/*.xml` and
 * `JPEGImages/*.jpg` under the input. Every box of a wanted class (default
 * WBC) becomes a cell sample: a square crop centred on the box
 * (`squareCrop`), padded with the smear's edge pixels where it leaves the
 * image. Images without an annotation, annotations without an image and
 * annotations that do not parse are recorded as errors.
 */
import { join } from "node:path";
import type { Region } from "./images.ts";
import {
  type Box,
  byCodeUnit,
  dedupeKeys,
  type Enumeration,
  isImageName,
  type ItemError,
  safeKeyPart,
  type SampleSource,
} from "./sample.ts";
import { listDir, requireDir, walkScope } from "./walk.ts";

/** An annotation that cannot be used; the message says why (and where, for malformed XML). */
export class VocError extends Error {
  override name = "VocError";
}

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

/** Largest annotation file read: 16 MiB (BCCD's are under 2 KB). */
export const MAX_ANNOTATION_BYTES = 16 << 20;

/** Deepest element nesting accepted (a VOC annotation is 4 deep). */
export const MAX_XML_DEPTH = 64;

const ENTITIES: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Replaces XML's predefined and numeric character references; others stay as written. */
function decodeEntities(s: string): string {
  if (!s.includes("&")) return s;
  return s.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]{1,8});/g, (all, e: string) => {
    if (e[0] !== "#") return Object.hasOwn(ENTITIES, e) ? ENTITIES[e] : all;
    const code = e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
    return code <= 0x10ffff ? String.fromCodePoint(code) : all;
  });
}

/** An element of a parsed document: its name, child elements and own text. */
interface XmlElement {
  name: string;
  children: XmlElement[];
  /** Text directly inside it (CDATA included), pieces joined on close. */
  parts: string[];
  text: string;
}

/**
 * A small XML parser, linear in the input: one forward scan, every search
 * (`indexOf`, the tag scanner) starts where the last one ended, so no part
 * of the text is read twice. Elements, text, CDATA; comments, processing
 * instructions and a DOCTYPE are skipped; no DTD entity is ever expanded.
 * Throws on malformed structure with the line it is at.
 */
function parseXml(xml: string): XmlElement {
  const fail = (at: number, why: string): never => {
    let line = 1;
    for (let i = xml.indexOf("\n"); i >= 0 && i < at; i = xml.indexOf("\n", i + 1)) line++;
    throw new VocError(`malformed XML at line ${line}: ${why}`);
  };
  const doc: XmlElement = { name: "", children: [], parts: [], text: "" };
  const stack: XmlElement[] = [doc];
  let i = 0;
  const n = xml.length;
  while (i < n) {
    const lt = xml.indexOf("<", i);
    const textEnd = lt < 0 ? n : lt;
    if (textEnd > i) stack[stack.length - 1].parts.push(decodeEntities(xml.slice(i, textEnd)));
    if (lt < 0) break;
    i = lt;
    const skipTo = (close: string, what: string) => {
      const end = xml.indexOf(close, i);
      if (end < 0) fail(i, `unterminated ${what}`);
      return end;
    };
    if (xml.startsWith("<!--", i)) {
      i = skipTo("-->", "comment") + 3;
    } else if (xml.startsWith("<![CDATA[", i)) {
      const end = skipTo("]]>", "CDATA section");
      stack[stack.length - 1].parts.push(xml.slice(i + 9, end));
      i = end + 3;
    } else if (xml.startsWith("<?", i)) {
      i = skipTo("?>", "processing instruction") + 2;
    } else if (xml.startsWith("<!", i)) {
      // DOCTYPE (an internal subset in [ ] may hold '>'); its entities are never used.
      const gt = skipTo(">", "declaration");
      const open = xml.indexOf("[", i);
      i = open >= 0 && open < gt ? skipTo("]", "DOCTYPE subset") : i;
      i = skipTo(">", "declaration") + 1;
    } else if (xml[i + 1] === "/") {
      const gt = skipTo(">", "end tag");
      const name = xml.slice(i + 2, gt).trim();
      const top = stack[stack.length - 1];
      if (stack.length === 1 || top.name !== name) {
        fail(i, `</${name}> ${stack.length === 1 ? "closes nothing" : `closes <${top.name}>`}`);
      }
      top.text = top.parts.join("").trim();
      top.parts = [];
      stack.pop();
      i = gt + 1;
    } else {
      // A start tag: scan to the '>' outside quoted attribute values.
      let j = i + 1;
      let quote = "";
      for (; j < n; j++) {
        const c = xml[j];
        if (quote) {
          if (c === quote) quote = "";
        } else if (c === '"' || c === "'") quote = c;
        else if (c === ">" || c === "<") break;
      }
      if (j >= n || xml[j] !== ">") fail(i, "unterminated start tag");
      const selfClosing = xml[j - 1] === "/";
      const body = xml.slice(i + 1, selfClosing ? j - 1 : j);
      const name = /^[^\s/>]+/.exec(body)?.[0];
      if (!name) fail(i, "start tag without a name");
      const el: XmlElement = { name: name!, children: [], parts: [], text: "" };
      stack[stack.length - 1].children.push(el);
      if (!selfClosing) {
        if (stack.length > MAX_XML_DEPTH) fail(i, `elements nested deeper than ${MAX_XML_DEPTH}`);
        stack.push(el);
      }
      i = j + 1;
    }
  }
  if (stack.length > 1) fail(n, `<${stack[stack.length - 1].name}> is never closed`);
  return doc;
}

/** The first child element named `name`. */
function child(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}

/**
 * Parses the parts of a Pascal-VOC annotation that matter here (the
 * `<annotation>` root's `filename`, `size` and `object`s, each object's own
 * `name` and `bndbox`) in time linear in the text. A malformed document,
 * anything that is not an `<annotation>` document, or a box that is not
 * four numbers, throws a VocError with the reason.
 */
export function parseVocXml(xml: string): VocAnnotation {
  const doc = parseXml(xml);
  const root = doc.children.find((c) => c.name === "annotation");
  if (!root) throw new VocError("not a Pascal-VOC annotation (no <annotation> element)");
  const num = (el: XmlElement | undefined) => (!el || el.text === "" ? null : Number(el.text));
  const objects: VocObject[] = [];
  for (const o of root.children) {
    if (o.name !== "object") continue;
    const name = child(o, "name")?.text ?? "";
    const bb = child(o, "bndbox");
    if (!bb) throw new VocError(`object '${name}' has no <bndbox>`);
    const coords = ["xmin", "ymin", "xmax", "ymax"].map((k) => num(child(bb, k)));
    if (coords.some((c) => c === null || !Number.isFinite(c))) {
      throw new VocError(`object '${name}' has a <bndbox> without four numbers`);
    }
    const [xmin, ymin, xmax, ymax] = coords as number[];
    objects.push({ name, box: { xmin, ymin, xmax, ymax } });
  }
  const size = child(root, "size");
  return {
    filename: child(root, "filename")?.text ?? null,
    width: size ? num(child(size, "width")) : null,
    height: size ? num(child(size, "height")) : null,
    objects,
  };
}

/** How VOC boxes become cells, as the manifest states it. */
export const VOC_CROP = "square on the box centre, side = longer box side × (1 + 2 × margin), " +
  "edge pixels repeated where it leaves the smear";

/**
 * The square cell crop for a box: centred on the box, its side the box's
 * longer side grown by `margin` of it on each side, in whole pixels. Where
 * it leaves the smear the decoder pads it (`pad: "edge"`), so the cell stays
 * centred and is never squashed.
 */
export function squareCrop(box: Box, margin: number): Region {
  const side = Math.max(
    1,
    Math.round(Math.max(box.xmax - box.xmin, box.ymax - box.ymin) * (1 + 2 * margin)),
  );
  return {
    left: Math.round((box.xmin + box.xmax - side) / 2),
    top: Math.round((box.ymin + box.ymax - side) / 2),
    width: side,
    height: side,
  };
}

function stem(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

/** An annotation's text, refused over `MAX_ANNOTATION_BYTES` before it is read. */
async function readAnnotation(path: string): Promise<string> {
  const { size } = await Deno.stat(path);
  if (size > MAX_ANNOTATION_BYTES) {
    throw new VocError(`file of ${size} B is over the ${MAX_ANNOTATION_BYTES >> 20} MiB limit`);
  }
  return await Deno.readTextFile(path);
}

/** Lists one cell sample per wanted box of a VOC tree. */
export async function enumerateVoc(
  root: string,
  opts: { classes?: string[]; followLinks?: boolean } = {},
): Promise<Enumeration> {
  await requireDir(root, "--input");
  const annDir = join(root, "Annotations");
  const imgDir = join(root, "JPEGImages");
  await requireDir(annDir, "VOC annotation folder (<input>/Annotations)");
  await requireDir(imgDir, "VOC image folder (<input>/JPEGImages)");
  const wanted = opts.classes ?? ["WBC"];
  const errors: ItemError[] = [];
  const samples: SampleSource[] = [];
  const scope = await walkScope(root, errors, opts);

  const images = new Map<string, string>(); // stem -> file name
  for (const f of (await listDir(imgDir, scope)).files) {
    if (isImageName(f) && !images.has(stem(f))) images.set(stem(f), f);
  }
  const annotations = (await listDir(annDir, scope)).files.filter((f) =>
    f.toLowerCase().endsWith(".xml")
  )
    .sort(byCodeUnit);
  const annotated = new Set<string>();
  for (const a of annotations) {
    const annPath = join(annDir, a);
    const s = stem(a);
    annotated.add(s);
    let ann: VocAnnotation;
    try {
      ann = parseVocXml(await readAnnotation(annPath));
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
