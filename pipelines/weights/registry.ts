/**
 * The released checkpoints bloom knows by name: where each file is, its size
 * and SHA-256 where someone publishes them, and the architecture it holds.
 * docs/weights.md explains each source and hash; keep the two in step.
 *
 * Sources are tried in order. The first is the one whose SHA-256 we hold,
 * when only one has it; between equals, Zenodo (the authors' archived,
 * DOI-stamped release) comes before Hugging Face. A hash or size nobody
 * publishes is "unpublished": the first download records what it found
 * (trust on first use) and later checks hold the file to that.
 */
import type { VitArch } from "../../graph/vit.ts";
import { editDistance } from "../suggest.ts";

/** A size or hash no publisher states. */
export const UNPUBLISHED = "unpublished";

/** One place a checkpoint can be downloaded from. */
export interface WeightsSource {
  url: string;
  /** Exact size in bytes, or "unpublished". */
  bytes: number | typeof UNPUBLISHED;
  /** Lower-case hex SHA-256 of the file, or "unpublished". */
  sha256: string | typeof UNPUBLISHED;
  /** Who states the size and hash (or why there is none). */
  provenance: string;
  /** Size as the host shows it, when the exact size is unknown (for `weights list`). */
  approxBytes?: number;
}

/** A named checkpoint. */
export interface WeightsEntry {
  /** What it is, in a few words. */
  title: string;
  family: "dinobloom" | "dinov2";
  arch: VitArch;
  /** Register tokens (DINOv2's "reg4" models). */
  registers: 0 | 4;
  /** File name in the cache. */
  file: string;
  /** Primary first; at least one. */
  sources: readonly [WeightsSource, ...WeightsSource[]];
}

/** Every name bloom knows. */
export const WEIGHTS_NAMES = [
  "dinobloom-s",
  "dinobloom-b",
  "dinobloom-l",
  "dinobloom-g",
  "dinov2-vits14",
  "dinov2-vitb14",
  "dinov2-vitl14",
  "dinov2-vitg14",
  "dinov2-vits14-reg4",
  "dinov2-vitb14-reg4",
  "dinov2-vitl14-reg4",
  "dinov2-vitg14-reg4",
] as const;

/** A name bloom knows. */
export type WeightsName = typeof WEIGHTS_NAMES[number];

/** A table of named checkpoints (the real one, or a test's). */
export type WeightsTable = Readonly<Record<string, WeightsEntry>>;

const ZENODO = "https://zenodo.org/records/10908163/files";
const MARRLAB = "https://huggingface.co/MarrLab/DinoBloom/resolve/main";
const META = "https://dl.fbaipublicfiles.com/dinov2";

const ZENODO_NOTE = "Zenodo record 10908163 (the authors' release) lists an MD5 only";
const MARRLAB_NOTE = "Hugging Face MarrLab/DinoBloom (the authors' lab), backbone only";
const META_NOTE = "Meta's CDN publishes no checksum";

function zenodo(file: string, sha256?: string, pinnedBy?: string): WeightsSource {
  return {
    url: `${ZENODO}/${file}?download=1`,
    bytes: UNPUBLISHED,
    sha256: sha256 ?? UNPUBLISHED,
    provenance: sha256 ? `${ZENODO_NOTE}; SHA-256 as pinned by ${pinnedBy}` : ZENODO_NOTE,
  };
}

function marrlab(size: string, sha256?: string, approxBytes?: number): WeightsSource {
  return {
    url: `${MARRLAB}/pytorch_model_${size}.bin`,
    bytes: UNPUBLISHED,
    sha256: sha256 ?? UNPUBLISHED,
    provenance: sha256
      ? `${MARRLAB_NOTE}; SHA-256 from its LFS pointer`
      : `${MARRLAB_NOTE}; hash not recorded here`,
    ...(approxBytes ? { approxBytes } : {}),
  };
}

