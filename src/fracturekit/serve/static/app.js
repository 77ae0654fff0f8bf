// fracturekit web page: upload an image, show the prediction, the heat map and the crack width
// (a segmentation model: the predicted mask over the image, the crack fraction and the widths).
// Plain browser JavaScript, no build step, no third-party code; talks to this server only.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  // Formats every browser can display; TIFF and DICOM are shown from the server's rendering.
  const DISPLAYABLE = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"]);

  const state = {
    model: null,
    task: "classify",
    maxBytes: 25 * 1024 * 1024,
    methods: [],
    busy: false,
    objectUrl: null,
  };
  const HEAT_MAP_TEXT = {
    note: "(longest crack in the heat-map region)",
    caption: "Width of the longest crack found in the heat-map region",
    toggle: "Show heat map",
    alt: "Heat map: where the model sees the crack or fracture",
  };
  const MASK_TEXT = {
    note: "(all cracks of the predicted mask)",
    caption: "Widths and lengths of the cracks of the predicted mask",
    toggle: "Show mask",
    alt: "The predicted crack mask, in colour over the image",
  };
  const KEY_STORAGE = "fracturekit-api-key";

  // The API key, when the server asks for one: kept for this tab only (sessionStorage).
  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return "";
    }
  }

  // fetch() to this server, with the API key as a header when one is set.
  function api(path, options) {
    const init = Object.assign({}, options || {});
    const key = apiKey();
    if (key) init.headers = Object.assign({}, init.headers || {}, { Authorization: `Bearer ${key}` });
    return fetch(path, init);
  }

  function askForKey(wrong) {
    $("key-form").hidden = false;
    $("key-help").textContent = wrong
      ? "The key was refused; enter the right one."
      : "This server needs a key. It is kept in this browser tab only and sent to this server only.";
    $("api-key").focus();
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setStatus(message) {
    $("status").textContent = message || "";
  }

  function pct(p) {
    return (100 * p).toFixed(1) + "%";
  }

  // Small shares keep two decimals: 0.04% of a photo can still be a crack.
  function share(p) {
    return (100 * p).toFixed(p > 0 && p < 0.01 ? 2 : 1) + "%";
  }

  // The optional scale field: a positive number, null when empty, undefined when invalid.
  function scaleValue() {
    const text = $("px-per-mm").value.trim();
    if (!text) return null;
    const value = Number(text);
    return Number.isFinite(value) && value > 0 && value <= 1e6 ? value : undefined;
  }

  // The API answers errors as JSON {"detail": "..."}; anything else becomes a readable message.
  async function errorMessage(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) {
      detail = response.statusText;
    }
    return `The server refused the image (HTTP ${response.status}): ${detail}`;
  }

  async function loadModel() {
    try {
      const response = await api("/model");
      if (response.status === 401) {
        $("model-info").textContent = "";
        askForKey(Boolean(apiKey()));
        return;
      }
      if (!response.ok) throw new Error(await errorMessage(response));
      $("key-form").hidden = true;
      const model = await response.json();
      state.model = model;
      state.maxBytes = model.max_upload_mb * 1024 * 1024;
      state.methods = model.explain_methods || [];
      state.task = model.task || "classify";
      $("max-mb").textContent = String(model.max_upload_mb);
      $("scale-field").hidden = state.task !== "segment";
      const size = `${model.img_size} px`;
      const kind = state.task === "segment" ? " · segmentation (crack mask)" : "";
      $("model-info").textContent =
        `Model: ${model.backbone || "unknown backbone"}${kind} · classes: ${model.classes.join(", ")} · input ${size}`;
    } catch (e) {
      $("model-info").textContent = "";
      showError(`Cannot reach the model: ${e.message}`);
    }
  }

  function renderBars(probabilities, label) {
    const list = $("bars");
    list.replaceChildren();
    const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) {
      const item = document.createElement("li");
      item.className = name === label ? "bar predicted" : "bar";
      const text = document.createElement("span");
      text.className = "bar-name";
      text.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", (100 * p).toFixed(1));
      track.setAttribute("aria-label", `probability of ${name}`);
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = pct(p);
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = pct(p);
      item.append(text, track, value);
      list.append(item);
    }
  }

  // The width table: [name, value] rows under the heading's note of this kind of model.
  function fillWidth(lines, text) {
    const box = $("width");
    const rows = $("width-rows");
    rows.replaceChildren();
    if (!lines) {
      box.hidden = true;
      return;
    }
    $("width-note").textContent = text.note;
    $("width-caption").textContent = text.caption;
    for (const [name, value] of lines) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(th, td);
      rows.append(tr);
    }
    box.hidden = false;
  }

  // The longest crack of the heat-map region (/explain of a classifier).
  function renderWidth(width) {
    if (!width) {
      fillWidth(null);
      return;
    }
    const mm = width.px_per_mm ? true : false;
    const lines = [
      ["Cracks found", String(width.n_cracks)],
      ["Length", `${width.length_px.toFixed(1)} px` + (mm ? ` (${width.length_mm.toFixed(2)} mm)` : "")],
      ["Maximum width", `${width.max_width_px.toFixed(1)} px` + (mm ? ` (${width.max_width_mm.toFixed(2)} mm)` : "")],
      ["Mean width", `${width.mean_width_px.toFixed(1)} px` + (mm ? ` (${width.mean_width_mm.toFixed(2)} mm)` : "")],
      ["Median width", `${width.median_width_px.toFixed(1)} px`],
    ];
    if (width.severity) lines.push(["Severity", width.severity]);
    fillWidth(lines, HEAT_MAP_TEXT);
  }

  // Every crack of a segmentation model's mask (/segment): total length, mean and max width.
  function renderMaskWidth(width) {
    if (!width || !width.cracks) {
      fillWidth(null);
      return;
    }
    const mm = width.px_per_mm ? true : false;
    const value = (px, inMm, digits) =>
      px === null ? "–" : `${px.toFixed(digits)} px` + (mm && inMm !== null ? ` (${inMm.toFixed(2)} mm)` : "");
    fillWidth(
      [
        ["Cracks", String(width.cracks)],
        ["Total length", value(width.length_px, mm ? width.length_mm : null, 1)],
        ["Mean width", value(width.mean_width_px, mm ? width.mean_width_mm : null, 2)],
        ["Maximum width", value(width.max_width_px, mm ? width.max_width_mm : null, 2)],
      ],
      MASK_TEXT,
    );
  }

  // The overlay already holds the image under the heat map: show one picture or the other.
  function showOverlay(on) {
    $("overlay").hidden = !on;
    $("preview").hidden = on;
  }

  function resetResult(file) {
    $("result").hidden = false;
    $("result").setAttribute("aria-busy", "true");
    $("file-name").textContent = file.name;
    $("label").textContent = "…";
    $("confidence").textContent = "";
    $("threshold").textContent = "";
    $("fraction").hidden = true;
    $("bars").replaceChildren();
    const text = state.task === "segment" ? MASK_TEXT : HEAT_MAP_TEXT;
    $("bars-title").hidden = state.task === "segment";
    $("overlay-toggle-text").textContent = text.toggle;
    $("overlay").alt = text.alt;
    $("timing").textContent = "";
    showOverlay(false);
    $("overlay").removeAttribute("src");
    $("show-overlay").checked = false;
    $("show-overlay").disabled = true;
    $("overlay-status").textContent = "";
    renderWidth(null);
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
    $("preview").removeAttribute("src");
    if (DISPLAYABLE.has(file.type)) {
      state.objectUrl = URL.createObjectURL(file);
      $("preview").src = state.objectUrl;
    }
  }

  function form(file) {
    const data = new FormData();
    data.append("file", file, file.name);
    return data;
  }

  async function explain(file) {
    if (!state.methods.length) {
      $("overlay-status").textContent = "Heat maps are not available on this server.";
      return;
    }
    $("overlay-status").textContent = "Computing the heat map…";
    try {
      const response = await api("/explain?format=json", { method: "POST", body: form(file) });
      if (!response.ok) throw new Error(await errorMessage(response));
      const result = await response.json();
      $("overlay").src = "data:image/png;base64," + result.overlay_png;
      $("show-overlay").disabled = false;
      $("show-overlay").checked = true;
      showOverlay(true);
      $("overlay-status").textContent = `heat map of “${result.target}” (${result.method})`;
      renderWidth(result.width);
    } catch (e) {
      $("overlay-status").textContent = "";
      showError(`No heat map: ${e.message}`);
    }
  }

  // A classifier: /predict, then the heat map and the crack width from /explain.
  async function classify(file) {
    const preview = DISPLAYABLE.has(file.type) ? "false" : "true";
    const response = await api(`/predict?preview=${preview}`, { method: "POST", body: form(file) });
    if (response.status === 401) askForKey(Boolean(apiKey()));
    if (!response.ok) throw new Error(await errorMessage(response));
    const result = await response.json();
    if (result.preview_png) $("preview").src = "data:image/png;base64," + result.preview_png;
    $("label").textContent = result.label;
    $("confidence").textContent = pct(result.confidence);
    if (result.threshold !== null && result.positive) {
      $("threshold").textContent =
        `“${result.positive}” when its probability is at least ${pct(result.threshold)}.`;
    }
    renderBars(result.probabilities, result.label);
    $("timing").textContent =
      `${result.image.width}×${result.image.height} px · ${result.timing_ms.total_ms.toFixed(0)} ms on the server`;
    setStatus(`${file.name}: ${result.label} (${pct(result.confidence)})`);
    $("result").setAttribute("aria-busy", "false");
    await explain(file);
  }

  // A segmentation model: one /segment answer holds the mask overlay, fraction and widths.
  async function segment(file, scale) {
    const query = new URLSearchParams({ overlay: "true" });
    if (scale !== null) query.set("px_per_mm", String(scale));
    const response = await api(`/segment?${query}`, { method: "POST", body: form(file) });
    if (response.status === 401) askForKey(Boolean(apiKey()));
    if (!response.ok) throw new Error(await errorMessage(response));
    const result = await response.json();
    $("label").textContent = result.label;
    $("confidence").textContent = pct(result.score);
    const area = result.min_area
      ? `; pieces under ${result.min_area} px at the model's input size are left out`
      : "";
    $("threshold").textContent =
      `Pixels whose crack probability is at least ${pct(result.threshold)} make the mask${area}.`;
    $("fraction").textContent = `Crack fraction: ${share(result.crack_fraction)} of the image`;
    $("fraction").hidden = false;
    if (result.overlay) {
      $("overlay").src = result.overlay;
      $("show-overlay").checked = true;
      // The plain picture to switch back to exists only for formats a browser shows.
      $("show-overlay").disabled = !$("preview").getAttribute("src");
      showOverlay(true);
      $("overlay-status").textContent = `mask of “${result.positive || result.label}” in red`;
    }
    renderMaskWidth(result.width);
    $("timing").textContent =
      `${result.width_px}×${result.height_px} px · ${result.timing_ms.total_ms.toFixed(0)} ms on the server`;
    setStatus(`${file.name}: ${result.label} (crack fraction ${share(result.crack_fraction)})`);
  }

  async function analyse(file) {
    if (state.busy) return;
    showError("");
    if (file.size === 0) {
      showError(`${file.name}: the file is empty.`);
      return;
    }
    if (file.size > state.maxBytes) {
      const mb = (file.size / 1024 / 1024).toFixed(1);
      showError(`${file.name} is ${mb} MB; this server accepts up to ${state.model ? state.model.max_upload_mb : 25} MB.`);
      return;
    }
    const scale = state.task === "segment" ? scaleValue() : null;
    if (scale === undefined) {
      showError("The scale must be a positive number of pixels per millimetre, or left empty.");
      $("px-per-mm").focus();
      return;
    }
    state.busy = true;
    $("drop").setAttribute("aria-disabled", "true");
    resetResult(file);
    setStatus(`Analysing ${file.name}…`);
    try {
      if (state.task === "segment") await segment(file, scale);
      else await classify(file);
    } catch (e) {
      $("result").hidden = true;
      setStatus("");
      showError(e.message);
    } finally {
      state.busy = false;
      $("drop").removeAttribute("aria-disabled");
      $("result").setAttribute("aria-busy", "false");
    }
  }

  function init() {
    const drop = $("drop");
    const input = $("file");
    drop.addEventListener("click", () => input.click());
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) analyse(input.files[0]);
      input.value = "";
    });
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      drop.addEventListener(name, () => drop.classList.remove("dragging"));
    }
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      const files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) {
        showError("Drop an image file (not a link or text).");
        return;
      }
      if (files.length > 1) setStatus(`${files.length} files dropped; analysing the first.`);
      analyse(files[0]);
    });
    // A file dropped outside the drop zone must not replace the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    $("show-overlay").addEventListener("change", (event) => showOverlay(event.target.checked));
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
      } catch (e) {
        showError("This browser does not allow session storage; the key cannot be kept.");
      }
      $("api-key").value = "";
      showError("");
      loadModel();
    });
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
