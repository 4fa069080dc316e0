/**
 * WGSL generation of the matmul variants: the register-blocked kernel, the
 * workgroup-tiled kernel, and the fused epilogue both share (alpha, bias,
 * GELU from `../gelu.ts`, LayerScale, residual, accumulate).
 */
import { GELU_WGSL } from "../gelu.ts";
import { type BindingKind, type Kernel, kernel } from "../kernel.ts";
import { type MatmulVariant, variantId } from "./variants.ts";

/** Everything a matmul kernel's source depends on. */
export interface KernelSpec {
  variant: MatmulVariant;
  transA: boolean;
  transB: boolean;
  /** A / B are bound as array<vec4f> and read four elements at a time. */
  vecA: boolean;
  vecB: boolean;
  /** out (and residual) are written / read as vec4 along N. */
  vecO: boolean;
  bias: boolean;
  gelu: boolean;
  scale: boolean;
  residual: boolean;
  accumulate: boolean;
  /**
   * `tex` with a transposed B only: B's texture holds f16 halves packed in pairs (rgba32uint,
   * 8 consecutive k per texel, `packF16Kernel`), read with unpack2x16float; the sums stay f32.
   */
  f16B?: boolean;
}

export const PARAM_FIELDS = [
  "M",
  "N",
  "K",
  "lda",
  "ldb",
  "ldo",
  "ldr",
  "offA",
  "offB",
  "offO",
  "offR",
  "offBias",
  "offScale",
  "bInner",
  "sA0",
  "sA1",
  "sB0",
  "sB1",
  "sO0",
  "sO1",
  "sR0",
  "sR1",
] as const;
export type ParamName = (typeof PARAM_FIELDS)[number];
export const UNIFORM_BYTES = 96;

/** Pipeline cache key: the variant, the layout and one letter per specialisation flag. */
function specKey(s: KernelSpec): string {
  const flags: [boolean, string][] = [
    [s.vecA, "a"],
    [s.vecB, "b"],
    [s.vecO, "o"],
    [s.bias, "B"],
    [s.gelu, "G"],
    [s.scale, "S"],
    [s.residual, "R"],
    [s.accumulate, "+"],
    [s.f16B ?? false, "h"],
  ];
  const layout = `${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}`;
  return `${variantId(s.variant)}|${layout}|${flags.map(([on, c]) => (on ? c : "-")).join("")}`;
}

const kernelCache = new Map<string, Kernel>();

/** The kernel for a spec (descriptions are memoised; the runtime caches pipelines). */
export function matmulKernel(s: KernelSpec): Kernel {
  const key = specKey(s);
  let k = kernelCache.get(key);
  if (!k) {
    const bindings: BindingKind[] = s.variant.kind === "tex"
      ? ["texture_f32", s.f16B ? "texture_u32" : "texture_f32", "read_write"]
      : ["read", "read", "read_write"];
    if (s.bias) bindings.push("read");
    if (s.scale) bindings.push("read");
    if (s.residual) bindings.push("read");
    k = kernel({
      name: `matmul_${s.variant.kind}`,
      key,
      bindings,
      uniformBytes: UNIFORM_BYTES,
      source: () =>
        s.variant.kind === "reg"
          ? regSource(s)
          : s.variant.kind === "tex"
          ? texSource(s)
          : tiledSource(s),
    });
    kernelCache.set(key, k);
  }
  return k;
}