function meta(model: string, file: string, bytes?: number, sha256?: string, seenIn?: string) {
  return {
    url: `${META}/${model}/${file}`,
    bytes: bytes ?? UNPUBLISHED,
    sha256: sha256 ?? UNPUBLISHED,
    provenance: sha256 ? `${META_NOTE}; size and SHA-256 of verbatim copies: ${seenIn}` : META_NOTE,
  } satisfies WeightsSource;
}

/** The table. The type makes it complete: one entry per WeightsName. */
export const WEIGHTS: { readonly [N in WeightsName]: WeightsEntry } = {
  "dinobloom-s": {
    title: "DinoBloom-S, ViT-S/14 finetuned on blood cells",
    family: "dinobloom",
    arch: "vit_small",
    registers: 0,
    file: "dinobloom-s.pth",
    sources: [
      zenodo(
        "DinoBloom-S.pth",
        "c2f7990b003e89bcece80e379fb8fe0ba2ec392ce19b286e8a294abd99568e44",
        "KatherLab's STAMP",
      ),
      marrlab("s"),
    ],
  },
  "dinobloom-b": {
    title: "DinoBloom-B, ViT-B/14 finetuned on blood cells",
    family: "dinobloom",
    arch: "vit_base",
    registers: 0,
    file: "dinobloom-b.pth",
    sources: [zenodo("DinoBloom-B.pth"), marrlab("b")],
  },
  "dinobloom-l": {
    title: "DinoBloom-L, ViT-L/14 finetuned on blood cells",
    family: "dinobloom",
    arch: "vit_large",
    registers: 0,
    file: "dinobloom-l.pth",
    sources: [
      marrlab("l", "3963b60942e18e1f66fc77340700f4d408c69ca6d6617c0f94feedbad7caa88f", 1.21e9),
      zenodo("DinoBloom-L.pth"),
    ],
  },
  "dinobloom-g": {
    title: "DinoBloom-G, ViT-g/14 finetuned on blood cells",
    family: "dinobloom",
    arch: "vit_giant2",
    registers: 0,
    file: "dinobloom-g.pth",
    sources: [
      marrlab("g", "16bff9c85eabb2628e8c741701b6eb23a6ebd61699de85777af99750d6415a39", 4.54e9),
      zenodo("DinoBloom-G.pth"),
    ],
  },
  "dinov2-vits14": {
    title: "DINOv2 ViT-S/14 (LVD-142M)",
    family: "dinov2",
    arch: "vit_small",
    registers: 0,
    file: "dinov2-vits14.pth",
    sources: [
      meta(
        "dinov2_vits14",
        "dinov2_vits14_pretrain.pth",
        88283115,
        "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
        "Hugging Face LFS pointers of junjiexv/dinov2_vit and msdkhairi/vit_sam",
      ),
    ],
  },
  "dinov2-vitb14": {
    title: "DINOv2 ViT-B/14 (LVD-142M)",
    family: "dinov2",
    arch: "vit_base",
    registers: 0,
    file: "dinov2-vitb14.pth",
    sources: [
      meta(
        "dinov2_vitb14",
        "dinov2_vitb14_pretrain.pth",
        346378731,
        "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73",
        "Hugging Face LFS pointers of msdkhairi/vit_sam and the qubvel-hf/omniglue space",
      ),
    ],
  },
  "dinov2-vitl14": {
    title: "DINOv2 ViT-L/14 (LVD-142M)",
    family: "dinov2",
    arch: "vit_large",
    registers: 0,
    file: "dinov2-vitl14.pth",
    sources: [
      meta(
        "dinov2_vitl14",
        "dinov2_vitl14_pretrain.pth",
        1217586395,
        "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428",
        "Hugging Face LFS pointers of junjiexv/dinov2_vit, initialneil/YT-TED-SMPLX, " +
          "Realcat/imcui_checkpoints",
      ),
    ],
  },
  "dinov2-vitg14": {
    title: "DINOv2 ViT-g/14 (LVD-142M)",
    family: "dinov2",
    arch: "vit_giant2",
    registers: 0,
    file: "dinov2-vitg14.pth",
    sources: [meta("dinov2_vitg14", "dinov2_vitg14_pretrain.pth")],
  },
  "dinov2-vits14-reg4": {
    title: "DINOv2 ViT-S/14 with 4 registers (LVD-142M)",
    family: "dinov2",
    arch: "vit_small",
    registers: 4,
    file: "dinov2-vits14-reg4.pth",
    sources: [{
      url: `${META}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth`,
      bytes: UNPUBLISHED,
      sha256: "f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb",
      provenance: `${META_NOTE}; SHA-256 as pinned by a downstream project that ships this file`,
    }],
  },
  "dinov2-vitb14-reg4": {
    title: "DINOv2 ViT-B/14 with 4 registers (LVD-142M)",
    family: "dinov2",
    arch: "vit_base",
    registers: 4,
    file: "dinov2-vitb14-reg4.pth",
    sources: [
      meta(
        "dinov2_vitb14",
        "dinov2_vitb14_reg4_pretrain.pth",
        346393545,
        "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71",
        "Hugging Face LFS pointer of msdkhairi/vit_sam",
      ),
    ],
  },
  "dinov2-vitl14-reg4": {
    title: "DINOv2 ViT-L/14 with 4 registers (LVD-142M)",
    family: "dinov2",
    arch: "vit_large",
    registers: 4,
    file: "dinov2-vitl14-reg4.pth",
    sources: [meta("dinov2_vitl14", "dinov2_vitl14_reg4_pretrain.pth")],
  },
  "dinov2-vitg14-reg4": {
    title: "DINOv2 ViT-g/14 with 4 registers (LVD-142M)",
    family: "dinov2",
    arch: "vit_giant2",
    registers: 4,
    file: "dinov2-vitg14-reg4.pth",
    sources: [meta("dinov2_vitg14", "dinov2_vitg14_reg4_pretrain.pth")],
  },
};

