/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * Worker side of `ResizePool` (resize_pool.ts): runs `resizeRgb` on one
 * image per message and sends the pixels back (transferred, not copied).
 */
import { resizeRgb } from "./resample.ts";
import type { ResizeReply, ResizeRequest } from "./resize_pool.ts";

self.onmessage = (e: MessageEvent<ResizeRequest>) => {
  const { id, src, w, h, ow, oh, filter } = e.data;
  let reply: ResizeReply;
  try {
    const pixels = resizeRgb(src, w, h, ow, oh, filter);
    reply = { id, pixels };
    self.postMessage(reply, [pixels.buffer as ArrayBuffer]);
  } catch (err) {
    reply = { id, error: err instanceof Error ? err.message : String(err) };
    self.postMessage(reply);
  }
};