/** Declarations shared by both variants: params, bindings, GELU. */
function header(s: KernelSpec): string {
  const L: string[] = [];
  L.push(`struct P { ${PARAM_FIELDS.map((f) => `${f}: u32`).join(", ")}, alpha: f32 }`);
  let b = 0;
  if (s.variant.kind === "tex") {
    L.push(`@group(0) @binding(${b++}) var TA: texture_2d<f32>;`);
    L.push(`@group(0) @binding(${b++}) var TB: texture_2d<${s.f16B ? "u32" : "f32"}>;`);
  } else {
    L.push(`@group(0) @binding(${b++}) var<storage, read> A: array<${s.vecA ? "vec4f" : "f32"}>;`);
    L.push(`@group(0) @binding(${b++}) var<storage, read> B: array<${s.vecB ? "vec4f" : "f32"}>;`);
  }
  const o = s.vecO ? "vec4f" : "f32";
  L.push(`@group(0) @binding(${b++}) var<storage, read_write> O: array<${o}>;`);
  if (s.bias) L.push(`@group(0) @binding(${b++}) var<storage, read> BIAS: array<f32>;`);
  if (s.scale) L.push(`@group(0) @binding(${b++}) var<storage, read> SCALE: array<f32>;`);
  if (s.residual) L.push(`@group(0) @binding(${b++}) var<storage, read> RES: array<${o}>;`);
  L.push(`@group(0) @binding(${b}) var<uniform> p: P;`);
  if (s.gelu) L.push(GELU_WGSL);
  return L.join("\n");
}

/** Batch base offsets of every operand, from the workgroup's z. */
function batchBases(s: KernelSpec): string {
  return `  let bi = wid.z % p.bInner;
  let bo = wid.z / p.bInner;
  let baseA = p.offA + bo * p.sA1 + bi * p.sA0;
  let baseB = p.offB + bo * p.sB1 + bi * p.sB0;
  let baseO = p.offO + bo * p.sO1 + bi * p.sO0;` +
    (s.residual ? `\n  let baseR = p.offR + bo * p.sR1 + bi * p.sR0;` : "");
}

/**
 * The fused write-out of a tm × tn block at (m0, n0) whose accumulators are `c{r}_{c}`:
 * alpha, bias, GELU, LayerScale, residual, accumulate; rows and columns past M, N are masked.
 * With `vecO` (N, ldo and offsets multiples of 4) a group of 4 columns is wholly inside or
 * outside N and moves as one vec4 — on llvmpipe every store is a loop over lanes, so this
 * quarters the write-out's cost.
 */
function epilogue(s: KernelSpec, tm: number, tn: number): string {
  if (tm * tn > EPILOGUE_UNROLL_MAX && s.vecO) return epilogueRows(s, tm, tn);
  const L: string[] = [];
  for (let c = 0; c < tn; c++) {
    const n = `min(n0 + ${c}u, p.N - 1u)`;
    if (s.bias) L.push(`  let bias${c} = BIAS[p.offBias + ${n}];`);
    if (s.scale) L.push(`  let scale${c} = SCALE[p.offScale + ${n}];`);
  }
  const group = s.vecO ? 4 : 1;
  const vt = s.vecO ? "vec4f" : "f32";
  const cols = (c0: number) => Array.from({ length: group }, (_, i) => c0 + i);
  const vec = (parts: string[]) => (s.vecO ? `vec4f(${parts.join(", ")})` : parts[0]);
  for (let r = 0; r < tm; r++) {
    L.push(`  if (m0 + ${r}u < p.M) {`);
    L.push(`    let orow = baseO + (m0 + ${r}u) * p.ldo + n0;`);
    if (s.residual) L.push(`    let rrow = baseR + (m0 + ${r}u) * p.ldr + n0;`);
    for (let c0 = 0; c0 < tn; c0 += group) {
      const at = (row: string) => (s.vecO ? `(${row} >> 2u) + ${c0 / 4}u` : `${row} + ${c0}u`);
      const ops = [`var v: ${vt} = ${vec(cols(c0).map((c) => `c${r}_${c}`))} * p.alpha;`];
      if (s.bias) ops.push(`v += ${vec(cols(c0).map((c) => `bias${c}`))};`);
      if (s.gelu) {
        ops.push(
          s.vecO
            ? `v = vec4f(bloom_gelu(v.x), bloom_gelu(v.y), bloom_gelu(v.z), bloom_gelu(v.w));`
            : `v = bloom_gelu(v);`,
        );
      }
      if (s.scale) ops.push(`v *= ${vec(cols(c0).map((c) => `scale${c}`))};`);
      if (s.residual) ops.push(`v += RES[${at("rrow")}];`);
      if (s.accumulate) ops.push(`v += O[${at("orow")}];`);
      ops.push(`O[${at("orow")}] = v;`);
      L.push(`    if (n0 + ${c0}u < p.N) { ${ops.join(" ")} }`);
    }
    L.push(`  }`);
  }
  return L.join("\n");
}

