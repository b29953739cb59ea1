// Run in the report page by tests/analysis/test_browser.py: every image loaded, nothing wider
// than the window outside a scrolling box, no figure over a table or another figure, and every
// table's header cells above its columns. The result is JSON in a pre element, id browser-check.
window.addEventListener("load", () => {
  const problems = [];
  const width = document.documentElement.clientWidth;
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image ${img.getAttribute("src")} did not load`);
  }
  if (document.documentElement.scrollWidth > width) {
    problems.push(`page is ${document.documentElement.scrollWidth}px wide in a ${width}px window`);
  }
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.right > width + 1 && !el.closest(".wide")) {
      problems.push(`${el.tagName.toLowerCase()} ${el.className} overflows to ${Math.round(box.right)}px`);
    }
  }
  const blocks = [...document.images, ...document.querySelectorAll("table")];
  const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  for (let i = 0; i < blocks.length; i++) {
    for (let j = i + 1; j < blocks.length; j++) {
      if (blocks[i].contains(blocks[j]) || blocks[j].contains(blocks[i])) continue;
      if (overlap(blocks[i].getBoundingClientRect(), blocks[j].getBoundingClientRect())) {
        problems.push(`${blocks[i].tagName} ${blocks[i].getAttribute("src") || i} overlaps ${blocks[j].tagName} ${blocks[j].getAttribute("src") || j}`);
      }
    }
  }
  const tables = document.querySelectorAll("table");
  tables.forEach((table, t) => {
    const rows = [...table.rows];
    const header = rows.find((r) => r.cells[0] && r.cells[0].tagName === "TH") || rows[0];
    const span = (row) => [...row.cells].reduce((n, c) => n + c.colSpan, 0);
    const first = rows.find((r) => r !== header && [...r.cells].every((c) => c.colSpan === 1));
    for (const row of rows) {
      if (row !== header && span(row) !== span(header)) {
        problems.push(`table ${t}: a row of ${span(row)} cells under a header of ${span(header)}`);
        return;
      }
    }
    if (first && [...header.cells].every((c) => c.colSpan === 1)) {
      [...header.cells].forEach((th, k) => {
        const a = th.getBoundingClientRect(), b = first.cells[k].getBoundingClientRect();
        if (Math.abs(a.left - b.left) > 1 || Math.abs(a.right - b.right) > 1) {
          problems.push(`table ${t}: header "${th.textContent}" is not above its column`);
        }
      });
    }
  });
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({ width, images: document.images.length, tables: tables.length, problems });
  document.body.appendChild(out);
});
