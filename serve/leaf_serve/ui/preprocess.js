// Photo -> the model's input, the way the server does it (leaf_common/imaging.py decode_image), so the
// phone and the server see the same pixels: the browser decodes at full size, then this file repeats
// Pillow's steps in order: JPEG draft (DCT scaling: here a box average of the same factor), integer
// reduce, EXIF orientation, alpha onto white, and Pillow's antialiased bilinear resize with its
// fixed-point coefficients. PNGs come out identical to Pillow's; JPEGs differ by the decoders' rounding
// and the draft (tests/serve/test_serve_offline.py measures both).

const PRECISION_BITS = 32 - 8 - 2; // Pillow's Resample.c for 8-bit images
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

// Pixels as [height, width, 4] RGBA in a Uint8ClampedArray, plus their size.
async function decodeRGBA(blob) {
  // Chromium applies the EXIF orientation while decoding (even with "none"): ask for it explicitly, and
  // photoPixels turns the pixels back as stored, because Pillow reduces first and rotates after.
  const options = { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" };
  const bitmap = await createImageBitmap(blob, options);
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { data: context.getImageData(0, 0, width, height).data, width, height };
}

// Pillow's Image.reduce(factor): boxes of factor x factor averaged, the last row/column of boxes partial.
function reduce(img, factor) {
  const width = Math.ceil(img.width / factor);
  const height = Math.ceil(img.height / factor);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    const y1 = Math.min(img.height, (y + 1) * factor);
    for (let x = 0; x < width; x++) {
      const x1 = Math.min(img.width, (x + 1) * factor);
      const sum = [0, 0, 0, 0];
      let count = 0;
      for (let yy = y * factor; yy < y1; yy++) {
        for (let xx = x * factor; xx < x1; xx++) {
          const i = (yy * img.width + xx) * 4;
          for (let c = 0; c < 4; c++) sum[c] += img.data[i + c];
          count++;
        }
      }
      // Pillow's Reduce.c rounding: a float32 reciprocal in 24-bit fixed point (not an exact division).
      const multiplier = Math.trunc(Math.fround(4294967296 / Math.fround(256 * count)));
      const amend = Math.floor(count / 2);
      const o = (y * width + x) * 4;
      for (let c = 0; c < 4; c++) out[o + c] = Math.floor(((sum[c] + amend) * multiplier) / 2 ** 24);
    }
  }
  return { data: out, width, height };
}

// EXIF orientation tag (0x0112) of a JPEG, 1 when absent or unreadable (as leaf_common.imaging).
export function orientation(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.byteLength < 4 || view.getUint16(0) !== 0xffd8) return 1;
  let at = 2;
  while (at + 4 <= view.byteLength && view.getUint8(at) === 0xff) {
    const marker = view.getUint8(at + 1);
    const length = view.getUint16(at + 2);
    if (marker === 0xe1 && view.getUint32(at + 4) === 0x45786966) return tiffOrientation(view, at + 10);
    if (marker === 0xda) break; // image data: no EXIF after it
    at += 2 + length;
  }
  return 1;
}

function tiffOrientation(view, tiff) {
  try {
    const little = view.getUint16(tiff) === 0x4949;
    const ifd = tiff + view.getUint32(tiff + 4, little);
    const entries = view.getUint16(ifd, little);
    for (let k = 0; k < entries; k++) {
      const entry = ifd + 2 + k * 12;
      if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
    }
  } catch {
    return 1; // a damaged EXIF block is not a damaged photo
  }
  return 1;
}

// Pillow's Image.transpose for EXIF orientations 2..8 (what leaf_common.imaging._TRANSPOSE maps them to).
function orient(img, value) {
  if (value < 2 || value > 8) return img;
  const swap = value >= 5;
  const width = swap ? img.height : img.width;
  const height = swap ? img.width : img.height;
  const out = new Uint8ClampedArray(img.data.length);
  const W = img.width;
  const H = img.height;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      // (sx, sy): the stored pixel that lands at (x, y)
      const [sx, sy] = {
        2: [W - 1 - x, y],
        3: [W - 1 - x, H - 1 - y],
        4: [x, H - 1 - y],
        5: [y, x],
        6: [y, H - 1 - x],
        7: [W - 1 - y, H - 1 - x],
        8: [W - 1 - y, x],
      }[value];
      const i = (sy * W + sx) * 4;
      const o = (y * width + x) * 4;
      for (let c = 0; c < 4; c++) out[o + c] = img.data[i + c];
    }
  }
  return { data: out, width, height };
}