/**
 * Blocks above this many outputs per invocation write out row by row (`epilogueRows`):
 * unrolled, a 32×24 block with GELU is 768 copies of erf, which takes llvmpipe ~7 s to compile.
 */
const EPILOGUE_UNROLL_MAX = 256;

/**
 * The write-out of `epilogue` as a loop over the block's rows: a `switch` moves row r's
 * accumulators into one row of temporaries, and one copy of the fused maths per column group
 * writes it, so the source holds tn/4 copies of GELU instead of tm·tn/4. Only for vec4
 * outputs (`vecO`); others use the unrolled form.
 */
function epilogueRows(s: KernelSpec, tm: number, tn: number): string {
  const L: string[] = [];
  const g4 = tn / 4;
  const lanes = (c0: number) => Array.from({ length: 4 }, (_, i) => c0 + i);
  for (let g = 0; g < g4; g++) {
    const e = (c: number, arr: string, off: string) => `${arr}[${off} + min(n0 + ${c}u, p.N - 1u)]`;
    if (s.bias) {
      L.push(
        `  let bias${g} = vec4f(${lanes(4 * g).map((c) => e(c, "BIAS", "p.offBias")).join(", ")});`,
      );
    }
    if (s.scale) {
      L.push(
        `  let scale${g} = vec4f(${
          lanes(4 * g).map((c) => e(c, "SCALE", "p.offScale")).join(", ")
        });`,
      );
    }
  }
  for (let g = 0; g < g4; g++) L.push(`  var t${g}: vec4f;`);
  L.push(`  for (var r = 0u; r < ${tm}u; r++) {`);
  L.push(`    if (m0 + r >= p.M) { break; }`);
  L.push(`    switch r {`);
  for (let r = 0; r < tm; r++) {
    L.push(`      case ${r === tm - 1 ? `${r}u, default` : `${r}u`}: {`);
    for (let g = 0; g < g4; g++) {
      L.push(`        t${g} = vec4f(${lanes(4 * g).map((c) => `c${r}_${c}`).join(", ")});`);
    }
    L.push(`      }`);
  }
  L.push(`    }`);
  L.push(`    let orow = (baseO + (m0 + r) * p.ldo + n0) >> 2u;`);
  if (s.residual) L.push(`    let rrow = (baseR + (m0 + r) * p.ldr + n0) >> 2u;`);
  for (let g = 0; g < g4; g++) {
    const ops = [`var v = t${g} * p.alpha;`];
    if (s.bias) ops.push(`v += bias${g};`);
    if (s.gelu) {
      ops.push(`v = vec4f(bloom_gelu(v.x), bloom_gelu(v.y), bloom_gelu(v.z), bloom_gelu(v.w));`);
    }
    if (s.scale) ops.push(`v *= scale${g};`);
    if (s.residual) ops.push(`v += RES[rrow + ${g}u];`);
    if (s.accumulate) ops.push(`v += O[orow + ${g}u];`);
    ops.push(`O[orow + ${g}u] = v;`);
    L.push(`    if (n0 + ${4 * g}u < p.N) { ${ops.join(" ")} }`);
  }
  L.push(`  }`);
  return L.join("\n");
}

/** A scalar element of a binding declared as vec4 or scalar array. */
function elem(name: string, vec: boolean, idx: string): string {
  return vec ? `${name}[(${idx}) >> 2u][(${idx}) & 3u]` : `${name}[${idx}]`;
}

