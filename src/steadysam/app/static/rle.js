// COCO run-length encoding in the browser: the masks the API returns are COCO RLE dicts
// ({size: [h, w], counts}), counts either pycocotools' compressed string or a list of runs.
// Runs alternate background / foreground, start with background, in column-major order.
"use strict";

// Run lengths of a compressed counts string (pycocotools rleFrString: 5 bits per character,
// offset 48, bit 0x20 = more characters follow, 0x10 on the last = negative; from the third
// run on each value is a difference to the run two before).
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// Paint an RLE mask into a w x h canvas in colour [r, g, b, a]; returns the canvas.
function rleCanvas(rle, color) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  const d = image.data;
  let i = 0;
  for (let r = 0; r < counts.length; r++) {
    const n = counts[r];
    if (r % 2 === 1) {
      for (let j = i; j < i + n; j++) {
        const row = j % h, col = (j - row) / h, o = (row * w + col) * 4;
        d[o] = color[0]; d[o + 1] = color[1]; d[o + 2] = color[2]; d[o + 3] = color[3];
      }
    }
    i += n;
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}
