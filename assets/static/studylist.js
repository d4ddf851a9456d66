// The study list of the Review tab (body of gr.HTML's js_on_load): the current list (search,
// filters) with the open study highlighted and a tick on studies the reviewer has judged.
// A click asks the app to open that study; ids are set as text, never parsed as HTML.
(() => {
  const box = document.createElement("div");
  box.className = "sl";
  const counter = document.createElement("div");
  counter.className = "sl-counter";
  const list = document.createElement("ol");
  list.className = "sl-list";
  box.append(counter, list);
  element.replaceChildren(box);
  const render = () => {
    const data = props.value || { items: [] };
    counter.textContent = data.counter || "";
    list.replaceChildren();
    for (const item of data.items || []) {
      const li = document.createElement("li");
      li.className = `sl-item${item.current ? " current" : ""}${item.reviewed ? " reviewed" : ""}`;
      li.dataset.studyId = item.id;
      li.title = item.title || item.id;
      li.textContent = item.label || item.id;
      li.addEventListener("click", () => trigger("open", { study_id: item.id }));
      list.append(li);
    }
    const current = list.querySelector(".current");
    if (current) current.scrollIntoView({ block: "nearest" });
  };
  watch("value", render);
  render();
})();