/**
 * The register-blocked kernel. Invocation `li` of a workgroup owns rows m0.. (li % wgm) and
 * columns n0.. (li / wgm). Per K step of 4 it loads its A side (tm rows × 4 k) once, then the B
 * side block by block (one column, or 4 columns), each block's tm·4·(1 or 4) FMAs right after
 * its load. Cost model on llvmpipe (read off its machine code): a vec4 load is a loop over the
 * 8 lanes of ~40 scalar instructions per lane, an FMA on a spilled accumulator ~3 vector
 * instructions for 8 lanes, so time goes as 40·(tm + tn) per lane against 0.35·4·tm·tn.
 */
function regSource(s: KernelSpec): string {
  const v = s.variant as Extract<MatmulVariant, { kind: "reg" }>;
  const { tm, tn } = v;
  const L = blockHead(s, v);

  // Per-row / per-column base addresses (clamped so edge blocks read valid memory).
  const a: string[][] = Array.from({ length: tm }, () => []);
  const b: string[][] = Array.from({ length: tn }, () => []);
  const loadsA: string[] = [];
  if (!s.transA) {
    // A[m, k] at baseA + m·lda + k: contiguous along k.
    for (let r = 0; r < tm; r++) {
      L.push(`  let ra${r} = baseA + min(m0 + ${r}u, p.M - 1u) * p.lda;`);
      if (s.vecA) {
        loadsA.push(`let a${r} = A[(ra${r} >> 2u) + k4];`);
        for (let j = 0; j < 4; j++) a[r][j] = `a${r}.${"xyzw"[j]}`;
      } else {
        for (let j = 0; j < 4; j++) {
          loadsA.push(`let a${r}_${j} = A[ra${r} + k + ${j}u];`);
          a[r][j] = `a${r}_${j}`;
        }
      }
    }
  } else {
    // A stored [K, M]: A[m, k] at baseA + k·lda + m: contiguous along m.
    if (s.vecA) {
      for (let g = 0; g < tm / 4; g++) {
        L.push(`  let ga${g} = min((m0 >> 2u) + ${g}u, (p.M >> 2u) - 1u);`);
      }
      for (let j = 0; j < 4; j++) {
        loadsA.push(`let ka${j} = (baseA + (k + ${j}u) * p.lda) >> 2u;`);
        for (let g = 0; g < tm / 4; g++) {
          loadsA.push(`let a${j}_${g} = A[ka${j} + ga${g}];`);
          for (let i = 0; i < 4; i++) a[4 * g + i][j] = `a${j}_${g}.${"xyzw"[i]}`;
        }
      }
    } else {
      for (let r = 0; r < tm; r++) L.push(`  let ma${r} = min(m0 + ${r}u, p.M - 1u);`);
      for (let j = 0; j < 4; j++) {
        loadsA.push(`let ka${j} = baseA + (k + ${j}u) * p.lda;`);
        for (let r = 0; r < tm; r++) {
          loadsA.push(`let a${r}_${j} = A[ka${j} + ma${r}];`);
          a[r][j] = `a${r}_${j}`;
        }
      }
    }
  }
  // The B side comes in blocks (one column, or a group of 4 columns), each loaded right
  // before the FMAs that use it: on llvmpipe this measured ~1.6× faster than loading every
  // operand first, which keeps far more values live across the load loops.
  const pre: string[] = [];
  const blocks: { loads: string[]; cols: number[] }[] = [];
  if (s.transB) {
    // B stored [N, K]: B[k, n] at baseB + n·ldb + k: contiguous along k.
    for (let c = 0; c < tn; c++) {
      L.push(`  let rb${c} = baseB + min(n0 + ${c}u, p.N - 1u) * p.ldb;`);
      const loads: string[] = [];
      if (s.vecB) {
        loads.push(`let b${c} = B[(rb${c} >> 2u) + k4];`);
        for (let j = 0; j < 4; j++) b[c][j] = `b${c}.${"xyzw"[j]}`;
      } else {
        for (let j = 0; j < 4; j++) {
          loads.push(`let b${c}_${j} = B[rb${c} + k + ${j}u];`);
          b[c][j] = `b${c}_${j}`;
        }
      }
      blocks.push({ loads, cols: [c] });
    }
  } else {
    // B[k, n] at baseB + k·ldb + n: contiguous along n; a block is 4 k-rows × 4 columns.
    for (let g = 0; g < tn / 4; g++) {
      if (s.vecB) L.push(`  let gb${g} = min((n0 >> 2u) + ${g}u, (p.N >> 2u) - 1u);`);
    }
    if (!s.vecB) {
      for (let c = 0; c < tn; c++) L.push(`  let nb${c} = min(n0 + ${c}u, p.N - 1u);`);
    }
    for (let j = 0; j < 4; j++) {
      pre.push(
        s.vecB
          ? `let kb${j} = (baseB + (k + ${j}u) * p.ldb) >> 2u;`
          : `let kb${j} = baseB + (k + ${j}u) * p.ldb;`,
      );
    }
    for (let g = 0; g < tn / 4; g++) {
      const loads: string[] = [];
      for (let j = 0; j < 4; j++) {
        if (s.vecB) {
          loads.push(`let b${j}_${g} = B[kb${j} + gb${g}];`);
          for (let i = 0; i < 4; i++) b[4 * g + i][j] = `b${j}_${g}.${"xyzw"[i]}`;
        } else {
          for (let i = 0; i < 4; i++) {
            const c = 4 * g + i;
            loads.push(`let b${c}_${j} = B[kb${j} + nb${c}];`);
            b[c][j] = `b${c}_${j}`;
          }
        }
      }
      blocks.push({ loads, cols: [0, 1, 2, 3].map((i) => 4 * g + i) });
    }
  }
  L.push(`  let k4n = p.K >> 2u;
  for (var k4 = 0u; k4 < k4n; k4++) {
    let k = k4 << 2u;`);
  for (const l of [...loadsA, ...pre]) L.push(`    ${l}`);
  for (const blk of blocks) {
    for (const l of blk.loads) L.push(`    ${l}`);
    for (const c of blk.cols) {
      for (let r = 0; r < tm; r++) {
        for (let j = 0; j < 4; j++) {
          L.push(`    c${r}_${c} = fma(${a[r][j]}, ${b[c][j]}, c${r}_${c});`);
        }
      }
    }
  }
  L.push(`  }`);
  // K tail (K % 4 elements): scalar loads. vec4-bound A/B only occur with K % 4 == 0 on the
  // side that is vectorised along K, so `elem` on a vec4 binding here reads along M or N.
  L.push(`  for (var k = k4n << 2u; k < p.K; k++) {`);
  for (let r = 0; r < tm; r++) {
    const idx = s.transA
      ? `baseA + k * p.lda + min(m0 + ${r}u, p.M - 1u)`
      : `baseA + min(m0 + ${r}u, p.M - 1u) * p.lda + k`;
    L.push(`    let ta${r} = ${elem("A", s.vecA, idx)};`);
  }
  for (let c = 0; c < tn; c++) {
    const idx = s.transB
      ? `baseB + min(n0 + ${c}u, p.N - 1u) * p.ldb + k`
      : `baseB + k * p.ldb + min(n0 + ${c}u, p.N - 1u)`;
    L.push(`    let tb${c} = ${elem("B", s.vecB, idx)};`);
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn; c++) L.push(`    c${r}_${c} = fma(ta${r}, tb${c}, c${r}_${c});`);
  }
  L.push(`  }`);
  L.push(epilogue(s, tm, tn));
  L.push(`}`);
  return L.join("\n");
}

