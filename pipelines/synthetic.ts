/**
 * Procedural blood-smear images of single white cells: bloom's built-in
 * dataset (the default of `deno task train`, `embed` and `eval` when no data is
 * given) and a source of realistic test images. Pure TypeScript on the CPU,
 * seeded and deterministic, a few milliseconds per 224 px image.
 *
 * The picture is built the way a stained smear forms one: every material
 * (red-cell haemoglobin, nuclear chromatin, cytoplasm, granules) adds an
 * optical density per colour channel, and the light that gets through is
 * `background · exp(−density)` (Beer–Lambert). Overlapping red cells therefore
 * darken where they overlap, as in real smears, and a granule over the
 * nucleus darkens it instead of painting over it.
 *
 * Five classes, with what a haematologist looks for:
 * - neutrophil: 3–5 nuclear lobes joined by thin strands, pale pink finely
 *   granular cytoplasm;
 * - eosinophil: bilobed nucleus, cytoplasm packed with coarse orange-red
 *   granules;
 * - basophil: dark purple granules large and dense enough to hide the nucleus;
 * - lymphocyte: small, round dense nucleus, a thin sky-blue cytoplasm rim;
 * - monocyte: large, kidney- or horseshoe-shaped folded nucleus with lacy
 *   chromatin, grey-blue cytoplasm with vacuoles.
 * Around each: red cells (discs with central pallor, overlapping, cut by the
 * border), a platelet now and then, plasma background. Per image: size,
 * shape (smooth random boundary harmonics), orientation, chromatin noise and
 * granule density vary; so do the stain (hue, saturation, brightness, the
 * balance of the two dyes), focus (Gaussian blur) and sensor noise. Edges are
 * anti-aliased (coverage from a signed distance over one pixel).
 *
 * Invariant: sample i of `syntheticDataset` depends only on (seed, i) and the
 * class list, never on `count`, so datasets of different sizes share their
 * first images.
 */
