// Live figures: re-fetch the panel every 15 s while the tab is visible (server-rendered, charts included);
// the window links (5 min, 1 h, 6 h) fetch the panel for that window in place.
(() => {
  "use strict";
  const PERIOD_MS = 15000;
  async function refresh(url) {
    const panel = document.getElementById("figures");
    if (!panel || (document.hidden && !url)) return;
    try {
      const response = await fetch(url || panel.dataset.refresh, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("figures");
      if (fresh) document.getElementById("figures").replaceWith(fresh);
    } catch (error) {
      // keep the figures on screen; the next tick tries again
    }
  }
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("#figures [data-window]");
    if (!link) return;
    event.preventDefault();
    refresh(link.getAttribute("href"));
  });
  setInterval(() => refresh(), PERIOD_MS);
  document.addEventListener("visibilitychange", () => refresh());
})();
