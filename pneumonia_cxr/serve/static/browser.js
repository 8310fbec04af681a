"use strict";
// Scoring inside the browser (the folder `pneumonia-cxr web` writes): ONNX Runtime Web runs the
// model's ONNX graph; decoding, the model's preprocessing and the decision follow `predict`
// (data/loader.py, data/preprocess.py, inference/predictor.py), read from the model's own
// metadata (model/model.json), never hard-coded. No image ever leaves the page.
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
      throw new Error(`the model file failed its sha256 check (${actual.slice(0, 12)}… is not ` +
        `${info.sha256.slice(0, 12)}…): it is damaged or was replaced; write the folder again ` +
        "with `pneumonia-cxr web`");
    }
    await loadScript("ort/ort.wasm.min.js"); // app.js's loader (this file is loaded by it)
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
    // Threads need cross-origin isolation, which a plain static server does not give.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return info;
  }

  class ImageError extends Error {
    constructor(kind, reason) { super(reason); this.kind = kind; }
  }

  // What `load_xray` checks before decoding: format by content, size from the header (a bomb
  // is refused before any pixel is decoded), the end marker (a truncated file is refused).
  function sniff(bytes, name) {
    if (!bytes.length) throw new ImageError("EmptyFileError", "the file is empty (0 bytes); re-copy or re-export it");
    const ascii = (start, length) => String.fromCharCode(...bytes.subarray(start, start + length));
    if (bytes.length > 132 && ascii(128, 4) === "DICM") return { kind: "dicom" };
    if (bytes[0] === 0x89 && ascii(1, 3) === "PNG") {
      if (bytes.length < 24) throw new ImageError("CorruptImageError", "starts like a PNG but its header is damaged; re-export the file");
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
      if (!width || !height) throw new ImageError("CorruptImageError", "starts like a JPEG but its header is damaged; re-export the file");
      return { kind: "jpeg", width, height, complete: eoi > sos };
    }
    if (/\.(dcm|dicom)$/i.test(name)) {
      throw new ImageError("NotAnImageError", "named like DICOM but without the DICOM preamble this page reads; score it with `pneumonia-cxr predict`");
    }
    throw new ImageError("NotAnImageError", "not a JPEG, PNG or DICOM file (judged by its content, not its name)");
  }

  async function decode(bytes, name) {
    const head = sniff(bytes, name);
    if (head.kind === "dicom") return decodeDicom(bytes);
    const label = head.kind.toUpperCase();
    const pixels = head.width * head.height;
    if (pixels > info.max_pixels) {
      throw new ImageError("ImageTooLargeError", `${head.width}x${head.height} = ${pixels.toLocaleString("en")} pixels exceeds the limit of ` +
        `${info.max_pixels.toLocaleString("en")} (likely a decompression bomb); downscale it`);
    }
    if (!head.complete) throw new ImageError("CorruptImageError", `the ${label} is truncated (no end marker after the image data); re-copy it`);
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
    } catch (error) {
      throw new ImageError("CorruptImageError", `the ${label} data is truncated or damaged; re-copy or re-export it`);
    }
    const rgba = pixelsOf(bitmap);
    const decoded = { width: bitmap.width, height: bitmap.height, gray: luma(rgba.data), chroma: chroma(rgba.data), dicom: null };
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

  // Mean distance from gray in YCbCr (`ImageFacts.chroma`), on at most ~16k sampled pixels.
  function chroma(data) {
    const n = data.length / 4;
    const step = Math.max(1, Math.floor(n / 16384));
    let sum = 0, count = 0;
    for (let p = 0; p < n; p += step) {
      const r = data[4 * p], g = data[4 * p + 1], b = data[4 * p + 2];
      const cb = -0.168736 * r - 0.331264 * g + 0.5 * b;
      const cr = 0.5 * r - 0.418688 * g - 0.081312 * b;
      sum += Math.hypot(cb, cr);
      count++;
    }
    return count ? sum / count : 0;
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
      throw new ImageError("CorruptImageError", `the DICOM header is damaged (${error.message || error}); re-export it from the PACS`);
    }
    const text = (tag) => (ds.string(tag) || "").trim();
    const facts = { PatientAge: text("x00101010"), ViewPosition: text("x00185101"), BodyPartExamined: text("x00180015"), Modality: text("x00080060") };
    const pixelData = ds.elements.x7fe00010;
    if (!pixelData) throw new ImageError("UnsupportedDicomError", "the DICOM file has no PixelData (not an image object); export the image itself");
    const syntax = text("x00020010");
    if (!UNCOMPRESSED.has(syntax)) {
      throw new ImageError("UnsupportedDicomError", `pixel data stored with transfer syntax ${syntax || "(none)"}, which this page cannot decode; score it with \`pneumonia-cxr predict\` or re-export it uncompressed`);
    }
    const frames = parseInt(text("x00280008") || "1", 10);
    if (frames > 1) throw new ImageError("UnsupportedDicomError", `multi-frame DICOM (${frames} frames); export the single radiograph on its own`);
    const rows = ds.uint16("x00280010"), columns = ds.uint16("x00280011");
    const samples = ds.uint16("x00280002") || 1, bits = ds.uint16("x00280100");
    const signed = ds.uint16("x00280103") === 1;
    const photometric = text("x00280004").toUpperCase();
    if (!rows || !columns || !bits) throw new ImageError("UnsupportedDicomError", "the DICOM image header is incomplete; re-export it");
    if (rows * columns > info.max_pixels) throw new ImageError("ImageTooLargeError", `${columns}x${rows} pixels exceeds the limit of ${info.max_pixels.toLocaleString("en")} (likely a decompression bomb)`);
    const n = rows * columns * samples;
    const bytesPer = bits / 8;
    if (pixelData.dataOffset + n * bytesPer > bytes.length) throw new ImageError("CorruptImageError", "the DICOM pixel data is truncated or damaged; re-export it");
    const view = new DataView(bytes.buffer, bytes.byteOffset + pixelData.dataOffset, n * bytesPer);
    const read = bits === 8 ? (i) => (signed ? view.getInt8(i) : view.getUint8(i))
      : bits === 16 ? (i) => (signed ? view.getInt16(2 * i, true) : view.getUint16(2 * i, true))
        : null;
    if (!read) throw new ImageError("UnsupportedDicomError", `${bits}-bit DICOM pixels are not supported here; score it with \`pneumonia-cxr predict\``);
    if (samples === 3) {
      if (bits !== 8) throw new ImageError("UnsupportedDicomError", "colour DICOM with more than 8 bits; only 8-bit RGB is supported, export it as grayscale");
      const rgba = new Uint8ClampedArray(rows * columns * 4);
      for (let p = 0; p < rows * columns; p++) {
        for (let c = 0; c < 3; c++) rgba[4 * p + c] = read(3 * p + c);
        rgba[4 * p + 3] = 255;
      }
      return { width: columns, height: rows, gray: luma(rgba), chroma: chroma(rgba), dicom: facts };
    }
    if (photometric !== "MONOCHROME1" && photometric !== "MONOCHROME2") {
      throw new ImageError("UnsupportedDicomError", `photometric interpretation '${photometric}' is not supported; export as MONOCHROME2 grayscale`);
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

  // `intended_use.out_of_scope` on the DICOM header (age, view, body part, modality).
  function headerReasons(header, use, text) {
    if (!header || !use) return [];
    const LATERAL = new Set(info.header_rules.lateral_views);
    const YEARS = info.header_rules.age_units;
    const reasons = [];
    const age = /^(\d{3})([DWMY])$/.exec((header.PatientAge || "").toUpperCase());
    if (age) {
      const years = Number(age[1]) * YEARS[age[2]];
      if (years < use.min_age_years || years > use.max_age_years) {
        reasons.push(`${text.age} (PatientAge ${header.PatientAge} = ${years.toFixed(1)} years; intended ${use.min_age_years}-${use.max_age_years})`);
      }
    }
    const view = (header.ViewPosition || "").toUpperCase();
    if (LATERAL.has(view)) reasons.push(`${text.view} (ViewPosition ${view}; intended ${use.projections.join("/")})`);
    const part = (header.BodyPartExamined || "").toUpperCase();
    if (part && !use.body_parts.includes(part)) reasons.push(`${text.body_part} (BodyPartExamined ${part})`);
    const modality = (header.Modality || "").toUpperCase();
    if (modality && !use.modalities.includes(modality)) reasons.push(`${text.modality} (Modality ${modality}; intended ${use.modalities.join("/")})`);
    return reasons;
  }

  const sigmoid = (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

  // `Predictor.scores_from_outputs` + `Predictor.results` for one image.
  function decide(outputs, decoded) {
    const meta = info.metadata;
    const reasonText = info.reasons;
    const first = (name) => (outputs[name] ? Number(outputs[name].data[0]) : null);
    const probability = sigmoid(first("logit") / meta.temperature);
    const decision = probability >= meta.threshold ? 1 : 0;
    const reasons = [];
    const use = meta.intended_use;
    if (use && decoded.chroma !== null && decoded.chroma > use.max_chroma) {
      reasons.push(`${reasonText.colour} (chroma ${decoded.chroma.toFixed(1)} > ${use.max_chroma}): not a grayscale radiograph`);
    }
    for (const reason of headerReasons(decoded.dicom, use, reasonText)) reasons.push(reason);
    const guard = first("guard_score");
    if (guard !== null && meta.guard && guard > meta.guard.cutoff) {
      reasons.push(`${reasonText.feature} (guard score ${guard.toFixed(1)} > cut-off ${meta.guard.cutoff.toFixed(1)})`);
    }
    const ood = first("ood_score");
    if (ood !== null && meta.ood && Number.isFinite(ood) && ood > meta.ood.cutoff) {
      reasons.push(`${reasonText.feature} (OOD score ${ood.toFixed(2)} > cut-off ${meta.ood.cutoff.toFixed(2)})`);
    }
    const shown = guard !== null ? guard : ood;
    const known = Number.isFinite(shown) || reasons.length > 0;
    const flagged = known ? reasons.length > 0 : null;
    const kind = meta.type_decision;
    const typeLogit = first("type_logit");
    const pViral = typeLogit === null || !kind ? null : sigmoid(typeLogit);
    const named = pViral !== null && decision === 1 && !flagged;
    return {
      probability,
      label: meta.class_names[decision],
      ood_score: Number.isFinite(shown) ? shown : null,
      out_of_distribution: flagged,
      p_viral: pViral,
      pneumonia_type: named ? kind.class_names[pViral >= kind.threshold ? 1 : 0] : "",
      reason: reasons.join("; "),
      threshold: meta.threshold,
    };
  }

  // The graph's Grad-CAM (export.head_gradcam) scaled onto [0, 1], as pytorch-grad-cam scales it.
  function mapOf(tensor) {
    const [, height, width] = tensor.dims;
    const values = Array.from(tensor.data.subarray(0, height * width));
    const low = Math.min(...values);
    const high = Math.max(...values) - low;
    return { height, width, values: values.map((v) => (v - low) / (1e-7 + high)) };
  }

  // Matplotlib's jet, as OpenCV's COLORMAP_JET draws it (piecewise linear).
  function jet(v) {
    const channel = (offset) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - offset))));
    return [channel(3), channel(2), channel(1)];
  }

  // The map resized (bilinear, the canvas's smoothing) onto the film, blended 40% as
  // `explain.overlay.overlay_heatmap`; at most 512 px a side, as a PNG for the card.
  async function overlay(decoded, map) {
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
    const small = new OffscreenCanvas(map.width, map.height);
    const smallContext = small.getContext("2d");
    const cells = smallContext.createImageData(map.width, map.height);
    map.values.forEach((v, i) => {
      const [r, g, b] = jet(v);
      cells.data.set([r, g, b, 255], 4 * i);
    });
    smallContext.putImageData(cells, 0, 0);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d");
    context.drawImage(film, 0, 0, width, height);
    context.globalAlpha = 0.4;
    context.imageSmoothingEnabled = true;
    context.drawImage(small, 0, 0, width, height);
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
      const result = { name: file.name, ...decide(outputs, decoded) };
      if (outputs.cam) {
        result.cam = mapOf(outputs.cam);
        result.gradcam_png_base64 = await overlay(decoded, result.cam);
      }
      if (outputs.type_cam && result.p_viral !== null) {
        result.gradcam_type_png_base64 = await overlay(decoded, mapOf(outputs.type_cam));
      }
      return result;
    } catch (error) {
      const kind = error instanceof ImageError ? error.kind : error.name || "Error";
      return { name: file.name, error: `${kind}: ${error.message}` };
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
