// Traffic panel: keeps slider and number field together, balances the split, and asks the
// server who would move (the server runs the same allocation the write path runs).
(() => {
  "use strict";
  const form = document.querySelector("form[data-traffic]");
  if (!form) return;

  const rows = Array.from(form.querySelectorAll("[data-split-row]")).map((tr) => ({
    version: tr.dataset.version,
    slider: tr.querySelector("[data-slider]"),
    number: tr.querySelector("[data-number]"),
  }));
  const total = form.querySelector("[data-total]");
  const movement = form.querySelector("[data-movement]");
  const defaultSelect = form.querySelector("[data-default-select]");
  const WEIGHT = /^\d{1,3}(\.\d{1,2})?$/;
  // Where a slider stops (a click, a drag, arrow keys): the usual canary steps and their complements.
  // The number field keeps any value to 0.01.
  const STOPS = [0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100];
  const nearestStop = (value) => STOPS.reduce((best, stop) => (Math.abs(stop - value) < Math.abs(best - value) ? stop : best));
  const stepFrom = (value, direction) => {
    const ahead = direction > 0 ? STOPS.filter((s) => s > value + 1e-9) : STOPS.filter((s) => s < value - 1e-9).reverse();
    return ahead.length ? ahead[0] : value;
  };

  // Weights in hundredths of a percent (= buckets), so sums stay exact.
  const cents = (text) => {
    const value = String(text).trim();
    if (!WEIGHT.test(value)) return null;
    const [whole, frac = ""] = value.split(".");
    const result = Number(whole) * 100 + Number((frac + "00").slice(0, 2));
    return result <= 10000 ? result : null;
  };
  const show = (c) => {
    const text = (c / 100).toFixed(2);
    return text.replace(/\.?0+$/, "") || "0";
  };

  function setSlider(row, text) {
    row.slider.value = text;
    row.slider.setAttribute("aria-valuetext", `${text}% of users`);
  }

  function set(row, c) {
    row.number.value = show(c);
    setSlider(row, show(c));
  }

  // Two versions: moving one moves the other. More: the default version takes up the rest.
  function partnerOf(row) {
    if (rows.length === 2) return rows.find((r) => r !== row);
    const fallback = defaultSelect ? defaultSelect.value : form.dataset.default;
    return rows.find((r) => r.version === fallback && r !== row) || null;
  }

  function balance(row) {
    const partner = partnerOf(row);
    if (!partner) return;
    let others = 0;
    for (const r of rows) {
      if (r === partner) continue;
      const c = cents(r.number.value);
      if (c === null) return; // leave a field that does not parse alone; the server says what is wrong
      others += c;
    }
    if (others <= 10000) set(partner, 10000 - others);
  }

  function refreshTotal() {
    let sum = 0;
    let valid = true;
    for (const r of rows) {
      const c = cents(r.number.value);
      if (c === null) valid = false;
      else sum += c;
    }
    total.textContent = valid ? show(sum) : "?";
    total.classList.toggle("bad", !valid || sum !== 10000);
  }

  let timer = null;
  let asked = 0;
  function schedulePreview() {
    clearTimeout(timer);
    timer = setTimeout(askPreview, 150);
  }

  async function askPreview() {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (key === "csrf" || key === "reason") continue;
      params.append(key, value);
    }
    const mine = ++asked;
    let answer;
    try {
      const response = await fetch(form.dataset.preview + "?" + params, { headers: { Accept: "application/json" } });
      answer = await response.json();
    } catch (error) {
      return; // offline for a moment: the server still checks everything on apply
    }
    if (mine !== asked) return;
    movement.replaceChildren();
    if (answer.ok) {
      const lead = document.createElement("strong");
      lead.textContent = answer.moved_percent === "0" ? "No change for users: " : "Before you apply: ";
      movement.append(lead, answer.sentences.join("; ") + ".");
      if (answer.shadow) {
        const shadow = document.createElement("div");
        shadow.dataset.shadowPreview = "";
        shadow.textContent = answer.shadow.charAt(0).toUpperCase() + answer.shadow.slice(1) + ".";
        movement.append(shadow);
      }
      if (answer.warnings && answer.warnings.length) {
        const list = document.createElement("ul");
        list.className = "warn-list";
        list.dataset.warnings = "";
        for (const warning of answer.warnings) {
          const li = document.createElement("li");
          li.textContent = warning;
          list.append(li);
        }
        movement.append(list);
      }
      if (answer.stale) {
        const stale = document.createElement("div");
        stale.className = "warn-text";
        stale.textContent = `Revision ${answer.live_revision} went live since this page loaded; applying will be refused. Reload to edit the live policy.`;
        movement.append(stale);
      }
    } else {
      const list = document.createElement("ul");
      list.className = "field-error";
      for (const [field, messages] of Object.entries(answer.errors || {})) {
        for (const message of messages) {
          const li = document.createElement("li");
          const label = field.startsWith("weight:") ? field.slice(7) + ": " : field.startsWith("shadow_") ? "shadow " + field.slice(7) + ": " : "";
          li.textContent = label + message;
          list.append(li);
        }
      }
      movement.append(list);
    }
  }

  function slideTo(row, value) {
    const c = Math.round(value * 100);
    row.number.value = show(c);
    setSlider(row, show(c));
    balance(row);
    refreshTotal();
    schedulePreview();
  }

  const KEYS = { ArrowUp: 1, ArrowRight: 1, PageUp: 1, ArrowDown: -1, ArrowLeft: -1, PageDown: -1 };
  for (const row of rows) {
    row.slider.addEventListener("input", () => slideTo(row, nearestStop(Number(row.slider.value))));
    row.slider.addEventListener("keydown", (event) => {
      let target = null;
      if (event.key in KEYS) target = stepFrom(Number(row.slider.value), KEYS[event.key]);
      else if (event.key === "Home") target = 0;
      else if (event.key === "End") target = 100;
      if (target === null) return;
      event.preventDefault(); // the browser's own step would be 1% of the range, or 0.01
      slideTo(row, target);
    });
    row.number.addEventListener("input", () => {
      const c = cents(row.number.value);
      if (c !== null) setSlider(row, show(c));
      if (c !== null) balance(row);
      refreshTotal();
      schedulePreview();
    });
  }
  if (defaultSelect) defaultSelect.addEventListener("change", schedulePreview);
  for (const shadowField of form.querySelectorAll("[data-shadow-version], [data-shadow-percent]")) {
    shadowField.addEventListener("input", schedulePreview);
  }
  refreshTotal();
})();