// The transpose that undoes each one: all are their own inverse but the two quarter turns.
const UNDO = { 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6 };

// Transparent pixels become white (a leaf photographed on paper), as leaf_common.imaging._flatten_alpha.
function flatten(img) {
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) {
    const a = d[i + 3];
    if (a === 255) continue;
    if (a === 0) {
      d[i] = d[i + 1] = d[i + 2] = 255;
    } else {
      // Pillow's AlphaComposite.c onto opaque white, in its 7-bit fixed point
      for (let c = 0; c < 3; c++) {
        const t = d[i + c] * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
        d[i + c] = (((t >> 8) + t) >> 8) >> 7;
      }
    }
    d[i + 3] = 255;
  }
  return img;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale; // bilinear support 1.0
  const taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const w = Math.max(0, 1 - Math.abs((x + xmin - center + 0.5) / filterscale));
      k.push(w);
      total += w;
    }
    const fixed = k.map((w) => {
      const v = total ? w / total : 0;
      return Math.trunc(v < 0 ? v * ONE - 0.5 : v * ONE + 0.5);
    });
    taps.push({ xmin, k: fixed });
  }
  return taps;
}

function clip8(sum) {
  const v = Math.floor(sum / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// Horizontal pass then vertical pass, each rounded to 8 bits, as Pillow's ImagingResample does.
function resize(img, width, height) {
  let cur = img;
  if (cur.width !== width) {
    const taps = coefficients(cur.width, width);
    const out = new Uint8ClampedArray(width * cur.height * 4);
    for (let y = 0; y < cur.height; y++) {
      for (let x = 0; x < width; x++) {
        const { xmin, k } = taps[x];
        for (let c = 0; c < 4; c++) {
          let sum = HALF;
          for (let t = 0; t < k.length; t++) sum += cur.data[(y * cur.width + xmin + t) * 4 + c] * k[t];
          out[(y * width + x) * 4 + c] = clip8(sum);
        }
      }
    }
    cur = { data: out, width, height: cur.height };
  }
  if (cur.height !== height) {
    const taps = coefficients(cur.height, height);
    const out = new Uint8ClampedArray(width * height * 4);
    for (let y = 0; y < height; y++) {
      const { xmin, k } = taps[y];
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 4; c++) {
          let sum = HALF;
          for (let t = 0; t < k.length; t++) sum += cur.data[((xmin + t) * width + x) * 4 + c] * k[t];
          out[(y * width + x) * 4 + c] = clip8(sum);
        }
      }
    }
    cur = { data: out, width, height };
  }
  return cur;
}

// Largest integer factor that keeps both sides at or above the target (leaf_common.imaging._reduce_factor).
function reduceFactor(w, h, width, height) {
  return Math.max(1, Math.min(Math.floor(w / Math.max(1, width)), Math.floor(h / Math.max(1, height))));
}

/**
 * A photo (Blob) as RGB uint8 [height, width, 3], the array leaf_common.imaging.decode_image returns.
 * @param {Blob} blob JPEG or PNG bytes
 * @param {[number, number]} size [height, width] of the model's input (model.json image_size)
 */
export async function photoPixels(blob, [height, width]) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const jpeg = bytes.length > 2 && bytes[0] === 0xff && bytes[1] === 0xd8;
  const turned = jpeg ? orientation(bytes) : 1;
  let img = orient(await decodeRGBA(blob), UNDO[turned] || 1); // as stored in the file
  if (jpeg) {
    // Pillow's JpegImagePlugin.draft: the largest of 8, 4, 2 not above the smaller integer ratio.
    const ratio = Math.min(Math.floor(img.width / width), Math.floor(img.height / height));
    const scale = [8, 4, 2, 1].find((s) => ratio >= s) || 1;
    if (scale > 1) img = reduce(img, scale);
  }
  const factor = reduceFactor(img.width, img.height, width, height);
  if (factor > 1) img = reduce(img, factor);
  img = orient(img, turned);
  img = flatten(img);
  if (img.width !== width || img.height !== height) img = resize(img, width, height);
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0, q = 0; p < img.data.length; p += 4, q += 3) {
    rgb[q] = img.data[p];
    rgb[q + 1] = img.data[p + 1];
    rgb[q + 2] = img.data[p + 2];
  }
  return rgb;
}