/**
 * A user's spelling of a name, normalised: case-folded, `_` as `-`, and
 * torch.hub's `dinov2_vits14_reg` read as `dinov2-vits14-reg4`.
 * ("DinoBloom-S" → "dinobloom-s", "dinov2_vitb14" → "dinov2-vitb14".)
 */
export function normalizeName(name: string): string {
  const n = name.trim().toLowerCase().replaceAll("_", "-").replace(/-pretrain$/, "");
  return n.endsWith("-reg") ? `${n}4` : n;
}

/** The entry for `name` (any spelling normalizeName accepts), or undefined. */
export function lookupWeights(
  name: string,
  table: WeightsTable = WEIGHTS,
): { name: string; entry: WeightsEntry } | undefined {
  const n = normalizeName(name);
  const entry = Object.hasOwn(table, n) ? table[n] : undefined;
  return entry ? { name: n, entry } : undefined;
}

/**
 * The names closest to `name` (edit distance), best first: up to `max`, and
 * every name as close as the best; empty when none is close.
 */
export function nearestNames(name: string, table: WeightsTable = WEIGHTS, max = 3): string[] {
  const n = normalizeName(name.replace(/\.(pth|bin|safetensors)$/i, ""));
  const limit = Math.max(2, Math.floor(n.length / 3));
  const near = Object.keys(table)
    .map((k) => ({ k, d: editDistance(n, k) }))
    .filter((x) => x.d <= limit)
    .sort((a, b) => a.d - b.d);
  return near.filter((x, i) => i < max || x.d === near[0].d).map((x) => x.k);
}

/** The file name a mirror (BLOOM_WEIGHTS_URL) serves for an entry: its primary source's. */
export function mirrorFileName(entry: WeightsEntry): string {
  return new URL(entry.sources[0].url).pathname.split("/").pop()!;
}
