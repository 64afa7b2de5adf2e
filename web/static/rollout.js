// Rollout panel: while a rollout runs, re-fetch the panel every 5 s (server-rendered) so the current step,
// the pause left and the latest verdict stay current; stops once no rollout is live.
(() => {
  "use strict";
  const PERIOD_MS = 5000;
  async function refresh() {
    const panel = document.getElementById("rollout");
    if (!panel || !panel.hasAttribute("data-live") || document.hidden) return;
    if (panel.contains(document.activeElement) && document.activeElement !== document.body) return;
    try {
      const response = await fetch(panel.dataset.refresh, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("rollout");
      if (fresh) panel.replaceWith(fresh);
    } catch (error) {
      // keep the panel on screen; the next tick tries again
    }
  }
  setInterval(refresh, PERIOD_MS);
  document.addEventListener("visibilitychange", refresh);
})();