/**
 * The register-blocked kernel over texture operands (`tex`): A is a (K/4) × M texture (texel
 * (k4, m) = A[m, 4·k4 … 4·k4+3]); B is (K/4) × N when transposed (texel (k4, n) = B[n, 4·k4…])
 * or (N/4) × K when not (texel (n4, k) = B[k, 4·n4…]). The dispatch guarantees K % 4 == 0
 * (and N % 4 == 0 for a plain B), a single batch, and that the textures hold exactly the rows
 * of this dispatch. Same block structure and epilogue as the `reg` kernel.
 */
function texSource(s: KernelSpec): string {
  const v = s.variant as Extract<MatmulVariant, { kind: "tex" }>;
  const { tm, tn } = v;
  const L = blockHead(s, v);
  for (let r = 0; r < tm; r++) L.push(`  let ra${r} = min(m0 + ${r}u, p.M - 1u);`);
  const body: string[] = [];
  for (let r = 0; r < tm; r++) body.push(`let a${r} = textureLoad(TA, vec2u(k4, ra${r}), 0);`);
  const fmas = (c: number, bv: (j: number) => string) => {
    for (let r = 0; r < tm; r++) {
      for (let j = 0; j < 4; j++) {
        body.push(`c${r}_${c} = fma(a${r}.${"xyzw"[j]}, ${bv(j)}, c${r}_${c});`);
      }
    }
  };
  if (s.f16B) {
    // Per step of 8 along K: two f32 texels of A per row, one packed texel (8 halves) of B per
    // column, unpacked to two vec4s.
    body.length = 0;
    for (let r = 0; r < tm; r++) {
      body.push(`let a${r} = textureLoad(TA, vec2u(2u * k8, ra${r}), 0);`);
      body.push(`let e${r} = textureLoad(TA, vec2u(2u * k8 + 1u, ra${r}), 0);`);
    }
    for (let c = 0; c < tn; c++) L.push(`  let rb${c} = min(n0 + ${c}u, p.N - 1u);`);
    for (let c = 0; c < tn; c++) {
      body.push(`let h${c} = textureLoad(TB, vec2u(k8, rb${c}), 0);`);
      body.push(`let b${c} = vec4f(unpack2x16float(h${c}.x), unpack2x16float(h${c}.y));`);
      body.push(`let d${c} = vec4f(unpack2x16float(h${c}.z), unpack2x16float(h${c}.w));`);
      for (let r = 0; r < tm; r++) {
        for (let j = 0; j < 4; j++) {
          body.push(`c${r}_${c} = fma(a${r}.${"xyzw"[j]}, b${c}.${"xyzw"[j]}, c${r}_${c});`);
        }
        for (let j = 0; j < 4; j++) {
          body.push(`c${r}_${c} = fma(e${r}.${"xyzw"[j]}, d${c}.${"xyzw"[j]}, c${r}_${c});`);
        }
      }
    }
    return blockTail(s, L, "k8", "p.K >> 3u", body);
  } else if (s.transB) {
    for (let c = 0; c < tn; c++) L.push(`  let rb${c} = min(n0 + ${c}u, p.N - 1u);`);
    for (let c = 0; c < tn; c++) {
      body.push(`let b${c} = textureLoad(TB, vec2u(k4, rb${c}), 0);`);
      fmas(c, (j) => `b${c}.${"xyzw"[j]}`);
    }
  } else {
    for (let g = 0; g < tn / 4; g++) {
      L.push(`  let gb${g} = min((n0 >> 2u) + ${g}u, (p.N >> 2u) - 1u);`);
    }
    body.push(`let k = k4 << 2u;`);
    for (let g = 0; g < tn / 4; g++) {
      for (let j = 0; j < 4; j++) {
        body.push(`let b${j}_${g} = textureLoad(TB, vec2u(gb${g}, k + ${j}u), 0);`);
      }
      for (let i = 0; i < 4; i++) fmas(4 * g + i, (j) => `b${j}_${g}.${"xyzw"[i]}`);
    }
  }
  return blockTail(s, L, "k4", "p.K >> 2u", body);
}

