"use strict";
// Scoring inside the browser (the folder `pneumonia-cxr web` writes): ONNX Runtime Web runs the
// model's ONNX graph; decoding, the model's preprocessing and the decision follow `predict`
// (data/loader.py, data/preprocess.py, inference/predictor.py), read from the model's own
// metadata (model/model.json), never hard-coded. Each image's result is the service's result JSON
// (`service.result_json`): the same state, no label when not assessed, the reasons in the model's
// own words, their figures apart, the network's numbers under `unassessed_*`. No image ever
// leaves the page.
const BrowserScorer = (() => {
  let session = null;
  let info = null;
  const PRECISION_BITS = 22; // Pillow's 8-bit resampling: 32 - 8 - 2

  async function fetchBytes(url, onProgress) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    const total = Number(response.headers.get("Content-Length")) || 0;
    const reader = response.body.getReader();
    const parts = [];
    let received = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      received += value.length;
      if (onProgress && total) onProgress(received / total);
    }
    const bytes = new Uint8Array(received);
    let offset = 0;
    for (const part of parts) { bytes.set(part, offset); offset += part.length; }
    return bytes;
  }

  async function sha256Hex(bytes) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  // The model file, checked against its sha256 before use; ONNX Runtime Web (WebAssembly).
  async function load(onProgress) {
    const response = await fetch("model/model.json");
    if (!response.ok) throw new Error("model/model.json is missing");
    info = await response.json();
    const bytes = await fetchBytes(`model/${info.file}`, onProgress);
    const actual = await sha256Hex(bytes);
    if (actual !== info.sha256) {
      throw new Error(`the model file failed its sha256 check (its digest begins ${actual.slice(0, 12)}, ` +
        `not ${info.sha256.slice(0, 12)}): it is damaged or was replaced; ask whoever set up this ` +
        "page to write its folder again");
    }
    await loadScript("ort/ort.wasm.min.js"); // app.js's loader (this file is loaded by it)
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
    // Threads need cross-origin isolation, which a plain static server does not give.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return info;
  }

  // A file this page cannot read; its message says why and what to do, in words.
  class ImageError extends Error {}

  // What `load_xray` checks before decoding: format by content, size from the header (a bomb
  // is refused before any pixel is decoded), the end marker (a truncated file is refused).
  function sniff(bytes, name) {
    if (!bytes.length) throw new ImageError("the file is empty (0 bytes); re-copy or re-export it");
    const ascii = (start, length) => String.fromCharCode(...bytes.subarray(start, start + length));
    if (bytes.length > 132 && ascii(128, 4) === "DICM") return { kind: "dicom" };
    if (bytes[0] === 0x89 && ascii(1, 3) === "PNG") {
      if (bytes.length < 24) throw new ImageError("starts like a PNG but its header is damaged; re-export the file");
      const view = new DataView(bytes.buffer, bytes.byteOffset);
      const last = (text) => { for (let i = bytes.length - text.length; i >= 0; i--) if (ascii(i, text.length) === text) return i; return -1; };
      return { kind: "png", width: view.getUint32(16), height: view.getUint32(20), complete: last("IEND") > last("IDAT") };
    }
    if (bytes[0] === 0xff && bytes[1] === 0xd8) {
      let width = 0, height = 0;
      for (let i = 2; i + 9 < bytes.length;) {
        if (bytes[i] !== 0xff) { i++; continue; }
        const marker = bytes[i + 1];
        if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0xff) { i += 2; continue; }
        const length = (bytes[i + 2] << 8) | bytes[i + 3];
        if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
          height = (bytes[i + 5] << 8) | bytes[i + 6];
          width = (bytes[i + 7] << 8) | bytes[i + 8];
          break;
        }
        if (marker === 0xda) break;
        i += 2 + length;
      }
      let eoi = -1, sos = -1;
      for (let i = bytes.length - 2; i >= 0 && (eoi < 0 || sos < 0); i--) {
        if (bytes[i] !== 0xff) continue;
        if (bytes[i + 1] === 0xd9 && eoi < 0) eoi = i;
        if (bytes[i + 1] === 0xda && sos < 0) sos = i;
      }
      if (!width || !height) throw new ImageError("starts like a JPEG but its header is damaged; re-export the file");
      return { kind: "jpeg", width, height, complete: eoi > sos };
    }
    if (/\.(dcm|dicom)$/i.test(name)) {
      throw new ImageError("named like DICOM but without the standard DICOM header this page reads; re-export it from the PACS as a standard DICOM file, or as PNG");
    }
    throw new ImageError("the content is not JPEG, PNG or DICOM, whatever its extension says; convert it to PNG or JPEG");
  }

  async function decode(bytes, name) {
    const head = sniff(bytes, name);
    if (head.kind === "dicom") return decodeDicom(bytes);
    const label = head.kind.toUpperCase();
    const pixels = head.width * head.height;
    if (pixels > info.max_pixels) {
      throw new ImageError(`${head.width}x${head.height} = ${pixels.toLocaleString("en")} pixels exceeds the limit of ` +
        `${info.max_pixels.toLocaleString("en")} (likely a decompression bomb); downscale it`);
    }
    if (!head.complete) throw new ImageError(`the ${label} is truncated (no end marker after the image data); re-copy it`);
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
    } catch (error) {
      throw new ImageError(`the ${label} data is truncated or damaged; re-copy or re-export it`);
    }
    const rgba = pixelsOf(bitmap);
    const decoded = { width: bitmap.width, height: bitmap.height, gray: luma(rgba.data), chroma: chroma(rgba.data, bitmap.width, bitmap.height), dicom: null };
    return head.kind === "jpeg" ? draft(decoded, info.metadata.preprocessing.image_size) : decoded;
  }

  // `load_xray(min_side=size)` decodes a large JPEG at 1/2, 1/4 or 1/8 scale (Pillow's draft:
  // the largest scale keeping both sides >= size); a box average by that factor gives the same
  // pixels within a grey level or two, where a full-size decode would differ by tens.
  function draft(decoded, size) {
    const ratio = Math.min(Math.floor(decoded.width / size), Math.floor(decoded.height / size));
    const k = [8, 4, 2, 1].find((s) => ratio >= s);
    if (k === 1) return decoded;
    const width = Math.ceil(decoded.width / k), height = Math.ceil(decoded.height / k);
    const gray = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let sum = 0, count = 0;
        for (let dy = 0; dy < k && y * k + dy < decoded.height; dy++) {
          const row = (y * k + dy) * decoded.width;
          for (let dx = 0; dx < k && x * k + dx < decoded.width; dx++) { sum += decoded.gray[row + x * k + dx]; count++; }
        }
        gray[y * width + x] = Math.floor((sum + count / 2) / count);
      }
    }
    return { ...decoded, width, height, gray };
  }

  function pixelsOf(bitmap) {
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return context.getImageData(0, 0, bitmap.width, bitmap.height);
  }

  // Pillow's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point): the gray back when R=G=B.
  function luma(data) {
    const gray = new Uint8Array(data.length / 4);
    for (let i = 0, j = 0; j < gray.length; i += 4, j++) {
      gray[j] = (data[i] * 19595 + data[i + 1] * 38470 + data[i + 2] * 7471 + 0x8000) >>> 16;
    }
    return gray;
  }

  // The size Pillow's `thumbnail((side, side))` gives (its aspect-preserving rounding).
  function thumbnailSize(width, height, side) {
    if (side >= width && side >= height) return [width, height];
    const aspect = width / height;
    const nearest = (number, key) => Math.max([Math.floor(number), Math.ceil(number)]
      .reduce((best, n) => (key(n) < key(best) ? n : best)), 1);
    let x = side, y = side;
    if (x / y >= aspect) x = nearest(y * aspect, (n) => Math.abs(aspect - n / y));
    else y = nearest(x / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - x / n)));
    return [x, y];
  }

  // `loader._chroma` (`ImageFacts.chroma`): the mean distance from gray in YCbCr of a copy at
  // most 128 px a side; here each copy pixel is the mean of its block of the film (Pillow
  // reduces and resamples bicubically: the figure agrees to a few tenths, not digit for digit).
  const CHROMA_SIDE = 128;
  function chroma(data, width, height) {
    const [w, h] = thumbnailSize(width, height, CHROMA_SIDE);
    const byte = (v) => Math.min(255, Math.max(0, Math.round(v)));
    let sum = 0;
    for (let y = 0; y < h; y++) {
      const y0 = Math.floor((y * height) / h), y1 = Math.max(y0 + 1, Math.floor(((y + 1) * height) / h));
      for (let x = 0; x < w; x++) {
        const x0 = Math.floor((x * width) / w), x1 = Math.max(x0 + 1, Math.floor(((x + 1) * width) / w));
        let r = 0, gr = 0, b = 0;
        for (let yy = y0; yy < y1; yy++) {
          for (let xx = x0; xx < x1; xx++) {
            const i = 4 * (yy * width + xx);
            r += data[i]; gr += data[i + 1]; b += data[i + 2];
          }
        }
        const n = (y1 - y0) * (x1 - x0);
        r = byte(r / n); gr = byte(gr / n); b = byte(b / n);
        const cb = byte(128 - 0.168736 * r - 0.331264 * gr + 0.5 * b);
        const cr = byte(128 + 0.5 * r - 0.418688 * gr - 0.081312 * b);
        sum += Math.hypot(cb - 128, cr - 128);
      }
    }
    return sum / (w * h);
  }

  // DICOM as `_dicom_to_gray` reads it: uncompressed single-frame pixels; the modality LUT
  // (rescale or sequence), the VOI LUT (sequence, else the first window, LINEAR, LINEAR_EXACT or
  // SIGMOID), MONOCHROME1 inverted, then the image's own range onto 0..255 (round half even).
  const UNCOMPRESSED = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]);
  let dicomReady = null;

  async function decodeDicom(bytes) {
    dicomReady = dicomReady || loadScript("dicom/dicomParser.min.js");
    await dicomReady;
    let ds;
    try {
      ds = dicomParser.parseDicom(bytes);
    } catch (error) {
      throw new ImageError("the DICOM header is damaged; re-export it from the PACS");
    }
    const text = (tag) => (ds.string(tag) || "").trim();
    const facts = { PatientAge: text("x00101010"), ViewPosition: text("x00185101"), BodyPartExamined: text("x00180015"), Modality: text("x00080060") };
    const pixelData = ds.elements.x7fe00010;
    if (!pixelData) throw new ImageError("the DICOM file has no PixelData (not an image object); export the image itself");
    const syntax = text("x00020010");
    if (!UNCOMPRESSED.has(syntax)) {
      throw new ImageError("the DICOM pixel data is compressed in a way this page cannot decode; re-export it uncompressed, or as PNG");
    }
    const frames = parseInt(text("x00280008") || "1", 10);
    if (frames > 1) throw new ImageError(`multi-frame DICOM (${frames} frames); export the single radiograph on its own`);
    const rows = ds.uint16("x00280010"), columns = ds.uint16("x00280011");
    const samples = ds.uint16("x00280002") || 1, bits = ds.uint16("x00280100");
    const signed = ds.uint16("x00280103") === 1;
    const photometric = text("x00280004").toUpperCase();
    if (!rows || !columns || !bits) throw new ImageError("the DICOM image header is incomplete; re-export it");
    if (rows * columns > info.max_pixels) throw new ImageError(`${columns}x${rows} pixels exceeds the limit of ${info.max_pixels.toLocaleString("en")} (likely a decompression bomb); downscale it`);
    const n = rows * columns * samples;
    const bytesPer = bits / 8;
    if (pixelData.dataOffset + n * bytesPer > bytes.length) throw new ImageError("the DICOM pixel data is truncated or damaged; re-export it");
    const view = new DataView(bytes.buffer, bytes.byteOffset + pixelData.dataOffset, n * bytesPer);
    const read = bits === 8 ? (i) => (signed ? view.getInt8(i) : view.getUint8(i))
      : bits === 16 ? (i) => (signed ? view.getInt16(2 * i, true) : view.getUint16(2 * i, true))
        : null;
    if (!read) throw new ImageError(`${bits}-bit DICOM pixels are not supported here; re-export it as 8- or 16-bit grayscale, or as PNG`);
    if (samples === 3) {
      if (bits !== 8) throw new ImageError("colour DICOM with more than 8 bits; only 8-bit RGB is supported, export it as grayscale");
      const rgba = new Uint8ClampedArray(rows * columns * 4);
      for (let p = 0; p < rows * columns; p++) {
        for (let c = 0; c < 3; c++) rgba[4 * p + c] = read(3 * p + c);
        rgba[4 * p + 3] = 255;
      }
      return { width: columns, height: rows, gray: luma(rgba), chroma: chroma(rgba, columns, rows), dicom: facts };
    }
    if (photometric !== "MONOCHROME1" && photometric !== "MONOCHROME2") {
      throw new ImageError(`photometric interpretation '${photometric}' is not supported; export as MONOCHROME2 grayscale`);
    }
    let values = new Float64Array(rows * columns);
    for (let i = 0; i < values.length; i++) values[i] = read(i);
    values = voiLut(ds, modalityLut(ds, values));
    if (photometric === "MONOCHROME1") for (let i = 0; i < values.length; i++) values[i] = -values[i];
    return { width: columns, height: rows, gray: minMaxToUint8(values), chroma: null, dicom: facts };
  }

  function lutOf(sequence) {
    const item = sequence && sequence.items && sequence.items[0] && sequence.items[0].dataSet;
    if (!item || !item.elements.x00283006) return null;
    const entries = item.uint16("x00283002", 0) || 65536;
    const first = item.uint16("x00283002", 1);
    const bits = item.uint16("x00283002", 2);
    const element = item.elements.x00283006;
    const data = new DataView(item.byteArray.buffer, item.byteArray.byteOffset + element.dataOffset, element.length);
    const table = new Float64Array(entries);
    for (let i = 0; i < entries; i++) table[i] = bits > 8 || element.length >= 2 * entries ? data.getUint16(2 * i, true) : data.getUint8(i);
    return (x) => table[Math.min(Math.max(Math.round(x) - first, 0), entries - 1)];
  }

  function modalityLut(ds, values) {
    const lut = lutOf(ds.elements.x00283000);
    if (lut) return values.map(lut);
    const slope = ds.floatString("x00281053"), intercept = ds.floatString("x00281052");
    if (slope === undefined && intercept === undefined) return values;
    return values.map((x) => x * (slope ?? 1) + (intercept ?? 0));
  }

  function voiLut(ds, values) {
    const lut = lutOf(ds.elements.x00283010);
    if (lut) return values.map(lut);
    let center = ds.floatString("x00281050", 0), width = ds.floatString("x00281051", 0);
    if (center === undefined || width === undefined) return values;
    const fn = (ds.string("x00281056") || "LINEAR").trim().toUpperCase();
    if (fn === "SIGMOID") return values.map((x) => 1 / (1 + Math.exp((-4 * (x - center)) / width)));
    if (fn === "LINEAR") { center -= 0.5; width -= 1; }
    if (!(width > 0)) return values;
    return values.map((x) => Math.min(1, Math.max(0, (x - center) / width + 0.5)));
  }

  function minMaxToUint8(values) {
    let low = Infinity, high = -Infinity;
    for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
    const gray = new Uint8Array(values.length);
    if (!(high > low)) return gray;
    const scale = 255 / (high - low);
    for (let i = 0; i < values.length; i++) {
      const v = (values[i] - low) * scale;
      let r = Math.round(v);
      if (Math.abs(v - Math.trunc(v)) === 0.5) r = 2 * Math.round(v / 2); // numpy's rint
      gray[i] = r;
    }
    return gray;
  }

  // Pillow's antialiased bilinear resampling of an 8-bit image (ImagingResample): coefficients
  // per output pixel in 22-bit fixed point, horizontal pass, then vertical, each rounded to 8 bits.
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = filterscale; // bilinear: support 1
    const result = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      const weights = [];
      let total = 0;
      for (let x = 0; x < xmax; x++) {
        const distance = Math.abs((x + xmin - center + 0.5) / filterscale);
        const w = distance < 1 ? 1 - distance : 0;
        weights.push(w);
        total += w;
      }
      const fixed = weights.map((w) => {
        const v = (total ? w / total : 0) * (1 << PRECISION_BITS);
        return v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
      });
      result.push({ xmin, fixed });
    }
    return result;
  }

  const clip8 = (ss) => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));

  function resize(gray, width, height, size) {
    let source = gray, w = width;
    if (width !== size) {
      const horizontal = coefficients(width, size);
      const out = new Uint8Array(size * height);
      for (let y = 0; y < height; y++) {
        for (let xx = 0; xx < size; xx++) {
          const { xmin, fixed } = horizontal[xx];
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < fixed.length; x++) ss += source[y * w + xmin + x] * fixed[x];
          out[y * size + xx] = clip8(ss);
        }
      }
      source = out; w = size;
    }
    if (height !== size) {
      const vertical = coefficients(height, size);
      const out = new Uint8Array(size * w);
      for (let yy = 0; yy < size; yy++) {
        const { xmin: ymin, fixed } = vertical[yy];
        for (let x = 0; x < w; x++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < fixed.length; y++) ss += source[(ymin + y) * w + x] * fixed[y];
          out[yy * w + x] = clip8(ss);
        }
      }
      source = out;
    }
    return source;
  }

  // The model's fixed JPEG step (the shared copies' compression): encode, decode, luma.
  async function jpegRoundtrip(gray, size, quality) {
    const canvas = new OffscreenCanvas(size, size);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    const image = context.createImageData(size, size);
    for (let i = 0; i < gray.length; i++) {
      image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = gray[i];
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: quality / 100 });
    const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    return luma(pixelsOf(bitmap).data);
  }

  // gray uint8 -> the model input (1, C, S, S) float32, as `evaluation_transform` builds it.
  async function modelInput(decoded) {
    const pre = info.metadata.preprocessing;
    const size = pre.image_size;
    let gray = resize(decoded.gray, decoded.width, decoded.height, size);
    if (pre.jpeg_quality) gray = await jpegRoundtrip(gray, size, pre.jpeg_quality);
    const plane = size * size;
    const input = new Float32Array(pre.channels * plane);
    const scale = Math.fround(1 / 255);
    for (let c = 0; c < pre.channels; c++) {
      const mean = Math.fround(pre.mean[c]), std = Math.fround(pre.std[c]);
      for (let i = 0; i < plane; i++) {
        const unit = Math.fround(gray[i] * scale);
        input[c * plane + i] = Math.fround(unit - mean) / std;
      }
    }
    return { input, gray };
  }

  // Python's "{:g}" for the cut-offs of the intended-use record (0.0 -> "0", 6.0 -> "6").
  const g = (x) => String(Number(Number(x).toPrecision(6)));

  // `intended_use.out_of_scope`: [kind, figures] per reason the file itself gives (its colour,
  // its DICOM header's age, view, body part and modality), in that order.
  function scopeRefusals(decoded, use) {
    const refusals = [];
    if (decoded.chroma !== null && decoded.chroma > use.max_chroma) {
      refusals.push(["colour", `chroma ${decoded.chroma.toFixed(1)} > ${g(use.max_chroma)}`]);
    }
    const header = decoded.dicom;
    if (!header) return refusals;
    const LATERAL = new Set(info.header_rules.lateral_views);
    const YEARS = info.header_rules.age_units;
    const ageText = header.PatientAge || "";
    const age = /^(\d{3})([DWMY])$/.exec(ageText.trim().toUpperCase());
    if (age) {
      const years = Number(age[1]) * YEARS[age[2]];
      if (years < use.min_age_years || years > use.max_age_years) {
        refusals.push(["age", `PatientAge ${ageText} = ${years.toFixed(1)} years; intended ${g(use.min_age_years)}-${g(use.max_age_years)}`]);
      }
    }
    const view = (header.ViewPosition || "").toUpperCase();
    if (LATERAL.has(view)) refusals.push(["view", `ViewPosition ${view}; intended ${use.projections.join("/")}`]);
    const part = (header.BodyPartExamined || "").toUpperCase();
    if (part && !use.body_parts.includes(part)) refusals.push(["body_part", `BodyPartExamined ${part}`]);
    const modality = (header.Modality || "").toUpperCase();
    if (modality && !use.modalities.includes(modality)) refusals.push(["modality", `Modality ${modality}; intended ${use.modalities.join("/")}`]);
    return refusals;
  }

  const sigmoid = (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
  const unique = (items) => [...new Set(items)];

  // `decisions.scores_from_outputs` + `decisions.results` + `service.result_json` for one image,
  // every answer from its registry entry (model.json's `outputs`): a refused image (its file, or
  // its features past a cut-off: one "features" reason however many scores say so) gets no label
  // for any answer, its numbers under `unassessed_*`; an answer with `asks_given` is given only
  // where that output gave that label.
  function decide(outputs, decoded) {
    const meta = info.metadata;
    const first = (name) => (outputs[name] ? Number(outputs[name].data[0]) : null);
    const refusals = scopeRefusals(decoded, info.model.intended_use);
    const guardCutoff = meta.guard ? meta.guard.cutoff : null;
    const oodCutoff = meta.ood ? meta.ood.cutoff : null;
    const guard = guardCutoff === null ? null : first("guard_score");
    const ood = first("ood_score");
    const figures = [];
    if (guard !== null && guard > guardCutoff) {
      figures.push(`guard score ${guard.toFixed(1)} > cut-off ${guardCutoff.toFixed(1)}`);
    }
    if (oodCutoff !== null && Number.isFinite(ood) && ood > oodCutoff) {
      figures.push(`OOD score ${ood.toFixed(2)} > cut-off ${oodCutoff.toFixed(2)}`);
    }
    if (figures.length) refusals.push(["features", figures.join("; ")]);
    const assessed = refusals.length === 0;
    // Each answer's probability from its own graph output (`model.outputs`: `logit_output`; the
    // first answer's logit divided by the model's temperature), none where the graph lacks it.
    const numbers = {};
    for (const output of info.outputs) {
      const logit = first(output.logit_output);
      if (logit !== null) numbers[output.name] = sigmoid(logit / output.temperature);
    }
    const labels = {};
    if (assessed) {
      for (const output of info.outputs) {
        const given = output.asks_given;
        if (output.name in numbers && (!given || labels[given[0]] === given[1])) {
          labels[output.name] = output.class_names[numbers[output.name] >= output.threshold ? 1 : 0];
        }
      }
    }
    const words = refusals.map(([kind]) => info.reasons[kind]);
    const checked = guardCutoff !== null || oodCutoff !== null || !assessed;
    const result = {
      state: assessed ? "assessed" : "not assessed",
      out_of_distribution: checked ? !assessed : null,
      reason: unique(words).join("; "),
      guard_score: guard,
      ood_score: Number.isFinite(ood) ? ood : null,
    };
    for (const output of info.outputs) {
      const number = output.name in numbers ? numbers[output.name] : null;
      result[output.probability_column] = assessed ? number : null;
      result[output.label_column] = labels[output.name] || "";
      result[output.unassessed_column] = assessed ? null : number;
    }
    result.reasons = unique(words);
    result.details = refusals.map(([kind, detail]) => (detail ? `${info.reasons[kind]}: ${detail}` : info.reasons[kind]));
    result.threshold = info.outputs[0].threshold;
    result.thresholds = Object.fromEntries(info.outputs.map((o) => [o.name, o.threshold]));
    return { result, labels };
  }

  // The graph's Grad-CAM (export.head_gradcam) scaled onto [0, 1], as pytorch-grad-cam scales it.
  function mapOf(tensor) {
    const [, height, width] = tensor.dims;
    const values = Array.from(tensor.data.subarray(0, height * width));
    const low = Math.min(...values);
    const high = Math.max(...values) - low;
    return { height, width, values: values.map((v) => (v - low) / (1e-7 + high)) };
  }

  // Matplotlib's jet, as OpenCV's COLORMAP_JET draws it (piecewise linear; explain.overlay.jet).
  function jet(v) {
    const channel = (offset) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - offset))));
    return [channel(3), channel(2), channel(1)];
  }

  // The film at most 512 px a side (`service.PREVIEW_MAX_SIDE`), as a base64 PNG for the card;
  // with a map, the map resized (bilinear, the canvas's smoothing) onto it, blended 40% as
  // `explain.overlay.overlay_heatmap`.
  async function picture(decoded, map = null) {
    const scale = Math.min(1, 512 / Math.max(decoded.width, decoded.height));
    const width = Math.max(1, Math.round(decoded.width * scale));
    const height = Math.max(1, Math.round(decoded.height * scale));
    const film = new OffscreenCanvas(decoded.width, decoded.height);
    const filmContext = film.getContext("2d");
    const pixels = filmContext.createImageData(decoded.width, decoded.height);
    decoded.gray.forEach((g, i) => {
      pixels.data[4 * i] = pixels.data[4 * i + 1] = pixels.data[4 * i + 2] = g;
      pixels.data[4 * i + 3] = 255;
    });
    filmContext.putImageData(pixels, 0, 0);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d");
    context.drawImage(film, 0, 0, width, height);
    if (map) {
      const small = new OffscreenCanvas(map.width, map.height);
      const smallContext = small.getContext("2d");
      const cells = smallContext.createImageData(map.width, map.height);
      map.values.forEach((v, i) => {
        const [r, gr, b] = jet(v);
        cells.data.set([r, gr, b, 255], 4 * i);
      });
      smallContext.putImageData(cells, 0, 0);
      context.globalAlpha = 0.4;
      context.imageSmoothingEnabled = true;
      context.drawImage(small, 0, 0, width, height);
    }
    const blob = await canvas.convertToBlob({ type: "image/png" });
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
    return btoa(text);
  }

  // One image at a time (memory stays that of one film); a bad file is that file's error only.
  async function scoreOne(file) {
    try {
      const bytes = new Uint8Array(await file.arrayBuffer());
      const decoded = await decode(bytes, file.name);
      const { input } = await modelInput(decoded);
      const pre = info.metadata.preprocessing;
      const tensor = new ort.Tensor("float32", input, [1, pre.channels, pre.image_size, pre.image_size]);
      const outputs = await session.run({ [session.inputNames[0]]: tensor });
      const { result, labels } = decide(outputs, decoded);
      const answer = { name: file.name, ...result };
      if (decoded.dicom) answer.preview_png_base64 = await picture(decoded); // a browser cannot show DICOM
      // Heatmaps of assessed images only, each output's only where it gave a label.
      // Each under its registry entry's `heatmap_key`, where the service puts it.
      for (const [index, output] of info.outputs.entries()) {
        if (!labels[output.name] || !outputs[output.cam_output]) continue;
        const map = mapOf(outputs[output.cam_output]);
        if (index === 0) answer.cam = map; // the first answer's map itself (tests)
        answer[output.heatmap_key] = await picture(decoded, map);
      }
      return answer;
    } catch (error) {
      if (!(error instanceof ImageError)) console.error(file.name, error);
      const words = error instanceof ImageError ? error.message
        : "this browser could not analyse it; reload the page and try again";
      return { name: file.name, state: "unreadable", error: words };
    }
  }

  async function score(files, onEach) {
    const results = [];
    for (const file of files) {
      const result = await scoreOne(file);
      results.push(result);
      if (onEach) onEach(result, results.length);
    }
    return results;
  }

  return { load, score, modelInput, decode, info: () => info };
})();
