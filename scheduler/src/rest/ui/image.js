// A photo as an image model's input tensor, as config.yaml's `task:` says: decoded at its
// own size (no colour-profile conversion, the photo's orientation applied), resized to
// width x height with Pillow's bilinear filter (Image.resize(size, Image.BILINEAR): a
// triangle filter widened by the scale when shrinking, one pass per axis, each rounded to
// 8 bits as Pillow does, so the same photo gives Python's tensor), then per channel
// (pixel * scale - mean[c]) / std[c] in the model's channel order and layout.

// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

// Per output index: the first input index and the fixed-point weights (Pillow's
// precompute_coeffs and normalize_coeffs_8bpc for the bilinear filter).
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 1 * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1 ? 1 - t : 0;
      k.push(w);
      ww += w;
    }
    const fixed = k.map((w) => {
      const v = ww !== 0 ? w / ww : w;
      return v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    });
    out.push([xmin, fixed]);
  }
  return out;
}

function clip8(sum) {
  const v = Math.floor(sum / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// RGB pixels (3 per pixel, row by row) resized along x, then along y.
export function resizeBilinear(rgb, width, height, outWidth, outHeight) {
  let pixels = rgb, w = width;
  if (outWidth !== width) {
    const coeffs = coefficients(width, outWidth);
    const next = new Uint8Array(outWidth * height * 3);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < outWidth; x++) {
        const [xmin, k] = coeffs[x];
        for (let c = 0; c < 3; c++) {
          let sum = ONE / 2;
          for (let i = 0; i < k.length; i++) sum += pixels[(y * w + xmin + i) * 3 + c] * k[i];
          next[(y * outWidth + x) * 3 + c] = clip8(sum);
        }
      }
    }
    pixels = next; w = outWidth;
  }
  if (outHeight !== height) {
    const coeffs = coefficients(height, outHeight);
    const next = new Uint8Array(w * outHeight * 3);
    for (let y = 0; y < outHeight; y++) {
      const [ymin, k] = coeffs[y];
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = ONE / 2;
          for (let i = 0; i < k.length; i++) sum += pixels[((ymin + i) * w + x) * 3 + c] * k[i];
          next[(y * w + x) * 3 + c] = clip8(sum);
        }
      }
    }
    pixels = next;
  }
  return pixels;
}

// The tensor (one image: batch 1) and a preview of what the model sees.
export async function imageTensor(file, task) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", imageOrientation: "from-image" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width; canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  const { width: W, height: H } = task;
  const small = resizeBilinear(rgb, bitmap.width, bitmap.height, W, H);
  const order = task.channels === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const data = new Array(W * H * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      for (let c = 0; c < 3; c++) {
        const pixel = small[(y * W + x) * 3 + order[c]];
        const value = (pixel * task.scale - task.mean[c]) / task.std[c];
        const index = task.layout === "NHWC" ? (y * W + x) * 3 + c : (c * H + y) * W + x;
        data[index] = value;
      }
    }
  }
  const shape = task.layout === "NHWC" ? [1, H, W, 3] : [1, 3, H, W];
  // The preview: the resized photo, drawn large.
  const preview = document.createElement("canvas");
  preview.width = W; preview.height = H;
  const image = preview.getContext("2d").createImageData(W, H);
  for (let i = 0; i < W * H; i++) {
    image.data.set([small[i * 3], small[i * 3 + 1], small[i * 3 + 2], 255], i * 4);
  }
  preview.getContext("2d").putImageData(image, 0, 0);
  preview.className = "preview";
  preview.setAttribute("role", "img");
  preview.setAttribute("aria-label", `the photo as the model sees it, ${W}x${H}`);
  return { shape, data, preview };
}