/**
 * The head shared by the register-block kernels (`reg`, `tex`): invocation `li` of a
 * workgroup owns rows m0… (li % wgm) and columns n0… (li / wgm); its tm × tn accumulators.
 */
function blockHead(
  s: KernelSpec,
  v: { tm: number; tn: number; wgm: number; wgn: number },
): string[] {
  const { tm, tn, wgm, wgn } = v;
  const L: string[] = [header(s)];
  L.push(`@compute @workgroup_size(${wgm * wgn})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let m0 = (wid.y * ${wgm}u + li % ${wgm}u) * ${tm}u;
  let n0 = (wid.x * ${wgn}u + li / ${wgm}u) * ${tn}u;
  // No barriers in these kernels, so invocations past the edge may leave at once.
  if (m0 >= p.M || n0 >= p.N) { return; }
${batchBases(s)}`);
  for (let r = 0; r < tm; r++) for (let c = 0; c < tn; c++) L.push(`  var c${r}_${c} = 0.0;`);
  return L;
}

/** The K loop over `body` (index `k`, `count` steps), the epilogue and the end of `main`. */
function blockTail(s: KernelSpec, L: string[], k: string, count: string, body: string[]): string {
  const v = s.variant as { tm: number; tn: number };
  L.push(`  let ${k}n = ${count};
  for (var ${k} = 0u; ${k} < ${k}n; ${k}++) {`);
  for (const l of body) L.push(`    ${l}`);
  L.push(`  }`);
  L.push(epilogue(s, v.tm, v.tn));
  L.push(`}`);
  return L.join("\n");
}

