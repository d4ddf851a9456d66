// The grounding viewer + findings list, rendered in the browser (body of gr.HTML's js_on_load).
//
// Gradio runs this once per component with `element`, `props`, `trigger`, `server` and `watch`.
// The server sends data only when data changes: `props.value` (a study: pictures, sizes, window
// ranges, reference boxes), `props.report` (findings with IMAGE-frame boxes and verdicts),
// `props.grounding` (a phrase-grounding result), `props.reviewer`, `props.view_mode`. Every display
// state (visibility, isolate, hover, zoom/pan, opacity, line width, reference layer, window/level
// values, invert) lives here, so toggles repaint without a request.
//
// One SVG whose user units ARE image-frame pixels: the picture is an <image> stretched over
// (0, 0)-(width, height) of the original image, boxes are <rect>s with the coordinates they came
// with; zoom and pan only change the viewBox. Strings from models, manifests and uploads are set
// with textContent, never parsed as HTML.
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const TEXT_VERDICTS = [
    ["correct", "✓", "correct"], ["false_finding", "✗", "false finding"], ["wrong_location", "loc", "wrong location"],
    ["wrong_severity", "sev", "wrong severity"], ["unsupported_comparison", "cmp", "unsupported comparison"],
    ["other", "oth", "other error"],
  ];
  const SIGNIFICANCES = [["significant", "sig", "clinically significant"], ["insignificant", "ins", "not significant"]];
  const BOX_VERDICTS = [
    ["correct", "✓", "box correct"], ["wrong_place", "place", "box in the wrong place"],
    ["wrong_extent", "extent", "box of the wrong extent"], ["missing_box", "missing", "a box is missing"],
    ["box_not_needed", "n/a", "no box was needed"],
  ];
  const HELP = [
    ["← →", "previous / next study in the list"], ["1–9", "show / hide finding N"], ["a / n", "all / no findings"],
    ["i", "isolate the selected finding (again or Esc: leave)"], ["↑ ↓", "select a finding"],
    ["c", "correct (text, and box when it has one), save, next finding"], ["x", "false finding, save, next"],
    ["Enter", "save the selected finding, next"], ["Shift+Enter", "save, next study"], ["u", "undo the last verdict"],
    ["g", "generate"], ["v", "invert"], ["0", "reset zoom"], ["wheel / drag", "zoom / pan; double-click resets"],
    ["shift- or right-drag", "window (→ width, ↓ centre)"], ["?", "this help"],
  ];

  const el = (tag, attrs = {}, text = null) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === false || v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    if (text !== null) node.textContent = text;
    return node;
  };
  const svgEl = (tag, attrs = {}) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const typing = (t) => t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
    (t.tagName === "INPUT" && !["checkbox", "radio", "button", "range", "submit"].includes((t.type || "").toLowerCase())));

  const mode = props.view_mode || "review";
  const S = {
    study: null, report: null, grounding: null, hidden: new Set(), isolate: null, active: 0,
    view: null, opacity: 0.15, lineWidth: 2, showRef: true, showGrounding: true, invert: false,
    main: "frontal", win: {}, drag: null, pendingRender: null, rendering: false, busy: false,
  };

  // ------------------------------------------------------------------ skeleton
  element.innerHTML = "";
  const root = el("div", { class: `ws ws-${mode}`, tabindex: "-1" });
  const imagePane = el("div", { class: "ws-image" });
  const toolbar = el("div", { class: "ws-toolbar" });
  const stage = el("div", { class: "ws-stage" });
  const svg = svgEl("svg", { class: "ws-svg", preserveAspectRatio: "xMidYMid meet" });
  const picture = svgEl("image", { class: "ws-picture", x: 0, y: 0, preserveAspectRatio: "none" });
  const gRef = svgEl("g", { class: "ws-reference" });
  const gFind = svgEl("g", { class: "ws-findings" });
  const gGround = svgEl("g", { class: "ws-grounding" });
  svg.append(picture, gRef, gFind, gGround);
  const tooltip = el("div", { class: "ws-tooltip", hidden: true });
  const empty = el("div", { class: "ws-empty" }, "Open a study.");
  const note = el("div", { class: "ws-note", hidden: true });
  stage.append(svg, tooltip, empty, note);
  const thumbs = el("div", { class: "ws-thumbs" });
  const caption = el("div", { class: "ws-caption" });
  imagePane.append(toolbar, stage, thumbs, caption);

  const side = el("div", { class: "ws-side" });
  const head = el("div", { class: "ws-head" });
  const generateBtn = el("button", { class: "ws-generate primary", type: "button", title: "Generate (g)" }, "Generate");
  const status = el("div", { class: "ws-status" });
  head.append(generateBtn, status);
  const message = el("div", { class: "ws-message", role: "status", hidden: true });
  const list = el("ol", { class: "ws-list" });
  const legendTools = el("div", { class: "ws-legend-tools" });
  const groundingBox = el("div", { class: "ws-grounding-panel" });
  const reportVerdict = el("details", { class: "ws-report-verdict" });
  const details = el("details", { class: "ws-details" });
  side.append(head, message, legendTools, list, groundingBox, reportVerdict, details);
  const help = el("div", { class: "ws-help", hidden: true, role: "dialog" });
  root.append(imagePane, side, help);
  element.append(root);

  // ------------------------------------------------------------------ messages
  const say = (text, kind = "info") => {
    message.hidden = !text;
    message.className = `ws-message ${kind}`;
    message.textContent = text || "";
  };

  // ------------------------------------------------------------------ toolbar: window/level, display
  const wlPreset = el("select", { class: "ws-preset", title: "window preset" });
  const wlCentre = el("input", { class: "ws-centre", type: "range", title: "window centre" });
  const wlWidth = el("input", { class: "ws-width", type: "range", title: "window width" });
  const wlValues = el("span", { class: "ws-wl-values" });
  const invertBox = el("input", { class: "ws-invert", type: "checkbox" });
  const refBox = el("input", { class: "ws-ref-toggle", type: "checkbox", checked: true });
  const opacity = el("input", { class: "ws-opacity", type: "range", min: 0, max: 0.6, step: 0.05, value: S.opacity });
  const lineWidth = el("input", { class: "ws-linewidth", type: "range", min: 0.5, max: 6, step: 0.5, value: S.lineWidth });
  const resetBtn = el("button", { class: "ws-reset", type: "button", title: "reset zoom (0)" }, "⤢");
  const helpBtn = el("button", { class: "ws-help-btn", type: "button", title: "keyboard help (?)" }, "?");
  const label = (text, control, cls = "") => { const l = el("label", { class: cls }); l.append(text, control); return l; };
  toolbar.append(
    label("W/L ", wlPreset), label("C ", wlCentre), label("W ", wlWidth), wlValues,
    label(" invert", invertBox, "ws-check"), label(" reference", refBox, "ws-check"),
    label("fill ", opacity), label("line ", lineWidth), resetBtn, helpBtn,
  );

  const currentImage = () => (S.study ? S.study[S.main] || S.study.frontal : null);
  const winOf = (img) => {
    if (!S.win[img.key]) {
      const [c, w] = img.window.default;
      S.win[img.key] = { c, w, preset: "auto" };
    }
    return S.win[img.key];
  };
  const syncWindowControls = () => {
    const img = currentImage();
    const on = !!img;
    [wlPreset, wlCentre, wlWidth].forEach((c) => { c.disabled = !on; });
    if (!img) { wlValues.textContent = ""; return; }
    const r = img.window;
    const w = winOf(img);
    wlPreset.innerHTML = "";
    for (const name of Object.keys(r.presets)) wlPreset.append(el("option", { value: name }, name === "auto" && r.voi ? "auto (DICOM VOI)" : name));
    wlPreset.append(el("option", { value: "custom" }, "custom"));
    wlPreset.value = w.preset;
    const step = r.max - r.min > 512 ? 1 : 0.5;
    Object.assign(wlCentre, { min: r.min, max: r.max + 1, step });
    Object.assign(wlWidth, { min: 1, max: r.width_max, step });
    wlCentre.value = clamp(w.c, r.min, r.max + 1);
    wlWidth.value = clamp(w.w, 1, r.width_max);
    wlValues.textContent = `${Math.round(w.c)} / ${Math.round(w.w)}`;
  };

  // Window renders: one request in flight, the newest wanted one next; the picture swaps when it arrives.
  const requestRender = () => {
    const img = currentImage();
    if (!img) return;
    const w = winOf(img);
    S.pendingRender = { key: img.key, c: w.c, w: w.w };
    pumpRender();
  };
  const pumpRender = async () => {
    if (S.rendering || !S.pendingRender) return;
    const job = S.pendingRender;
    S.pendingRender = null;
    S.rendering = true;
    try {
      const result = await server.render_window({ key: job.key, centre: job.c, width: job.w });
      const img = currentImage();
      if (result && result.src && img && img.key === job.key) {
        picture.setAttribute("href", result.src);
        thumbFor(S.main, result.src);
      } else if (result && result.error) say(result.error, "warn");
    } catch (err) {
      say("The picture could not be re-rendered; the server did not answer.", "warn");
    } finally {
      S.rendering = false;
      if (S.pendingRender) pumpRender();
    }
  };
  const setWindow = (c, w, preset = "custom") => {
    const img = currentImage();
    if (!img) return;
    const r = img.window;
    Object.assign(winOf(img), { c: clamp(c, r.min, r.max + 1), w: clamp(w, 1, r.width_max), preset });
    syncWindowControls();
    requestRender();
  };
  wlPreset.addEventListener("change", () => {
    const img = currentImage();
    if (!img || wlPreset.value === "custom") return;
    const [c, w] = img.window.presets[wlPreset.value];
    setWindow(c, w, wlPreset.value);
  });
  wlCentre.addEventListener("input", () => setWindow(Number(wlCentre.value), winOf(currentImage()).w));
  wlWidth.addEventListener("input", () => setWindow(winOf(currentImage()).c, Number(wlWidth.value)));
  const applyInvert = () => {
    picture.style.filter = S.invert ? "invert(1)" : "";
    thumbs.querySelectorAll("img").forEach((t) => { t.style.filter = S.invert ? "invert(1)" : ""; });
    invertBox.checked = S.invert;
  };
  invertBox.addEventListener("change", () => { S.invert = invertBox.checked; applyInvert(); });
  refBox.addEventListener("change", () => { S.showRef = refBox.checked; paintVisibility(); });
  opacity.addEventListener("input", () => { S.opacity = Number(opacity.value); paintStyle(); });
  lineWidth.addEventListener("input", () => { S.lineWidth = Number(lineWidth.value); paintStyle(); });
  resetBtn.addEventListener("click", () => resetView());
  helpBtn.addEventListener("click", () => toggleHelp());

  // ------------------------------------------------------------------ zoom and pan (viewBox in image pixels)
  const fullView = () => { const img = currentImage(); return img ? { x: 0, y: 0, w: img.width, h: img.height } : null; };
  const applyView = () => {
    if (!S.view) return;
    svg.setAttribute("viewBox", `${S.view.x} ${S.view.y} ${S.view.w} ${S.view.h}`);
  };
  const resetView = () => { S.view = fullView(); applyView(); };
  const toImage = (event) => {
    const ctm = svg.getScreenCTM();
    if (!ctm) return null;
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(ctm.inverse());
    return { x: p.x, y: p.y };
  };
  svg.addEventListener("wheel", (event) => {
    if (!S.view) return;
    event.preventDefault();
    const p = toImage(event);
    const full = fullView();
    const factor = Math.exp(clamp(event.deltaY, -300, 300) * 0.0015);
    const w = clamp(S.view.w * factor, full.w / 40, full.w * 1.5);
    const h = w * (S.view.h / S.view.w);
    S.view = { x: p.x - (p.x - S.view.x) * (w / S.view.w), y: p.y - (p.y - S.view.y) * (h / S.view.h), w, h };
    applyView();
  }, { passive: false });
  svg.addEventListener("contextmenu", (event) => event.preventDefault());
  svg.addEventListener("pointerdown", (event) => {
    if (!S.view) return;
    const windowing = event.button === 2 || event.shiftKey;
    if (event.button !== 0 && !windowing) return;
    const img = currentImage();
    S.drag = { windowing, x: event.clientX, y: event.clientY, view: { ...S.view }, win: { ...winOf(img) } };
    svg.setPointerCapture(event.pointerId);
  });
  svg.addEventListener("pointermove", (event) => {
    if (!S.drag) return;
    const dx = event.clientX - S.drag.x;
    const dy = event.clientY - S.drag.y;
    if (S.drag.windowing) {
      const r = currentImage().window;
      const scale = r.width_max / 600; // a 600 px drag spans the whole range
      setWindow(S.drag.win.c + dy * scale, S.drag.win.w + dx * scale);
      return;
    }
    const ctm = svg.getScreenCTM();
    const k = ctm ? 1 / ctm.a : 1;
    S.view = { ...S.drag.view, x: S.drag.view.x - dx * k, y: S.drag.view.y - dy * k };
    applyView();
  });
  const endDrag = () => { S.drag = null; };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("dblclick", () => resetView());

  // ------------------------------------------------------------------ drawing
  const findings = () => (S.report && S.report.findings) || [];
  const isShown = (index) => (S.isolate !== null ? S.isolate === index : !S.hidden.has(index));
  const rectOf = (box, attrs) => svgEl("rect", {
    x: box[0], y: box[1], width: Math.max(0, box[2] - box[0]), height: Math.max(0, box[3] - box[1]),
    "vector-effect": "non-scaling-stroke", ...attrs,
  });
  const drawBoxes = () => {
    gRef.replaceChildren();
    gFind.replaceChildren();
    gGround.replaceChildren();
    if (!S.study) return;
    for (const ref of S.study.reference || []) {
      const g = svgEl("g", { class: "ws-ref" });
      ref.boxes.forEach((b) => g.append(rectOf(b, { class: "ws-ref-box" })));
      gRef.append(g);
    }
    const boxes = [];
    for (const f of findings()) f.boxes.forEach((b) => boxes.push({ f, b, area: (b[2] - b[0]) * (b[3] - b[1]) }));
    boxes.sort((p, q) => q.area - p.area); // small boxes last: on top, so they catch the hover
    for (const { f, b } of boxes) {
      const attrs = { class: "ws-box", "data-index": f.index, stroke: f.colour, fill: f.colour };
      if (f.dash) attrs["stroke-dasharray"] = f.dash;
      gFind.append(rectOf(b, attrs));
    }
    const g = S.grounding && S.grounding.report;
    if (g) g.findings.forEach((f) => f.boxes.forEach((b) => gGround.append(rectOf(b, { class: "ws-ground-box" }))));
    paintStyle();
    paintVisibility();
  };
  const paintStyle = () => {
    gFind.querySelectorAll("rect").forEach((r) => {
      r.setAttribute("fill-opacity", S.opacity);
      r.setAttribute("stroke-width", S.lineWidth * (Number(r.dataset.index) === S.isolate ? 1.6 : 1));
    });
    gRef.querySelectorAll("rect").forEach((r) => r.setAttribute("stroke-width", Math.max(1, S.lineWidth * 0.75)));
    gGround.querySelectorAll("rect").forEach((r) => r.setAttribute("stroke-width", S.lineWidth));
  };
  // The one place visibility is shown: boxes, list rows (their swatch is the legend and the checkbox).
  const paintVisibility = () => {
    const onFrontal = S.main === "frontal";
    gFind.querySelectorAll("rect").forEach((r) => { r.style.display = onFrontal && isShown(Number(r.dataset.index)) ? "" : "none"; });
    gRef.style.display = onFrontal && S.showRef ? "" : "none";
    gGround.style.display = onFrontal && S.showGrounding ? "" : "none";
    list.querySelectorAll(".ws-row").forEach((row) => {
      const i = Number(row.dataset.index);
      row.classList.toggle("hidden-finding", !isShown(i));
      row.classList.toggle("isolated", S.isolate === i);
      row.classList.toggle("active", S.active === i);
      const swatch = row.querySelector(".ws-swatch");
      if (swatch) swatch.setAttribute("aria-pressed", isShown(i) ? "true" : "false");
    });
    refBox.checked = S.showRef;
    note.hidden = onFrontal;
    note.textContent = onFrontal ? "" : `${S.main === "lateral" ? "Lateral" : "Prior frontal"} view: boxes belong to the frontal image.`;
  };
  const toggle = (index) => {
    if (S.isolate !== null) { S.isolate = null; } else if (S.hidden.has(index)) S.hidden.delete(index); else S.hidden.add(index);
    paintVisibility();
    paintStyle();
  };
  const isolate = (index) => { S.isolate = S.isolate === index ? null : index; paintVisibility(); paintStyle(); };
  const showAll = () => { S.hidden.clear(); S.isolate = null; paintVisibility(); paintStyle(); };
  const showNone = () => { S.isolate = null; findings().forEach((f) => S.hidden.add(f.index)); paintVisibility(); paintStyle(); };

  // Hover: anywhere inside a finding's box shows its number and sentence.
  gFind.addEventListener("pointerover", (event) => {
    const i = event.target.dataset && event.target.dataset.index;
    if (i === undefined) return;
    const f = findings()[Number(i)];
    if (!f) return;
    tooltip.hidden = false;
    tooltip.textContent = `${f.index + 1}. ${f.text}`;
    tooltip.style.borderColor = f.colour;
  });
  gFind.addEventListener("pointermove", (event) => {
    const box = stage.getBoundingClientRect();
    tooltip.style.left = `${clamp(event.clientX - box.left + 14, 0, box.width - 260)}px`;
    tooltip.style.top = `${clamp(event.clientY - box.top + 14, 0, box.height - 40)}px`;
  });
  gFind.addEventListener("pointerout", () => { tooltip.hidden = true; });

  // ------------------------------------------------------------------ thumbnails
  const thumbFor = (view, src) => {
    const img = thumbs.querySelector(`[data-view="${view}"] img`);
    if (img && view !== "frontal") img.src = src;
  };
  const drawThumbs = () => {
    thumbs.replaceChildren();
    if (!S.study) return;
    for (const [view, name] of [["frontal", "Frontal"], ["lateral", "Lateral"], ["prior", "Prior frontal"]]) {
      const img = S.study[view];
      if (!img) continue;
      const b = el("button", { class: `ws-thumb${S.main === view ? " current" : ""}`, type: "button", "data-view": view, title: `show the ${name.toLowerCase()} image` });
      const pic = el("img", { alt: name, src: img.src });
      b.append(pic, el("span", {}, name));
      b.addEventListener("click", () => showMain(view));
      thumbs.append(b);
    }
    applyInvert();
  };
  const showMain = (view) => {
    if (!S.study || !S.study[view]) return;
    S.main = view;
    const img = currentImage();
    picture.setAttribute("width", img.width);
    picture.setAttribute("height", img.height);
    picture.setAttribute("href", img.src);
    thumbs.querySelectorAll(".ws-thumb").forEach((t) => t.classList.toggle("current", t.dataset.view === view));
    resetView();
    syncWindowControls();
    const w = winOf(img);
    if (view !== "frontal" || w.preset !== "auto") requestRender(); // thumbnails are small: enlarge with a render
    paintVisibility();
  };

  // ------------------------------------------------------------------ the findings list with verdicts
  const chips = (options, value, onPick, cls) => {
    const wrap = el("span", { class: `ws-chips ${cls}` });
    for (const [v, text, title] of options) {
      const b = el("button", { type: "button", class: `ws-chip${value === v ? " on" : ""}`, "data-value": v, title }, text);
      b.addEventListener("click", (event) => { event.stopPropagation(); onPick(value === v ? null : v); });
      wrap.append(b);
    }
    return wrap;
  };
  const draft = {}; // index -> verdict being edited on screen
  let beforeClick = null;
  const verdictOf = (f) => draft[f.index] || f.verdict || {};
  const canReview = () => mode === "review" && S.report && S.report.report_id && !S.report.streaming;
  const renderList = () => {
    const typingIn = document.activeElement && document.activeElement.classList.contains("ws-comment")
      ? { index: document.activeElement.closest(".ws-row").dataset.index, value: document.activeElement.value,
          at: document.activeElement.selectionStart } : null;
    list.replaceChildren();
    legendTools.replaceChildren();
    const fs = findings();
    if (!S.report) {
      const none = props.task === "box_completion"
        ? "No box completion for this study and context yet. Press Complete boxes (g)."
        : "No report for this study and context yet. Press Generate (g).";
      list.append(el("li", { class: "ws-none" }, S.study ? none : ""));
      return;
    }
    if (fs.length) {
      const all = el("button", { type: "button", class: "ws-all", title: "show all (a)" }, "all");
      const none = el("button", { type: "button", class: "ws-none-btn", title: "hide all (n)" }, "none");
      all.addEventListener("click", showAll);
      none.addEventListener("click", showNone);
      legendTools.append(all, none, el("span", { class: "ws-hint" }, "click a sentence: show/hide · double-click: isolate"));
    }
    if (!fs.length) list.append(el("li", { class: "ws-none" }, S.report.streaming ? "generating…" : "The model wrote no findings."));
    for (const f of fs) {
      const row = el("li", { class: "ws-row", "data-index": f.index });
      row.style.setProperty("--c", f.colour);
      const swatch = el("button", { type: "button", class: "ws-swatch", title: `show/hide (${f.index < 9 ? f.index + 1 : "click"})` }, String(f.index + 1));
      swatch.addEventListener("click", (event) => { event.stopPropagation(); S.active = f.index; toggle(f.index); });
      const text = el("div", { class: "ws-text" });
      text.append(el("span", { class: "ws-sentence" }, f.text || "(empty)"));
      text.append(el("span", { class: `ws-badge${f.grounded ? "" : " ungrounded"}` }, f.grounded ? `${f.boxes.length} box${f.boxes.length === 1 ? "" : "es"}` : "ungrounded"));
      // A double click starts with a click: remember the state before it, so the double click
      // isolates (or leaves isolate) from there instead of from the toggled state.
      text.addEventListener("click", (event) => {
        if (event.detail > 1) return;
        beforeClick = { hidden: new Set(S.hidden), isolate: S.isolate };
        S.active = f.index;
        toggle(f.index);
      });
      text.addEventListener("dblclick", (event) => {
        event.preventDefault();
        if (beforeClick) { S.hidden = beforeClick.hidden; S.isolate = beforeClick.isolate; }
        S.active = f.index;
        isolate(f.index);
      });
      row.append(swatch, text);
      if (canReview()) row.append(verdictControls(f));
      list.append(row);
    }
    paintVisibility();
    if (typingIn) { // a re-render never takes a half-typed comment away
      const field = list.querySelector(`.ws-row[data-index="${typingIn.index}"] .ws-comment`);
      if (field) { field.value = typingIn.value; field.focus(); field.setSelectionRange(typingIn.at, typingIn.at); }
    }
  };
  const verdictControls = (f) => {
    const v = verdictOf(f);
    const box = el("div", { class: "ws-verdict" });
    const pick = (field) => (value) => { S.active = f.index; save(f, { [field]: value }, false); };
    box.append(chips(TEXT_VERDICTS, v.text, pick("text"), "text"));
    if (v.text && v.text !== "correct") box.append(chips(SIGNIFICANCES, v.significance, pick("significance"), "sig"));
    box.append(chips(BOX_VERDICTS, v.box, pick("box"), "box"));
    const comment = el("input", { class: `ws-comment${v.comment ? " filled" : ""}`, type: "text", placeholder: "comment", maxlength: 2000, value: v.comment || "" });
    comment.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); save(f, { comment: comment.value }, true, event.shiftKey); }
      if (event.key === "Escape") comment.blur();
    });
    comment.addEventListener("change", () => { if ((verdictOf(f).comment || "") !== comment.value) save(f, { comment: comment.value }, false); });
    box.append(comment);
    box.append(el("span", { class: "ws-saved" }, f.verdict ? "saved" : ""));
    return box;
  };

  // A save shows at once and moves the cursor at once (a fast reviewer's next key goes to the next
  // finding); the server's answer then confirms that finding only, so answers arriving out of order
  // never undo one another.
  const save = async (f, changes, advance, nextStudy = false) => {
    if (!canReview()) return;
    const v = { text: null, significance: null, box: null, comment: "", ...verdictOf(f), ...changes };
    if (v.text === null || v.text === "correct") v.significance = null;
    draft[f.index] = v;
    if (advance) S.active = Math.min(findings().length - 1, f.index + 1);
    renderList();
    const reportId = S.report.report_id;
    const result = await server.save_verdict({
      report_id: reportId, finding_index: f.index, sentence: f.text, reviewer: props.reviewer || "",
      text_verdict: v.text, significance: v.significance, box_verdict: v.box, comment: v.comment || "",
    }).catch(() => ({ ok: false, message: "The verdict was not saved: the server did not answer." }));
    if (!S.report || S.report.report_id !== reportId) return; // another report is on screen now
    if (draft[f.index] === v) delete draft[f.index];
    if (!result.ok) { say(result.message, "error"); renderList(); return; }
    f.verdict = result.verdicts[String(f.index)] || null;
    say(result.message, "ok");
    trigger("verdict_saved", {});
    if (nextStudy) { clickNav("next-study"); return; }
    renderList();
  };
  const applyVerdicts = (verdicts) => {
    for (const f of findings()) f.verdict = verdicts[String(f.index)] || null;
  };
  const undo = async () => {
    const f = findings()[S.active];
    if (!canReview() || !f) return;
    const result = await server.undo_verdict({ report_id: S.report.report_id, finding_index: f.index, reviewer: props.reviewer || "" })
      .catch(() => ({ ok: false, message: "Nothing was undone: the server did not answer." }));
    say(result.message, result.ok ? "ok" : "error");
    if (result.ok) { applyVerdicts(result.verdicts); renderList(); }
  };

  // ------------------------------------------------------------------ report-level verdict
  const renderReportVerdict = () => {
    reportVerdict.replaceChildren();
    reportVerdict.hidden = !canReview();
    if (!canReview()) return;
    const v = S.report.report_verdict || { omissions: [], rating: null, comment: "" };
    reportVerdict.append(el("summary", {}, `Report verdict${S.report.report_verdict ? " (saved)" : ""}: omissions, rating, comment`));
    const omissions = el("textarea", { class: "ws-omissions", rows: 2, placeholder: "missed findings, one per line" });
    omissions.value = v.omissions.join("\n");
    let rating = v.rating;
    const stars = chips([1, 2, 3, 4, 5].map((n) => [n, String(n), `overall rating ${n} of 5`]), rating, (n) => {
      rating = n;
      stars.querySelectorAll(".ws-chip").forEach((b) => b.classList.toggle("on", Number(b.dataset.value) === n));
    }, "rating");
    const comment = el("input", { class: "ws-report-comment", type: "text", placeholder: "report comment", value: v.comment || "" });
    const button = el("button", { type: "button", class: "ws-save-report" }, "Save report verdict");
    button.addEventListener("click", async () => {
      const result = await server.save_report_verdict({
        report_id: S.report.report_id, reviewer: props.reviewer || "", omissions: omissions.value, rating, comment: comment.value,
      }).catch(() => ({ ok: false, message: "The report verdict was not saved: the server did not answer." }));
      say(result.message, result.ok ? "ok" : "error");
      if (result.ok) { S.report.report_verdict = result.report_verdict; renderReportVerdict(); }
    });
    reportVerdict.append(label("Omissions ", omissions), el("div", { class: "ws-rating" }, "Rating "), comment, button);
    reportVerdict.querySelector(".ws-rating").append(stars);
  };

  // ------------------------------------------------------------------ header, grounding panel, details
  const renderHead = () => {
    const r = S.report;
    generateBtn.hidden = mode !== "review";
    generateBtn.disabled = !S.study || S.busy;
    const boxes = props.task === "box_completion";
    generateBtn.textContent = S.busy ? (boxes ? "Completing…" : "Generating…")
      : boxes ? (r && r.report_id ? "Complete boxes again" : "Complete boxes")
      : r && r.report_id ? "Regenerate" : "Generate";
    status.replaceChildren();
    if (!r) return;
    const when = r.created ? new Date(r.created).toLocaleString() : "";
    const line = r.streaming ? `generating… ${r.findings.length} finding(s)` :
      [r.report_id ? "stored report" : "", r.model, r.weights ? `weights ${r.weights}` : "", when, r.source].filter(Boolean).join(" · ");
    status.append(el("div", { class: "ws-provenance" }, line));
    status.append(el("div", { class: "ws-context" }, r.context));
    if (r.task === "box_completion") {
      status.append(el("div", { class: "ws-task" }, "Box completion: the radiologist's sentences, the model's boxes (the radiologist's boxes: white dots)."));
    }
    if (r.demo) status.append(el("span", { class: "demo" }, "demo model: synthetic phantoms, no medical meaning"));
    const problems = [...(r.flags || []), ...(!r.complete && !r.streaming ? ["incomplete or malformed output"] : [])];
    if (problems.length) status.append(el("div", { class: "ws-flags" }, `⚠ ${problems.join(" · ")}`));
  };
  const renderGrounding = () => {
    groundingBox.replaceChildren();
    if (mode !== "review") { groundingBox.hidden = true; return; }
    const form = el("form", { class: "ws-ground-form" });
    const input = el("input", { class: "ws-phrase", type: "text", placeholder: "phrase to ground, e.g. right pleural effusion", maxlength: 10000 });
    const button = el("button", { type: "submit" }, "Ground phrase");
    form.append(input, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!input.value.trim()) { say("Type a finding to ground, e.g. 'right pleural effusion'.", "warn"); return; }
      trigger("ground", { phrase: input.value });
      say("Grounding…", "info");
    });
    groundingBox.append(form);
    const g = S.grounding;
    if (!g) return;
    if (g.phrase) input.value = g.phrase;
    const result = el("div", { class: "ws-ground-result" });
    result.append(el("div", {}, "You asked: "), el("q", {}, g.phrase));
    const sentences = (g.report && g.report.findings) || [];
    const answer = sentences.map((f) => f.text).join(" ") || "(no sentence)";
    const boxes = sentences.reduce((n, f) => n + f.boxes.length, 0);
    result.append(el("div", {}, "The model wrote: "), el("q", {}, answer));
    result.append(el("div", { class: "ws-badge" }, boxes ? `${boxes} box${boxes === 1 ? "" : "es"} (dashed)` : "no box"));
    const show = el("input", { type: "checkbox", checked: S.showGrounding });
    show.addEventListener("change", () => { S.showGrounding = show.checked; paintVisibility(); });
    result.append(label(" show grounding boxes", show, "ws-check"));
    groundingBox.append(result);
  };
  const renderDetails = () => {
    details.replaceChildren();
    const r = S.report;
    details.hidden = !r;
    if (!r) return;
    details.append(el("summary", {}, "Raw output, warnings, timings"));
    const timings = Object.entries(r.timings || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    const text = [`report id: ${r.report_id || "(not stored yet)"} · task: ${r.task}`, `timings: ${timings}`,
      `warnings: ${(r.warnings || []).join("; ") || "none"}`, "", r.raw_text].join("\n");
    details.append(el("pre", { class: "ws-raw" }, text));
  };
  const toggleHelp = () => {
    if (!help.childElementCount) {
      help.append(el("h3", {}, "Keyboard (when not typing in a text field)"));
      const table = el("table");
      for (const [k, what] of HELP) { const tr = el("tr"); tr.append(el("td", {}, ""), el("td", {}, what)); tr.firstChild.append(el("kbd", {}, k)); table.append(tr); }
      help.append(table, el("p", {}, "Boxes are generated on the model's square centre crop and drawn on the whole image after one conversion (model_backend.boxes.model_to_image_box). Reference (radiologist) boxes: white dotted, beneath the findings. Grounding results: dashed."));
      const close = el("button", { type: "button" }, "Close");
      close.addEventListener("click", () => { help.hidden = true; });
      help.append(close);
    }
    help.hidden = !help.hidden;
  };

  // ------------------------------------------------------------------ data from the server
  // Several viewers of one page may show the same picture (Compare): it travels once, the others
  // receive `shared_pictures` and take it from this page-wide cache by the image's content key.
  const pictures = (window.__cxrPictures = window.__cxrPictures || new Map());
  const resolvePictures = (study, attempt = 0) => {
    const views = ["frontal", "lateral", "prior"].map((v) => study[v]).filter(Boolean);
    for (const img of views) if (img.src && !study.shared_pictures) pictures.set(img.key, img.src);
    const missing = views.filter((img) => !pictures.has(img.key) && study.shared_pictures);
    if (missing.length && attempt < 60) { requestAnimationFrame(() => resolvePictures(study, attempt + 1)); return; }
    for (const img of views) if (study.shared_pictures) img.src = pictures.get(img.key) || "";
    if (S.study === study) { picture.setAttribute("href", currentImage().src); drawThumbs(); }
  };
  // Performance marks (read by benchmarks/bench_viewer.py): data arrived, picture painted.
  const markPainted = (name) => requestAnimationFrame(() => performance.mark(`cxr-${mode}-${name}`));
  picture.addEventListener("load", () => markPainted("study-painted"));
  const setStudy = (study) => {
    performance.mark(`cxr-${mode}-study-data`);
    S.study = study && study.frontal ? study : null;
    S.hidden.clear(); S.isolate = null; S.active = 0; S.main = "frontal"; S.win = {};
    for (const k of Object.keys(draft)) delete draft[k];
    empty.hidden = !!S.study;
    empty.textContent = study && study.message ? study.message : "Open a study.";
    if (S.study) {
      const f = S.study.frontal;
      picture.setAttribute("width", f.width);
      picture.setAttribute("height", f.height);
      picture.setAttribute("href", f.src);
      svg.style.display = "";
      S.view = fullView();
      applyView();
    } else {
      picture.removeAttribute("href");
      svg.style.display = "none";
    }
    caption.textContent = S.study ? [
      S.study.study_id, S.study.position, `${S.study.frontal.width}×${S.study.frontal.height} ${S.study.frontal.format}, ${S.study.frontal.bits}-bit`,
      `reference boxes: ${(S.study.reference || []).reduce((n, r) => n + r.boxes.length, 0)}`, S.study.attribution,
    ].filter(Boolean).join(" · ") : "";
    drawThumbs();
    syncWindowControls();
    applyInvert();
    drawBoxes();
    renderHead();
    renderList();
    if (S.study) resolvePictures(S.study);
  };
  const setReport = (report) => {
    performance.mark(`cxr-${mode}-report-data`);
    // Toggles and the selected row belong to one list of findings: kept while the same report (or the
    // generation that is producing it) is on screen, reset for any other report. Zoom is never reset here.
    const continuing = S.report && report && (S.report.streaming || (S.report.report_id && S.report.report_id === report.report_id));
    if (!continuing) { S.hidden.clear(); S.isolate = null; S.active = 0; for (const k of Object.keys(draft)) delete draft[k]; }
    S.report = report || null;
    S.busy = !!(report && report.streaming);
    if (S.report && S.active >= findings().length) S.active = 0;
    drawBoxes();
    renderHead();
    renderList();
    renderReportVerdict();
    renderDetails();
    markPainted("report-painted");
  };
  const setGrounding = (grounding) => {
    S.grounding = grounding || null;
    if (grounding && grounding.error) say(grounding.error, "error");
    else if (grounding) say("", "info");
    drawBoxes();
    renderGrounding();
  };

  // The address bar describes what is on screen; back/forward ask the app to open that address.
  const OWN_PARAMS = /^(study|upload|report|lateral|prior|grounded|task|view|[A-D](\..+)?)$/;
  const updateAddress = (url) => {
    if (!url) return;
    const u = new URL(window.location);
    for (const k of [...u.searchParams.keys()]) if (OWN_PARAMS.test(k)) u.searchParams.delete(k);
    for (const [k, v] of Object.entries(url.params || {})) if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, v);
    if (u.toString() === window.location.toString()) return;
    if (url.push) window.history.pushState({ cxr: true }, "", u); else window.history.replaceState({ cxr: true }, "", u);
  };
  if (mode === "review") {
    window.addEventListener("popstate", () => {
      const field = document.querySelector("#nav-target textarea, #nav-target input");
      if (!field) return;
      field.value = window.location.search + "#" + Date.now(); // always a change, even for the same address
      field.dispatchEvent(new Event("input", { bubbles: true }));
    });
  }

  generateBtn.addEventListener("click", () => {
    if (!S.study || S.busy) return;
    S.busy = true;
    renderHead();
    say("", "info");
    trigger("generate", {});
  });

  // ------------------------------------------------------------------ keyboard
  const clickNav = (id) => { const b = document.getElementById(id); if (b) b.click(); };
  if (mode === "review" && !window.__cxrKeys) {
    window.__cxrKeys = true;
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      const ws = document.querySelector("#workstation .ws");
      if (!ws || !ws.offsetParent) return; // the Review tab is not on screen
      const api = ws.__cxrApi;
      if (!api || !api.key(event)) return;
      event.preventDefault();
      event.stopPropagation();
    }, true);
  }
  const moveActive = (delta) => { S.active = clamp(S.active + delta, 0, Math.max(0, findings().length - 1)); paintVisibility(); scrollActive(); };
  const scrollActive = () => { const row = list.querySelector(`.ws-row[data-index="${S.active}"]`); if (row) row.scrollIntoView({ block: "nearest" }); };
  const quick = (changes) => {
    const f = findings()[S.active];
    if (!f || !canReview()) return;
    const boxChange = f.grounded && changes.text === "correct" ? { box: "correct" } : {};
    save(f, { ...changes, ...boxChange }, true);
  };
  const key = (event) => {
    const k = event.key;
    if (k === "ArrowLeft") clickNav("prev-study");
    else if (k === "ArrowRight") clickNav("next-study");
    else if (k >= "1" && k <= "9") { const i = Number(k) - 1; if (i < findings().length) { S.active = i; toggle(i); } }
    else if (k === "a") showAll();
    else if (k === "n") showNone();
    else if (k === "i") { if (findings().length) isolate(S.active); }
    else if (k === "Escape") { if (S.isolate !== null) { S.isolate = null; paintVisibility(); paintStyle(); } help.hidden = true; }
    else if (k === "ArrowDown" || k === "j") moveActive(1);
    else if (k === "ArrowUp" || k === "k") moveActive(-1);
    else if (k === "c") quick({ text: "correct" });
    else if (k === "x") quick({ text: "false_finding" });
    else if (k === "Enter") { const f = findings()[S.active]; if (f && canReview()) save(f, {}, true, event.shiftKey); else if (event.shiftKey) clickNav("next-study"); }
    else if (k === "u") undo();
    else if (k === "g") generateBtn.click();
    else if (k === "v") { S.invert = !S.invert; applyInvert(); }
    else if (k === "0") resetView();
    else if (k === "?") toggleHelp();
    else return false;
    return true;
  };
  root.__cxrApi = { key, toggle, isolate, showAll, showNone, resetView };

  watch("value", () => setStudy(props.value));
  watch("report", () => setReport(props.report));
  watch("grounding", () => setGrounding(props.grounding));
  watch("address", () => updateAddress(props.address));
  watch("task", () => { renderHead(); renderList(); });
  const showMessage = () => {
    if (!props.message) return;
    say(props.message.text, props.message.kind);
    if (props.message.kind === "error") { S.busy = false; renderHead(); }
  };
  watch("message", showMessage);
  // Data that arrived before this script ran (the page's first answer can beat it).
  setStudy(props.value);
  setReport(props.report);
  setGrounding(props.grounding);
  updateAddress(props.address);
  showMessage();
})();
