// Page-level glue for the CXR grounding review app (keyboard and viewer live in workstation.js).
// Dashboard: clicking a study's point in the metric plot opens that study with that context's report
// (the point's customdata is [study id, context name, task]; the click time makes a second click a change).
(() => {
  const attachDashboardClicks = () => {
    const plot = document.querySelector("#dash-dist .js-plotly-plot");
    if (!plot || plot.__cxrClicks || typeof plot.on !== "function") return;
    plot.__cxrClicks = true;
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      const field = document.querySelector("#dash-pick textarea, #dash-pick input");
      if (!point || !Array.isArray(point.customdata) || !field) return;
      field.value = JSON.stringify({ point: point.customdata, at: Date.now() });
      field.dispatchEvent(new Event("input", { bubbles: true }));
    });
  };
  setInterval(attachDashboardClicks, 1000);
})();
