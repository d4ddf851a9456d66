// Keyboard shortcuts and deep links for the CXR grounding review app.
// ← / → previous / next study, 1–9 toggle finding N, a all, n none, ? help,
// c correct, x false finding, Enter save verdict and go to the next finding.
// Dashboard: clicking a study's point in the metric plot opens that study.
(() => {
  const typing = (el) => el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
  const click = (id) => {
    const el = document.getElementById(id);
    if (el) el.click();
  };
  const toggleFinding = (n) => {
    const boxes = document.querySelectorAll("#finding-toggles input[type=checkbox]");
    if (boxes[n - 1]) boxes[n - 1].click();
  };
  const setVerdict = (value) => {
    const radios = document.querySelectorAll("#text-verdict input[type=radio]");
    radios.forEach((r) => { if (r.value === value) r.click(); });
  };
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "ArrowLeft") click("prev-study");
    else if (key === "ArrowRight") click("next-study");
    else if (key >= "1" && key <= "9") toggleFinding(Number(key));
    else if (key === "a") click("show-all");
    else if (key === "n") click("show-none");
    else if (key === "?") click("help-toggle");
    else if (key === "c") setVerdict("correct");
    else if (key === "x") setVerdict("false_finding");
    else if (key === "Enter") click("save-next");
    else return;
    event.preventDefault();
  });
  const attachDashboardClicks = () => {
    const plot = document.querySelector("#dash-dist .js-plotly-plot");
    if (!plot || plot.__cxrClicks || typeof plot.on !== "function") return;
    plot.__cxrClicks = true;
    plot.on("plotly_click", (data) => {
      const studyId = data && data.points && data.points[0] && data.points[0].text;
      const field = document.querySelector("#dash-pick textarea, #dash-pick input");
      if (!studyId || !field) return;
      field.value = studyId;
      field.dispatchEvent(new Event("input", { bubbles: true }));
    });
  };
  setInterval(attachDashboardClicks, 1000);
})();
