// The dashboard's webhook card: each endpoint's health (GET /api/webhooks), drawn whenever
// the board is drawn. It reads the token the page keeps in sessionStorage (never a cookie)
// and writes every figure as text, with the numbers in data attributes.
"use strict";

(() => {
  const TOKEN_KEY = "marketplace.dashboard.token";
  const $ = (id) => document.getElementById(id);

  function age(seconds) {
    if (!seconds) return "";
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} days`;
  }

  function when(iso) {
    return iso ? iso.slice(0, 16).replace("T", " ") : "never";
  }

  function cell(text, label) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    td.dataset.label = label;
    return td;
  }

  function row(hook) {
    const health = hook.health;
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, {
      id: hook.id,
      state: health.state,
      pending: health.pending,
      retrying: health.retrying,
      failed: health.failed,
      oldest: health.oldest_pending_seconds,
    });
    const why =
      health.disabled_reason ||
      (health.state === "failing" ? `failing since ${when(health.failing_since)}` : "");
    tr.append(
      cell(hook.id, "Id"),
      cell(hook.url, "URL"),
      cell(health.state, "State"),
      cell(health.pending, "Pending"),
      cell(health.retrying, "Retrying"),
      cell(health.failed, "Failed"),
      cell(age(health.oldest_pending_seconds), "Oldest waiting"),
      cell(when(health.last_success_at), "Last success"),
      cell(why, "Why"),
    );
    return tr;
  }

  async function load() {
    const card = $("webhooks");
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    card.dataset.state = "loading";
    card.querySelector(".error").textContent = "";
    try {
      const response = await fetch("/api/webhooks", {
        headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
        credentials: "omit",
        cache: "no-store",
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        throw new Error((body && body.message) || `The service answered ${response.status}.`);
      }
      $("webhook-table").tBodies[0].replaceChildren(...body.map(row));
      const states = { healthy: 0, failing: 0, disabled: 0 };
      for (const hook of body) states[hook.health.state] += 1;
      const figures = $("webhook-figures");
      Object.assign(figures.dataset, { endpoints: body.length, ...states });
      figures.textContent = body.length
        ? `${body.length} endpoint(s): ${states.healthy} healthy, ${states.failing} failing, ` +
          `${states.disabled} disabled.`
        : "No webhook endpoints (POST /api/webhooks adds one).";
      card.dataset.state = "ready";
    } catch (error) {
      card.dataset.state = "error";
      card.querySelector(".error").textContent = error.message;
    }
  }

  // The board is drawn (after a login, a reload or the Show button) when the page marks
  // its body "loading": the card is drawn with it. The page's own script runs first, and
  // may have begun already.
  const drawing = () => ["loading", "ready"].includes(document.body.dataset.state);
  new MutationObserver(() => {
    if (document.body.dataset.state === "loading") load();
  }).observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
  if (drawing()) load();
})();