/**
 * The workgroup-memory kernel. Each slab step stages A as [bk][bm] and B as [bk][bn] (both
 * k-major, so a thread reads its tm rows / tn columns of one k as vec4s), zero-filling past
 * M, N and K, then every thread accumulates its tm × tn block.
 */
function tiledSource(s: KernelSpec): string {
  const v = s.variant as Extract<MatmulVariant, { kind: "tiled" }>;
  const { bm, bn, bk, tm, tn } = v;
  const tx = bn / tn;
  const threads = (bm / tm) * tx;
  const L: string[] = [header(s)];
  L.push(`var<workgroup> As: array<vec4f, ${(bk * bm) / 4}>;
var<workgroup> Bs: array<vec4f, ${(bk * bn) / 4}>;
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let tileM = wid.y * ${bm}u;
  let tileN = wid.x * ${bn}u;
  let m0 = tileM + (li / ${tx}u) * ${tm}u;
  let n0 = tileN + (li % ${tx}u) * ${tn}u;
${batchBases(s)}`);
  for (let r = 0; r < tm; r++) for (let c = 0; c < tn; c++) L.push(`  var c${r}_${c} = 0.0;`);
  L.push(`  for (var k0 = 0u; k0 < p.K; k0 += ${bk}u) {`);
  L.push(stage(s, "A", bm, bk, threads).map((l) => `    ${l}`).join("\n"));
  L.push(stage(s, "B", bn, bk, threads).map((l) => `    ${l}`).join("\n"));
  L.push(`    workgroupBarrier();
    for (var kk = 0u; kk < ${bk}u; kk++) {`);
  for (let g = 0; g < tm / 4; g++) {
    L.push(`      let a${g} = As[(kk * ${bm}u + m0 - tileM) / 4u + ${g}u];`);
  }
  for (let g = 0; g < tn / 4; g++) {
    L.push(`      let b${g} = Bs[(kk * ${bn}u + n0 - tileN) / 4u + ${g}u];`);
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn; c++) {
      const av = `a${r >> 2}.${"xyzw"[r & 3]}`;
      const bv = `b${c >> 2}.${"xyzw"[c & 3]}`;
      L.push(`      c${r}_${c} = fma(${av}, ${bv}, c${r}_${c});`);
    }
  }
  L.push(`    }
    workgroupBarrier();
  }`);
  L.push(epilogue(s, tm, tn));
  L.push(`}`);
  return L.join("\n");
}

/**
 * Staging of one operand's slab into workgroup memory, k-major ([bk][bm] for A in `As`, [bk][bn]
 * for B in `Bs`), zero outside the matrix. A along M and B along N are the same code with the
 * names swapped: each is stored either with k contiguous (A plain, B transposed), so a quad of
 * k values goes to 4 k-rows of the slab, or with k as the row (A transposed, B plain), so a
 * quad of 4 m (or n) values is one vec4 store.
 */