import { join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import { mixSeed, mulberry32, type Random } from "../graph/random.ts";

/** The synthetic classes, in folder (alphabetical) order: label i is class i. */
export const SYNTHETIC_CLASSES = [
  "basophil",
  "eosinophil",
  "lymphocyte",
  "monocyte",
  "neutrophil",
] as const;
/** One synthetic class. */
export type SyntheticClass = typeof SYNTHETIC_CLASSES[number];

type Rgb = [number, number, number];

// ------------------------------------------------------------------ colours

/** Reference light through plasma; material colours below are what density 1 looks like on it. */
const REF_BG: Rgb = [238, 234, 238];

/** Optical density per channel that turns REF_BG into `rgb`. */
function od(rgb: Rgb): Rgb {
  return rgb.map((c, i) => -Math.log(Math.max(c, 1) / REF_BG[i])) as Rgb;
}

/** Which dye a material takes up: per-image stain balance scales each group. */
type Dye = "azure" | "eosin";

interface Material {
  od: Rgb;
  dye: Dye;
}

const MATERIALS = {
  rbc: { od: od([228, 176, 172]), dye: "eosin" },
  platelet: { od: od([150, 105, 190]), dye: "azure" },
  nucleus: { od: od([100, 68, 172]), dye: "azure" },
  nucleusDense: { od: od([78, 50, 150]), dye: "azure" },
  nucleusPale: { od: od([132, 108, 196]), dye: "azure" },
  cytoNeutro: { od: od([226, 200, 216]), dye: "eosin" },
  cytoEos: { od: od([228, 196, 196]), dye: "eosin" },
  cytoBaso: { od: od([212, 192, 224]), dye: "azure" },
  cytoLympho: { od: od([168, 192, 236]), dye: "azure" },
  cytoMono: { od: od([186, 186, 222]), dye: "azure" },
  granNeutro: { od: od([196, 150, 196]), dye: "azure" },
  granEos: { od: od([214, 92, 64]), dye: "eosin" },
  granBaso: { od: od([64, 34, 118]), dye: "azure" },
  granAzur: { od: od([150, 80, 160]), dye: "azure" },
  granMono: { od: od([178, 158, 206]), dye: "azure" },
} satisfies Record<string, Material>;
type MaterialName = keyof typeof MATERIALS;

// ------------------------------------------------------------------- shapes

/** An ellipse with a smooth random boundary: radius(θ) = 1 + Σₖ aₖ cos kθ + bₖ sin kθ. */
interface Blob {
  cx: number;
  cy: number;
  cos: number;
  sin: number;
  irx: number;
  iry: number;
  rmin: number;
  /** Pairs (aₖ, bₖ) for k = 2, 3, …. */
  harm: Float64Array;
}

function makeBlob(
  rand: Random,
  cx: number,
  cy: number,
  rx: number,
  ry: number,
  angle: number,
  roughness: number,
  harmonics = 5,
): Blob {
  const harm = new Float64Array(2 * (harmonics - 1));
  for (let k = 0; k < harmonics - 1; k++) {
    // Higher harmonics get less amplitude: smooth outlines, no spikes.
    const amp = roughness / (k + 1.5);
    const phase = 2 * Math.PI * rand();
    const a = amp * (0.4 + 0.6 * rand());
    harm[2 * k] = a * Math.cos(phase);
    harm[2 * k + 1] = a * Math.sin(phase);
  }
  return {
    cx,
    cy,
    cos: Math.cos(angle),
    sin: Math.sin(angle),
    irx: 1 / rx,
    iry: 1 / ry,
    rmin: Math.min(rx, ry),
    harm,
  };
}

/** Approximate signed distance in pixels from (x, y) to a blob's outline (negative inside). */
function blobDist(b: Blob, x: number, y: number): number {
  const dx = x - b.cx;
  const dy = y - b.cy;
  const u = (dx * b.cos + dy * b.sin) * b.irx;
  const v = (dy * b.cos - dx * b.sin) * b.iry;
  const rho = Math.sqrt(u * u + v * v);
  if (rho < 1e-9) return -b.rmin;
  const c = u / rho;
  const s = v / rho;
  // cos kθ, sin kθ as powers of e^{iθ}: no trigonometry per pixel.
  let zr = c;
  let zi = s;
  let r = 1;
  const h = b.harm;
  for (let k = 0; k < h.length; k += 2) {
    const nr = zr * c - zi * s;
    zi = zr * s + zi * c;
    zr = nr;
    r += h[k] * zr + h[k + 1] * zi;
  }
  // Along this ray one unit of ρ is |d|/ρ pixels.
  return (rho - r) * (Math.sqrt(dx * dx + dy * dy) / rho);
}

/** Distance from (x, y) to a capsule (segment a–b, radius r); negative inside. */
function capsuleDist(
  ax: number,
  ay: number,
  bx: number,
  by: number,
  r: number,
  x: number,
  y: number,
): number {
  const ex = bx - ax;
  const ey = by - ay;
  const len2 = ex * ex + ey * ey;
  const t = len2 > 0 ? Math.min(Math.max(((x - ax) * ex + (y - ay) * ey) / len2, 0), 1) : 0;
  const px = x - ax - t * ex;
  const py = y - ay - t * ey;
  return Math.sqrt(px * px + py * py) - r;
}

/** Pixel coverage of a shape from its signed distance: a one-pixel anti-aliased ramp. */
function coverage(d: number): number {
  return d <= -0.5 ? 1 : d >= 0.5 ? 0 : 0.5 - d;
}

/** A nucleus: a union of blobs and capsules, minus notches (the monocyte's indentation). */
interface Nucleus {
  blobs: Blob[];
  capsules: number[][]; // [ax, ay, bx, by, r]
  notches: number[][]; // [cx, cy, r]
  /** Bounding box, pixels. */
  box: [number, number, number, number];
}

function nucleusDist(n: Nucleus, x: number, y: number): number {
  let d = Infinity;
  for (const b of n.blobs) d = Math.min(d, blobDist(b, x, y));
  for (const c of n.capsules) d = Math.min(d, capsuleDist(c[0], c[1], c[2], c[3], c[4], x, y));
  for (const m of n.notches) {
    const dx = x - m[0];
    const dy = y - m[1];
    d = Math.max(d, m[2] - Math.sqrt(dx * dx + dy * dy));
  }
  return d;
}

// -------------------------------------------------------------------- noise

/** Value noise on a lattice of `cell`-pixel squares, bilinear with a smoothstep, in [0, 1). */
class ValueNoise {
  readonly #g: Float32Array;
  readonly #w: number;
  readonly #inv: number;
  constructor(rand: Random, size: number, cell: number) {
    this.#w = Math.ceil(size / cell) + 2;
    this.#inv = 1 / cell;
    this.#g = new Float32Array(this.#w * this.#w);
    for (let i = 0; i < this.#g.length; i++) this.#g[i] = rand();
  }
  at(x: number, y: number): number {
    const gx = Math.max(x, 0) * this.#inv;
    const gy = Math.max(y, 0) * this.#inv;
    const ix = Math.min(Math.floor(gx), this.#w - 2);
    const iy = Math.min(Math.floor(gy), this.#w - 2);
    let fx = gx - ix;
    let fy = gy - iy;
    fx = fx * fx * (3 - 2 * fx);
    fy = fy * fy * (3 - 2 * fy);
    const g = this.#g;
    const i = iy * this.#w + ix;
    const top = g[i] + (g[i + 1] - g[i]) * fx;
    const bot = g[i + this.#w] + (g[i + this.#w + 1] - g[i + this.#w]) * fx;
    return top + (bot - top) * fy;
  }
}

// ------------------------------------------------------------------- canvas

/** Optical densities of one image being drawn, plus the white cell's coverage mask. */
class Canvas {
  readonly size: number;
  /** Density per pixel and channel, `[y][x][c]`. */
  readonly od: Float32Array;
  /** Coverage of the white cell, to keep red cells from being drawn through it. */
  readonly wbc: Float32Array;
  /** Per-image stain strength of each dye. */
  readonly dye: Record<Dye, number>;
  constructor(size: number, dye: Record<Dye, number>) {
    this.size = size;
    this.od = new Float32Array(size * size * 3);
    this.wbc = new Float32Array(size * size);
    this.dye = dye;
  }
  /** Adds `amount` of `mat` at pixel index `i`. */
  add(i: number, mat: Material, amount: number): void {
    const k = amount * this.dye[mat.dye];
    const o = 3 * i;
    this.od[o] += k * mat.od[0];
    this.od[o + 1] += k * mat.od[1];
    this.od[o + 2] += k * mat.od[2];
  }
  /** Clipped integer pixel range covering [lo, hi]. */
  range(lo: number, hi: number): [number, number] {
    return [Math.max(0, Math.floor(lo)), Math.min(this.size - 1, Math.ceil(hi))];
  }
  /** A small round spot (granule, platelet granule): AA disc with a denser centre. */
  spot(x: number, y: number, r: number, mat: Material, amount: number): void {
    const [x0, x1] = this.range(x - r - 1, x + r + 1);
    const [y0, y1] = this.range(y - r - 1, y + r + 1);
    // Sub-pixel granules keep their total density: spread over at least a pixel.
    const rr = Math.max(r, 0.6);
    const gain = amount * Math.min(1, (r * r) / (rr * rr));
    for (let py = y0; py <= y1; py++) {
      for (let px = x0; px <= x1; px++) {
        const dx = px + 0.5 - x;
        const dy = py + 0.5 - y;
        const d2 = dx * dx + dy * dy;
        const cov = coverage(Math.sqrt(d2) - rr);
        if (cov > 0) this.add(py * this.size + px, mat, gain * cov * (1.25 - 0.5 * d2 / (rr * rr)));
      }
    }
  }
}

// -------------------------------------------------------------- white cells

const uni = (rand: Random, lo: number, hi: number) => lo + (hi - lo) * rand();
const randInt = (rand: Random, lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));

/** How one class draws: sizes relative to the red-cell radius, materials, granules. */
interface CellPlan {
  /** Cell radius range, in red-cell radii. */
  radius: [number, number];
  cyto: MaterialName;
  cytoDensity: [number, number];
  nucleusMat: MaterialName;
  nucleusDensity: [number, number];
  /** Chromatin: noise cell (fraction of cell radius) and contrast. */
  chromatin: [number, number];
  nucleus: (rand: Random, cx: number, cy: number, R: number) => Nucleus;
  /** Granules: material, count range per unit cell area (R² = 1), radius (fraction of R), density. */
  granules?: {
    mat: MaterialName;
    perArea: [number, number];
    radius: [number, number];
    density: number;
    /** Whether granules also lie over the nucleus. */
    overNucleus: number;
  }[];
  /** Vacuoles: count range and radius (fraction of R). */
  vacuoles?: { count: [number, number]; radius: [number, number] };
}

function boxOf(parts: { x: number; y: number; r: number }[]): Nucleus["box"] {
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const p of parts) {
    x0 = Math.min(x0, p.x - p.r);
    y0 = Math.min(y0, p.y - p.r);
    x1 = Math.max(x1, p.x + p.r);
    y1 = Math.max(y1, p.y + p.r);
  }
  return [x0 - 2, y0 - 2, x1 + 2, y1 + 2];
}

/** How a lobed nucleus is laid out; lengths are fractions of the cell radius. */
interface LobeLayout {
  lobes: [number, number];
  lobeR: [number, number];
  /** Radius of the arc the lobes sit on. */
  arcR: [number, number];
  /** Distance between neighbouring lobe centres. */
  spacing: [number, number];
  /** Radius of the chromatin strands joining them. */
  strand: [number, number];
}

/** Lobes strung along an arc around the cell centre, joined by thin strands. */
function lobedNucleus(rand: Random, cx: number, cy: number, R: number, l: LobeLayout): Nucleus {
  const lobes = randInt(rand, l.lobes[0], l.lobes[1]);
  const ar = uni(rand, l.arcR[0], l.arcR[1]) * R;
  const step = (uni(rand, l.spacing[0], l.spacing[1]) * R) / ar;
  // Never close the ring: a segmented nucleus is an open chain.
  const span = Math.min(step * (lobes - 1), 1.6 * Math.PI);
  const a0 = 2 * Math.PI * rand();
  const blobs: Blob[] = [];
  const parts: { x: number; y: number; r: number }[] = [];
  const centres: [number, number][] = [];
  for (let k = 0; k < lobes; k++) {
    const t = lobes === 1 ? 0 : (k / (lobes - 1) - 0.5) * span;
    const ang = a0 + t + uni(rand, -0.1, 0.1);
    const rr = ar * uni(rand, 0.85, 1.15);
    const x = cx + rr * Math.cos(ang);
    const y = cy + rr * Math.sin(ang);
    const r = uni(rand, l.lobeR[0], l.lobeR[1]) * R;
    // Lobes are a little elongated along the arc.
    blobs.push(makeBlob(rand, x, y, r * 1.1, r * 0.9, ang + Math.PI / 2, 0.1, 4));
    parts.push({ x, y, r: r * 1.3 });
    centres.push([x, y]);
  }
  const capsules = [];
  for (let k = 0; k + 1 < lobes; k++) {
    const [ax, ay] = centres[k];
    const [bx, by] = centres[k + 1];
    capsules.push([ax, ay, bx, by, uni(rand, l.strand[0], l.strand[1]) * R]);
  }
  return { blobs, capsules, notches: [], box: boxOf(parts) };
}

const PLANS: Record<SyntheticClass, CellPlan> = {
  neutrophil: {
    radius: [1.6, 1.9],
    cyto: "cytoNeutro",
    cytoDensity: [0.75, 1.1],
    nucleusMat: "nucleus",
    nucleusDensity: [0.9, 1.15],
    chromatin: [0.08, 0.45],
    nucleus: (rand, cx, cy, R) =>
      lobedNucleus(rand, cx, cy, R, {
        lobes: [3, 5],
        lobeR: [0.21, 0.27],
        arcR: [0.38, 0.5],
        spacing: [0.47, 0.58],
        strand: [0.025, 0.045],
      }),
    granules: [{
      mat: "granNeutro",
      perArea: [70, 130],
      radius: [0.008, 0.014],
      density: 0.5,
      overNucleus: 0,
    }],
  },
  eosinophil: {
    radius: [1.65, 1.95],
    cyto: "cytoEos",
    cytoDensity: [0.5, 0.8],
    nucleusMat: "nucleus",
    nucleusDensity: [0.85, 1.1],
    chromatin: [0.09, 0.35],
    nucleus: (rand, cx, cy, R) =>
      lobedNucleus(rand, cx, cy, R, {
        lobes: [2, 2],
        lobeR: [0.26, 0.32],
        arcR: [0.3, 0.4],
        spacing: [0.55, 0.68],
        strand: [0.05, 0.09],
      }),
    granules: [{
      mat: "granEos",
      perArea: [120, 190],
      radius: [0.034, 0.046],
      density: 0.9,
      overNucleus: 0.25,
    }],
  },
  basophil: {
    radius: [1.35, 1.65],
    cyto: "cytoBaso",
    cytoDensity: [0.6, 0.9],
    nucleusMat: "nucleusPale",
    nucleusDensity: [0.7, 0.95],
    chromatin: [0.1, 0.3],
    nucleus: (rand, cx, cy, R) =>
      lobedNucleus(rand, cx, cy, R, {
        lobes: [1, 2],
        lobeR: [0.36, 0.46],
        arcR: [0.1, 0.22],
        spacing: [0.3, 0.45],
        strand: [0.1, 0.15],
      }),
    granules: [{
      mat: "granBaso",
      perArea: [55, 95],
      radius: [0.045, 0.07],
      density: 1.1,
      overNucleus: 1,
    }],
  },
  lymphocyte: {
    radius: [1.05, 1.35],
    cyto: "cytoLympho",
    cytoDensity: [0.8, 1.2],
    nucleusMat: "nucleusDense",
    nucleusDensity: [0.95, 1.2],
    chromatin: [0.12, 0.3],
    nucleus: (rand, cx, cy, R) => {
      // Round, filling most of the cell, a little off centre.
      const r = uni(rand, 0.76, 0.86) * R;
      const off = (R - r) * uni(rand, 0, 0.8);
      const a = 2 * Math.PI * rand();
      const x = cx + off * Math.cos(a);
      const y = cy + off * Math.sin(a);
      const b = makeBlob(rand, x, y, r * uni(rand, 0.97, 1.06), r, 2 * Math.PI * rand(), 0.05);
      return { blobs: [b], capsules: [], notches: [], box: boxOf([{ x, y, r: r * 1.15 }]) };
    },
    granules: [{
      mat: "granAzur",
      perArea: [0, 6],
      radius: [0.012, 0.02],
      density: 0.8,
      overNucleus: 0,
    }],
  },
  monocyte: {
    radius: [2.0, 2.35],
    cyto: "cytoMono",
    cytoDensity: [0.75, 1.05],
    nucleusMat: "nucleusPale",
    nucleusDensity: [0.9, 1.15],
    chromatin: [0.05, 0.4],
    nucleus: (rand, cx, cy, R) => {
      const a = 2 * Math.PI * rand();
      if (rand() < 0.5) {
        // Kidney: a broad ellipse with a disc bitten out of one side.
        const r = uni(rand, 0.5, 0.6) * R;
        const x = cx - 0.12 * R * Math.cos(a);
        const y = cy - 0.12 * R * Math.sin(a);
        const b = makeBlob(rand, x, y, r * 1.12, r * 0.92, a + Math.PI / 2, 0.1);
        const nr = uni(rand, 0.28, 0.38) * R;
        const d = r * uni(rand, 0.85, 1.05) + nr * 0.4;
        const notch = [x + d * Math.cos(a), y + d * Math.sin(a), nr];
        return { blobs: [b], capsules: [], notches: [notch], box: boxOf([{ x, y, r: r * 1.3 }]) };
      }
      // Horseshoe: a thick band bent round the cell centre, its ends swollen.
      const ar = uni(rand, 0.34, 0.44) * R;
      const half = uni(rand, 1.1, 1.5);
      const w = uni(rand, 0.2, 0.26) * R;
      const capsules = [];
      const parts = [];
      const steps = 6;
      let prev: [number, number] | null = null;
      for (let k = 0; k <= steps; k++) {
        const t = a - half + (2 * half * k) / steps;
        const p: [number, number] = [cx + ar * Math.cos(t), cy + ar * Math.sin(t)];
        if (prev) capsules.push([prev[0], prev[1], p[0], p[1], w]);
        parts.push({ x: p[0], y: p[1], r: w * 1.6 });
        prev = p;
      }
      const ends = [-half, half].map((dt) => {
        const t = a + dt;
        return makeBlob(
          rand,
          cx + ar * Math.cos(t),
          cy + ar * Math.sin(t),
          w * 1.35,
          w * 1.1,
          t,
          0.1,
        );
      });
      return { blobs: ends, capsules, notches: [], box: boxOf(parts) };
    },
    granules: [{
      mat: "granMono",
      perArea: [30, 60],
      radius: [0.008, 0.013],
      density: 0.5,
      overNucleus: 0.3,
    }],
    vacuoles: { count: [1, 7], radius: [0.04, 0.09] },
  },
};

/** Draws the white cell at (cx, cy) with cell radius R (pixels). */
function drawWhiteCell(
  cv: Canvas,
  rand: Random,
  cls: SyntheticClass,
  cx: number,
  cy: number,
  R: number,
): void {
  const plan = PLANS[cls];
  const S = cv.size;
  const cell = makeBlob(rand, cx, cy, R * uni(rand, 1, 1.1), R, 2 * Math.PI * rand(), 0.07);
  const nuc = plan.nucleus(rand, cx, cy, R);
  const cyto = MATERIALS[plan.cyto];
  const nmat = MATERIALS[plan.nucleusMat];
  const cytoD = uni(rand, plan.cytoDensity[0], plan.cytoDensity[1]);
  const nucD = uni(rand, plan.nucleusDensity[0], plan.nucleusDensity[1]);
  const [chromaCell, chromaAmp] = plan.chromatin;
  const chroma = new ValueNoise(rand, S, Math.max(1.5, chromaCell * R));
  const chromaFine = new ValueNoise(rand, S, Math.max(1, chromaCell * R * 0.45));
  const cytoTex = new ValueNoise(rand, S, Math.max(2, 0.2 * R));
  const vac: number[][] = [];
  if (plan.vacuoles) {
    const n = randInt(rand, plan.vacuoles.count[0], plan.vacuoles.count[1]);
    for (let k = 0; k < n; k++) {
      const a = 2 * Math.PI * rand();
      const d = uni(rand, 0.45, 0.85) * R;
      vac.push([
        cx + d * Math.cos(a),
        cy + d * Math.sin(a),
        uni(rand, ...plan.vacuoles.radius) * R,
      ]);
    }
  }
  const nucCover = new Float32Array(S * S);
  const reach = R * 1.35 + 2;
  const [x0, x1] = cv.range(cx - reach, cx + reach);
  const [y0, y1] = cv.range(cy - reach, cy + reach);
  const [nx0, ny0, nx1, ny1] = nuc.box;
  const outer = R * 1.1 * (1 + harmBound(cell)) + 1;
  for (let py = y0; py <= y1; py++) {
    for (let px = x0; px <= x1; px++) {
      const x = px + 0.5;
      const y = py + 0.5;
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) >= outer * outer) continue;
      const cc = coverage(blobDist(cell, x, y));
      if (cc === 0) continue;
      const i = py * S + px;
      let nc = 0;
      if (x >= nx0 && x <= nx1 && y >= ny0 && y <= ny1) nc = coverage(nucleusDist(nuc, x, y)) * cc;
      nucCover[i] = nc;
      cv.wbc[i] = cc;
      // Cytoplasm, lighter in vacuoles and a little mottled.
      let cd = cytoD * (0.85 + 0.3 * cytoTex.at(x, y));
      for (const v of vac) {
        const dx = x - v[0];
        const dy = y - v[1];
        cd *= 1 - 0.8 * coverage(Math.sqrt(dx * dx + dy * dy) - v[2]);
      }
      if (nc < 1) cv.add(i, cyto, cc * (1 - nc) * cd);
      if (nc > 0) {
        // Chromatin: coarse clumps plus fine grain, denser toward the nuclear rim.
        const t = 0.65 * chroma.at(x, y) + 0.35 * chromaFine.at(x, y);
        cv.add(i, nmat, nc * nucD * (1 + chromaAmp * 2 * (t - 0.5)));
      }
    }
  }
  for (const g of plan.granules ?? []) {
    const n = Math.round(uni(rand, g.perArea[0], g.perArea[1]) * Math.PI);
    const mat = MATERIALS[g.mat];
    for (let k = 0; k < n; k++) {
      // Uniform over the disc, then kept inside the outline.
      const a = 2 * Math.PI * rand();
      const d = Math.sqrt(rand()) * R * 0.96;
      const x = cx + d * Math.cos(a);
      const y = cy + d * Math.sin(a);
      const r = uni(rand, g.radius[0], g.radius[1]) * R;
      const px = Math.min(S - 1, Math.max(0, Math.floor(x)));
      const py = Math.min(S - 1, Math.max(0, Math.floor(y)));
      if (blobDist(cell, x, y) > -r) continue;
      const onNuc = nucCover[py * S + px];
      if (onNuc > 0.5 && rand() > g.overNucleus) continue;
      cv.spot(x, y, r, mat, g.density * uni(rand, 0.7, 1.2));
    }
  }
}

/** Red cells around the white cell: pallor discs, overlapping, some cut by the border. */
function drawRedCells(cv: Canvas, rand: Random, rbcR: number, cx: number, cy: number, R: number) {
  const S = cv.size;
  const mat = MATERIALS.rbc;
  const n = Math.round(uni(rand, 0.5, 1.1) * (S * S) / (Math.PI * rbcR * rbcR));
  const placed: [number, number][] = [];
  for (let k = 0; k < n * 3 && placed.length < n; k++) {
    const x = uni(rand, -0.6 * rbcR, S + 0.6 * rbcR);
    const y = uni(rand, -0.6 * rbcR, S + 0.6 * rbcR);
    // Around the white cell, not under it; overlapping each other only partly.
    if (Math.hypot(x - cx, y - cy) < R + rbcR * 0.55) continue;
    if (placed.some(([px, py]) => Math.hypot(x - px, y - py) < rbcR * 1.25)) continue;
    placed.push([x, y]);
    const r = rbcR * uni(rand, 0.9, 1.1);
    const blob = makeBlob(rand, x, y, r * uni(rand, 1, 1.12), r, 2 * Math.PI * rand(), 0.04, 4);
    const dens = uni(rand, 0.75, 1.05);
    const pallor = uni(rand, 0.45, 0.7);
    const pr = uni(rand, 0.38, 0.5) * r;
    // Outline radius stays within [inner, outer]: skip the exact distance away from the edge.
    const outer = r * 1.12 * (1 + harmBound(blob)) + 1;
    const inner = Math.max(0, r * (1 - harmBound(blob)) - 1);
    const [x0, x1] = cv.range(x - outer, x + outer);
    const [y0, y1] = cv.range(y - outer, y + outer);
    for (let py = y0; py <= y1; py++) {
      for (let px = x0; px <= x1; px++) {
        const qx = px + 0.5 - x;
        const qy = py + 0.5 - y;
        const q2 = qx * qx + qy * qy;
        if (q2 >= outer * outer) continue;
        const c = q2 < inner * inner ? 1 : coverage(blobDist(blob, px + 0.5, py + 0.5));
        if (c === 0) continue;
        const i = py * S + px;
        // Biconcave disc: thinner in the middle (central pallor).
        const d2 = q2 / (pr * pr);
        const thick = 1 - pallor * expNeg(d2 * d2);
        cv.add(i, mat, c * dens * thick * (1 - 0.9 * cv.wbc[i]));
      }
    }
  }
}

/** Bound on a blob's outline perturbation Σ|harmonic|, as a fraction of its radius. */
function harmBound(b: Blob): number {
  let s = 0;
  for (let k = 0; k < b.harm.length; k += 2) s += Math.hypot(b.harm[k], b.harm[k + 1]);
  return s;
}

function drawPlatelets(cv: Canvas, rand: Random, rbcR: number, cx: number, cy: number, R: number) {
  const n = rand() < 0.45 ? randInt(rand, 1, 3) : 0;
  const S = cv.size;
  for (let k = 0; k < n; k++) {
    const a = 2 * Math.PI * rand();
    const d = uni(rand, R + rbcR * 0.3, S * 0.7);
    const x = cx + d * Math.cos(a);
    const y = cy + d * Math.sin(a);
    const r = rbcR * uni(rand, 0.18, 0.3);
    const blob = makeBlob(rand, x, y, r * 1.2, r * 0.9, 2 * Math.PI * rand(), 0.2);
    const [x0, x1] = cv.range(x - 2 * r, x + 2 * r);
    const [y0, y1] = cv.range(y - 2 * r, y + 2 * r);
    for (let py = y0; py <= y1; py++) {
      for (let px = x0; px <= x1; px++) {
        const c = coverage(blobDist(blob, px + 0.5, py + 0.5));
        if (c > 0) cv.add(py * S + px, MATERIALS.platelet, 0.45 * c);
      }
    }
    // A granular purple centre.
    for (let g = 0; g < 6; g++) {
      const gx = x + uni(rand, -0.5, 0.5) * r;
      const gy = y + uni(rand, -0.5, 0.5) * r;
      cv.spot(gx, gy, r * 0.25, MATERIALS.platelet, 0.9);
    }
  }
}

// ------------------------------------------------------------------ finish

/** exp(−x) on a table, for the per-pixel Beer–Lambert step (much faster than Math.exp). */
const EXP_STEP = 1 / 256;
const EXP_MAX = 12;
const EXP_TABLE = (() => {
  const t = new Float32Array(Math.ceil(EXP_MAX / EXP_STEP) + 2);
  for (let i = 0; i < t.length; i++) t[i] = Math.exp(-i * EXP_STEP);
  return t;
})();

function expNeg(x: number): number {
  if (x <= 0) return 1;
  const f = x / EXP_STEP;
  const i = Math.floor(f);
  if (i >= EXP_TABLE.length - 1) return 0;
  return EXP_TABLE[i] + (EXP_TABLE[i + 1] - EXP_TABLE[i]) * (f - i);
}

/** In-place separable Gaussian blur of an interleaved RGB float image (edges clamped). */
function blurRgb(img: Float32Array, S: number, sigma: number): void {
  // ±2σ holds 95 % of the mass (renormalised below): enough for a focus effect, and cheap.
  const rad = Math.min(Math.ceil(2 * sigma), 8);
  if (rad < 1) return;
  const k = new Float32Array(2 * rad + 1);
  let sum = 0;
  for (let i = -rad; i <= rad; i++) sum += k[i + rad] = Math.exp((-0.5 * i * i) / (sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  const W = 3 * S;
  const taps = k.length;
  // Rows: copy each into a border-padded buffer so the tap loop needs no clamping.
  const pad = new Float32Array(W + 6 * rad);
  const tmp = new Float32Array(img.length);
  const offs = new Int32Array(taps);
  for (let t = 0; t < taps; t++) offs[t] = 3 * t;
  for (let y = 0; y < S; y++) {
    const row = y * W;
    pad.set(img.subarray(row, row + W), 3 * rad);
    for (let t = 0; t < rad; t++) {
      for (let c = 0; c < 3; c++) {
        pad[3 * t + c] = img[row + c];
        pad[3 * (rad + S + t) + c] = img[row + W - 3 + c];
      }
    }
    convolveLine(pad, offs, tmp, row, W, k, rad);
  }
  // Columns: each output row mixes whole source rows (clamped at the borders).
  for (let y = 0; y < S; y++) {
    for (let t = 0; t < taps; t++) offs[t] = Math.min(Math.max(y + t - rad, 0), S - 1) * W;
    convolveLine(tmp, offs, img, y * W, W, k, rad);
  }
}

/**
 * `dst[at + x] = Σₜ k[t] · src[offs[t] + x]` for x < n, with the symmetric
 * kernel folded (k[rad − t] = k[rad + t]) and the common radii unrolled: the
 * blur is the renderer's largest cost.
 */
function convolveLine(
  src: Float32Array,
  offs: Int32Array,
  dst: Float32Array,
  at: number,
  n: number,
  k: Float32Array,
  rad: number,
): void {
  const c = offs[rad];
  const k0 = k[rad];
  if (rad === 1) {
    const [a, b] = [offs[0], offs[2]];
    const k1 = k[0];
    for (let x = 0; x < n; x++) dst[at + x] = k0 * src[c + x] + k1 * (src[a + x] + src[b + x]);
  } else if (rad === 2) {
    const [a2, a1, b1, b2] = [offs[0], offs[1], offs[3], offs[4]];
    const [k2, k1] = [k[0], k[1]];
    for (let x = 0; x < n; x++) {
      dst[at + x] = k0 * src[c + x] + k1 * (src[a1 + x] + src[b1 + x]) +
        k2 * (src[a2 + x] + src[b2 + x]);
    }
  } else if (rad === 3) {
    const [a3, a2, a1, b1, b2, b3] = [offs[0], offs[1], offs[2], offs[4], offs[5], offs[6]];
    const [k3, k2, k1] = [k[0], k[1], k[2]];
    for (let x = 0; x < n; x++) {
      dst[at + x] = k0 * src[c + x] + k1 * (src[a1 + x] + src[b1 + x]) +
        k2 * (src[a2 + x] + src[b2 + x]) + k3 * (src[a3 + x] + src[b3 + x]);
    }
  } else {
    for (let x = 0; x < n; x++) {
      let acc = 0;
      for (let t = 0; t < k.length; t++) acc += k[t] * src[offs[t] + x];
      dst[at + x] = acc;
    }
  }
}

/**
 * A lab's stain and scanner as a 3×3 colour matrix: a hue rotation about the
 * grey axis, a saturation change about luma, and a brightness gain.
 */
function stainMatrix(rand: Random): Float64Array {
  const theta = uni(rand, -0.22, 0.22);
  const sat = uni(rand, 0.8, 1.2);
  const gain = uni(rand, 0.92, 1.06);
  const c = Math.cos(theta);
  const s = Math.sin(theta);
  const k = (1 - c) / 3;
  const q = Math.sqrt(1 / 3) * s;
  const hue = [c + k, k - q, k + q, k + q, c + k, k - q, k - q, k + q, c + k];
  const lw = [0.299, 0.587, 0.114];
  // Saturation is applied after the rotation: m = gain · Sat · Hue (rows of Sat mix luma).
  const out = new Float64Array(9);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      let v = 0;
      for (let t = 0; t < 3; t++) v += ((i === t ? sat : 0) + (1 - sat) * lw[t]) * hue[3 * t + j];
      out[3 * i + j] = gain * v;
    }
  }
  return out;
}

// --------------------------------------------------------------------- API

/**
 * Renders one white cell of class `cls` with its surroundings: `size`×`size`
 * RGB bytes, row-major. Every random choice comes from `rand`, so the same
 * source state gives the same image.
 */
export function renderCell(cls: SyntheticClass, rand: Random, size = 224): Uint8Array {
  if (!SYNTHETIC_CLASSES.includes(cls)) {
    throw new RangeError(
      `renderCell: unknown class '${cls}'; the synthetic classes are ${
        SYNTHETIC_CLASSES.join(", ")
      }`,
    );
  }
  if (!Number.isInteger(size) || size < 16) {
    throw new RangeError(`renderCell: size must be an integer ≥ 16 pixels, got ${size}`);
  }
  const S = size;
  const dye = { azure: uni(rand, 0.8, 1.2), eosin: uni(rand, 0.8, 1.2) };
  const cv = new Canvas(S, dye);
  const zoom = uni(rand, 0.85, 1.15);
  const rbcR = 0.12 * S * zoom;
  const plan = PLANS[cls];
  const R = rbcR * uni(rand, plan.radius[0], plan.radius[1]);
  // Centred as in cropped datasets, give or take a little.
  const cx = S / 2 + uni(rand, -0.06, 0.06) * S;
  const cy = S / 2 + uni(rand, -0.06, 0.06) * S;
  drawWhiteCell(cv, rand, cls, cx, cy, R);
  drawRedCells(cv, rand, rbcR, cx, cy, R);
  drawPlatelets(cv, rand, rbcR, cx, cy, R);

  // Light through the smear, with a soft illumination gradient.
  const bg: Rgb = [
    REF_BG[0] + uni(rand, -10, 6),
    REF_BG[1] + uni(rand, -8, 6),
    REF_BG[2] + uni(rand, -8, 8),
  ];
  const gx = uni(rand, -0.05, 0.05) / S;
  const gy = uni(rand, -0.05, 0.05) / S;
  const img = new Float32Array(S * S * 3);
  for (let y = 0, i = 0; y < S; y++) {
    for (let x = 0; x < S; x++, i++) {
      const light = 1 + gx * (x - S / 2) + gy * (y - S / 2);
      const o = 3 * i;
      img[o] = light * bg[0] * expNeg(cv.od[o]);
      img[o + 1] = light * bg[1] * expNeg(cv.od[o + 1]);
      img[o + 2] = light * bg[2] * expNeg(cv.od[o + 2]);
    }
  }
  blurRgb(img, S, uni(rand, 0.25, 1.25) * (S / 224));
  const m = stainMatrix(rand);
  const noise = uni(rand, 1, 3.5);
  // Sensor noise from a xorshift stream (seeded from rand): cheap per pixel.
  let st = Math.floor(rand() * 4294967296) | 1;
  const out = new Uint8Array(S * S * 3);
  for (let i = 0; i < S * S; i++) {
    const o = 3 * i;
    const r = img[o];
    const g = img[o + 1];
    const b = img[o + 2];
    for (let c = 0; c < 3; c++) {
      st ^= st << 13;
      st ^= st >>> 17;
      st ^= st << 5;
      // Triangular noise (sum of the word's two 16-bit halves) scaled to std `noise`.
      const tri = ((st & 0xffff) + (st >>> 16)) / 65536 - 1;
      const v = m[3 * c] * r + m[3 * c + 1] * g + m[3 * c + 2] * b + noise * 2.449 * tri;
      out[o + c] = v <= 0 ? 0 : v >= 255 ? 255 : (v + 0.5) | 0;
    }
  }
  return out;
}

/** One sample of the synthetic dataset. */
export interface SyntheticSample {
  /** RGB bytes `[size, size, 3]`. */
  pixels: Uint8Array;
  /** Index into the dataset's class list. */
  label: number;
  cls: SyntheticClass;
  /** Unique within the dataset: `<class>_<index, 6 digits>`. */
  key: string;
}

/** Options of `syntheticDataset`. */
export interface SyntheticOptions {
  count: number;
  /** Image side (default 224). */
  size?: number;
  /** Default 0. */
  seed?: number;
  /** Classes to draw, labels in this order (default `SYNTHETIC_CLASSES`). */
  classes?: readonly SyntheticClass[];
}

function checkClasses(where: string, classes: readonly string[]): readonly SyntheticClass[] {
  if (classes.length === 0) throw new RangeError(`${where}: classes must not be empty`);
  for (const c of classes) {
    if (!SYNTHETIC_CLASSES.includes(c as SyntheticClass)) {
      throw new RangeError(
        `${where}: unknown class '${c}' in classes; choose from ${SYNTHETIC_CLASSES.join(", ")}`,
      );
    }
  }
  if (new Set(classes).size !== classes.length) {
    throw new RangeError(`${where}: classes lists a class twice`);
  }
  return classes as readonly SyntheticClass[];
}

/**
 * `count` synthetic cells, classes in turn (sample i has label i mod the
 * number of classes, so every prefix is balanced). Lazy: each image is drawn
 * when the iterator reaches it.
 */
export function* syntheticDataset(opts: SyntheticOptions): IterableIterator<SyntheticSample> {
  const { count, size = 224, seed = 0 } = opts;
  const classes = checkClasses("syntheticDataset", opts.classes ?? SYNTHETIC_CLASSES);
  if (!Number.isInteger(count) || count < 0) {
    throw new RangeError(`syntheticDataset: count must be a non-negative integer, got ${count}`);
  }
  for (let i = 0; i < count; i++) {
    const label = i % classes.length;
    const cls = classes[label];
    const pixels = renderCell(cls, mulberry32(mixSeed(seed >>> 0, i)), size);
    // Six digits: keys sort in sample order for the first million, whatever the count.
    yield { pixels, label, cls, key: `${cls}_${String(i).padStart(6, "0")}` };
  }
}

/** Options of `writeSyntheticImageFolder`. */
export interface SyntheticFolderOptions {
  /** Images per class. */
  perClass: number;
  /** Image side (default 224). */
  size?: number;
  /** Default 0. */
  seed?: number;
  /** Default "png". */
  format?: "png" | "jpg";
  classes?: readonly SyntheticClass[];
}

/** What `writeSyntheticImageFolder` wrote. */
export interface SyntheticFolder {
  dir: string;
  classes: SyntheticClass[];
  /** Paths of the written files, in dataset order. */
  files: string[];
}

/**
 * Writes a folder-per-class image set, `<dir>/<class>/<key>.<format>`, the
 * layout the loader and ingest read (what the CLIs use as built-in data).
 * Existing files of the same names are overwritten.
 */
export async function writeSyntheticImageFolder(
  dir: string,
  opts: SyntheticFolderOptions,
): Promise<SyntheticFolder> {
  const where = "writeSyntheticImageFolder";
  const { perClass, size = 224, seed = 0, format = "png" } = opts;
  const classes = checkClasses(where, opts.classes ?? SYNTHETIC_CLASSES);
  if (!Number.isInteger(perClass) || perClass < 1) {
    throw new RangeError(`${where}: perClass must be a positive integer, got ${perClass}`);
  }
  if (format !== "png" && format !== "jpg") {
    throw new RangeError(`${where}: format must be "png" or "jpg", got ${JSON.stringify(format)}`);
  }
  for (const c of classes) await Deno.mkdir(join(dir, c), { recursive: true });
  const files: string[] = [];
  const pending = new Set<Promise<void>>();
  for (const s of syntheticDataset({ count: perClass * classes.length, size, seed, classes })) {
    const path = join(dir, s.cls, `${s.key}.${format}`);
    files.push(path);
    const img = sharp(s.pixels, { raw: { width: size, height: size, channels: 3 } });
    const enc = format === "png"
      ? img.png({ compressionLevel: 6 })
      : img.jpeg({ quality: 95, chromaSubsampling: "4:4:4" });
    // Encoding runs on libvips threads while the next image is drawn; a few at a time.
    const p = enc.toFile(path).then(() => {
      pending.delete(p);
    });
    pending.add(p);
    if (pending.size >= 4) await Promise.race(pending);
  }
  await Promise.all(pending);
  return { dir, classes: [...classes], files };
}
