// Live figures: re-fetch the panel every 15 s while the tab is visible (server-rendered, charts included).
(() => {
  "use strict";
  const PERIOD_MS = 15000;
  async function refresh() {
    const panel = document.getElementById("figures");
    if (!panel || document.hidden) return;
    try {
      const response = await fetch(panel.dataset.refresh, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("figures");
      if (fresh) panel.replaceWith(fresh);
    } catch (error) {
      // keep the figures on screen; the next tick tries again
    }
  }
  setInterval(refresh, PERIOD_MS);
  document.addEventListener("visibilitychange", refresh);
})();