function stage(s: KernelSpec, side: "A" | "B", b: number, bk: number, threads: number): string[] {
  const isA = side === "A";
  const kContiguous = isA ? !s.transA : s.transB;
  const vec = isA ? s.vecA : s.vecB;
  const i = isA ? "m" : "n"; // the tile dimension's index: m for A, n for B
  const ext = isA ? "p.M" : "p.N";
  const tile = isA ? "tileM" : "tileN";
  const ld = isA ? "p.lda" : "p.ldb";
  const slab = `${side}s`;
  const L: string[] = [];
  const quads = (b * bk) / 4;
  for (let q0 = 0; q0 < quads; q0 += threads) {
    const guard = q0 + threads > quads ? `if (q < ${quads}u) ` : "";
    L.push(`{ let q = li + ${q0}u; ${guard}{`);
    if (kContiguous) {
      // quad q: row ${i}${i} = q / (bk/4), k group kq; the 4 values go to 4 k-rows of the slab.
      L.push(`  let ${i}${i} = q / ${bk / 4}u; let kq = (q % ${bk / 4}u) * 4u;`);
      L.push(`  let ${i} = ${tile} + ${i}${i}; let k = k0 + kq;`);
      L.push(`  let row = base${side} + min(${i}, ${ext} - 1u) * ${ld};`);
      if (vec) {
        // K % 4 == 0 here, so a quad is either wholly inside K or wholly outside.
        L.push(
          `  let val = select(vec4f(0.0), ${side}[(row + min(k, p.K - 4u)) >> 2u], ` +
            `${i} < ${ext} && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, ${side}[row + min(k + ${j}u, p.K - 1u)], ${i} < ${ext} && k + ${j}u < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  let base = kq * ${b}u + ${i}${i};`);
      for (let j = 0; j < 4; j++) {
        L.push(`  ${slab}[(base + ${j * b}u) >> 2u][(base + ${j * b}u) & 3u] = val.${"xyzw"[j]};`);
      }
    } else {
      // Stored [K, ${isA ? "M" : "N"}]: quad q covers k row kk, 4 columns ${i}q… → one vec4 store.
      L.push(`  let kk = q / ${b / 4}u; let ${i}q = (q % ${b / 4}u) * 4u;`);
      L.push(`  let ${i} = ${tile} + ${i}q; let k = k0 + kk;`);
      L.push(`  let row = base${side} + min(k, p.K - 1u) * ${ld};`);
      if (vec) {
        L.push(
          `  let val = select(vec4f(0.0), ${side}[(row + min(${i}, ${ext} - 4u)) >> 2u], ` +
            `${i} < ${ext} && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, ${side}[row + min(${i} + ${j}u, ${ext} - 1u)], ${i} + ${j}u < ${ext} && k < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  ${slab}[(kk * ${b}u + ${i}q) >> 2u] = val;`);
    }
    L.push(`}}`);
  }
  return L;
}

/**
 * Packs f32 rows into an rgba32uint texture of f16 halves: texel (x, y) holds elements
 * 8x … 8x+7 of row y (`pack2x16float`: round to nearest even, as PyTorch's `.half()`), the
 * B operand of the `tex` kernel with `f16B`. Row y starts at element `off + y · ld`.
 */
export const packF16Kernel: Kernel = kernel({
  name: "matmul_pack_f16",
  bindings: ["read", "write_rgba32uint"],
  uniformBytes: 16,
  source: () => `
struct P { off: u32, ld: u32, width: u32, height: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var dst: texture_storage_2d<rgba32uint, write>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.width || gid.y >= p.height) { return; }
  let at = p.off + gid.y * p.ld + 8u * gid.x;
  let h = vec4u(
    pack2x16float(vec2f(src[at], src[at + 1u])),
    pack2x16float(vec2f(src[at + 2u], src[at + 3u])),
    pack2x16float(vec2f(src[at + 4u], src[at + 5u])),
    pack2x16float(vec2f(src[at + 6u], src[at + 7u])),
  );
  textureStore(dst, vec2u(gid.x, gid.y), h);
}`,
});
