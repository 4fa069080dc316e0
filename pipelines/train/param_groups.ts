/**
 * Optimiser parameter groups exactly as DINOv2's
 * get_params_groups_with_decay builds them per student module: layer-wise lr
 * decay by block (off in DinoBloom: rate 1.0), patch_embed lr × multiplier,
 * no weight decay on biases, norms and LayerScale gammas, and the "last
 * layer" (prototype) flag whose lr is frozen to zero in the first epoch.
 */

/** One parameter's optimiser settings. */
export interface ParamGroup {
  lrMultiplier: number;
  wdMultiplier: number;
  isLastLayer: boolean;
}

/**
 * DINOv2's get_vit_lr_decay_rate for a parameter of a module with
 * `numLayers` blocks (0 for the heads, where the rate is always 1).
 */
export function lrDecayRate(name: string, rate: number, numLayers: number): number {
  let layer = numLayers + 1;
  if (numLayers > 0) {
    if (/(^|\.)(pos_embed|patch_embed|mask_token|cls_token|register_tokens)/.test(name)) layer = 0;
    else {
      const m = /(^|\.)blocks\.(\d+)\./.exec(name);
      if (m && !name.includes("residual.")) layer = Number(m[2]) + 1;
    }
  }
  return rate ** (numLayers + 1 - layer);
}

/** The group of parameter `name` (without its module prefix) of a module with `numLayers` blocks. */
export function paramGroup(
  name: string,
  opts: { numLayers: number; layerDecay?: number; patchEmbedLrMult?: number },
): ParamGroup {
  let lrMultiplier = lrDecayRate(name, opts.layerDecay ?? 1, opts.numLayers);
  const isLastLayer = name.includes("last_layer");
  const wdMultiplier = name.endsWith(".bias") || name.includes("norm") || name.includes("gamma")
    ? 0
    : 1;
  if (name.includes("patch_embed")) lrMultiplier *= opts.patchEmbedLrMult ?? 1;
  return { lrMultiplier, wdMultiplier, isLastLayer };
}

/** A key for fusing equal groups, as DINOv2's fuse_params_groups does. */
export function groupKey(g: ParamGroup): string {
  return `lr${g.lrMultiplier}_wd${g.wdMultiplier}_last${g.isLastLayer}`;
}
