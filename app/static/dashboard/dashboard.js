// The admins' dashboard: reads the JSON API with the bearer token kept in sessionStorage
// (never a cookie) and draws it with Chart.js. Every figure a chart shows is also written
// as text: the tables next to each chart, with the numbers in data attributes.
"use strict";

(() => {
  const TOKEN_KEY = "marketplace.dashboard.token";
  const STATUSES = [
    "delivered",
    "sent",
    "pending",
    "sending",
    "bounced",
    "complained",
    "suppressed",
    "failed",
    "unknown",
  ];
  const COLOURS = {
    views: "#3366cc",
    anonymous: "#8fa8d8",
    registered: "#1f3f80",
    sent: "#2e8540",
    pending: "#c7a500",
    sending: "#6f6f6f",
    failed: "#c0392b",
    unknown: "#8e44ad",
    delivered: "#1b5e20",
    bounced: "#e67e22",
    complained: "#d35400",
    suppressed: "#95a5a6",
  };
  const LIST_SIZE = 20;
  const $ = (id) => document.getElementById(id);
  const charts = {};

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The API's error shape: {code, status, message, errors: {location: {field: [text]}}}.
  function describe(body, status) {
    if (!body || typeof body !== "object") return `The service answered ${status}.`;
    const parts = [];
    for (const fields of Object.values(body.errors || {})) {
      for (const [field, texts] of Object.entries(fields || {})) {
        parts.push(`${field}: ${[].concat(texts).join(" ")}`);
      }
    }
    return parts.length ? parts.join("; ") : body.message || `The service answered ${status}.`;
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, {
      ...options,
      headers,
      credentials: "omit",
      cache: "no-store",
    });
    const body = await response.json().catch(() => null);
    if (response.status === 401 && token) {
      showLogin("Your session has ended: log in again.");
    }
    if (!response.ok) throw new ApiError(response.status, describe(body, response.status));
    return { body, headers: response.headers };
  }

  // ------------------------------------------------------------ log in / out

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    document.body.dataset.state = "login";
  }

  async function logIn(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const button = event.target.querySelector("button");
    button.disabled = true;
    try {
      const { body } = await api("/users/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ email: $("email").value, password: $("password").value }),
      });
      sessionStorage.setItem(TOKEN_KEY, body.access_token);
      $("password").value = "";
      showBoard();
    } catch (error) {
      $("login-error").textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  // Log out ends the token on the server too (POST /users/logout), then forgets it here:
  // a copy of it (another tab, a proxy's log) no longer works either.
  async function logOut() {
    const button = $("logout");
    button.disabled = true;
    let message = "Logged out.";
    try {
      await api("/users/logout", { method: "POST" });
    } catch (error) {
      // 401: the token had already stopped working, which is what log out wants.
      if (error.status !== 401) {
        message = `Logged out here, but the service could not end the session (${error.message}): it ends when the token expires.`;
      }
    } finally {
      button.disabled = false;
    }
    showLogin(message);
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
    refresh();
  }

  // ------------------------------------------------------------ drawing

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    return td;
  }

  function fillTable(id, rows, columns, data) {
    const table = $(id);
    const labels = [...table.tHead.rows[0].cells].map((th) => th.textContent);
    table.tBodies[0].replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        for (const [key, value] of Object.entries(data(row))) tr.dataset[key] = value;
        tr.append(
          ...columns.map((column, n) => {
            const td = cell(row[column]);
            td.dataset.label = labels[n];
            return td;
          }),
        );
        return tr;
      }),
    );
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart($(id), config);
  }

  function barOptions(stacked, horizontal) {
    return {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      indexAxis: horizontal ? "y" : "x",
      scales: {
        x: { stacked, beginAtZero: true, ticks: { precision: 0 } },
        y: { stacked, beginAtZero: true, ticks: { precision: 0 } },
      },
      plugins: { legend: { position: "bottom" } },
    };
  }

  function viewsPerDay(stats, canvas, table, figures) {
    const days = stats.by_day;
    draw(canvas, {
      type: "bar",
      data: {
        labels: days.map((d) => d.date),
        datasets: [
          {
            label: "Anonymous",
            data: days.map((d) => d.anonymous_views),
            backgroundColor: COLOURS.anonymous,
          },
          {
            label: "Registered",
            data: days.map((d) => d.registered_views),
            backgroundColor: COLOURS.registered,
          },
        ],
      },
      options: barOptions(true, false),
    });
    fillTable(table, days, ["date", "views", "anonymous_views", "registered_views"], (d) => ({
      date: d.date,
      views: d.views,
      anonymous: d.anonymous_views,
      registered: d.registered_views,
    }));
    const box = $(figures);
    box.dataset.views = stats.views;
    box.dataset.anonymous = stats.anonymous_views;
    box.dataset.registered = stats.registered_views;
    box.textContent =
      `${stats.views} views from ${stats.from} to ${stats.to}: ` +
      `${stats.anonymous_views} anonymous, ${stats.registered_views} registered.`;
  }

  // ------------------------------------------------------------ the sections

  function range() {
    return new URLSearchParams({ from: $("from").value, to: $("to").value });
  }

  async function loadCatalog() {
    const { body } = await api(`/api/stats/views?${range()}`);
    viewsPerDay(body, "catalog-chart", "catalog-table", "catalog-figures");
  }

  async function loadTop() {
    const query = range();
    query.set("limit", "10");
    const { body } = await api(`/api/stats/products?${query}`);
    draw("top-chart", {
      type: "bar",
      data: {
        labels: body.map((p) => p.sku),
        datasets: [
          {
            label: "Anonymous",
            data: body.map((p) => p.anonymous_views),
            backgroundColor: COLOURS.anonymous,
          },
          {
            label: "Registered",
            data: body.map((p) => p.registered_views),
            backgroundColor: COLOURS.registered,
          },
        ],
      },
      options: barOptions(true, true),
    });
    fillTable(
      "top-table",
      body,
      ["sku", "name", "anonymous_views", "registered_views", "views"],
      (p) => ({
        sku: p.sku,
        views: p.views,
        anonymous: p.anonymous_views,
        registered: p.registered_views,
      }),
    );
    return body;
  }

  async function loadProduct(top) {
    const sku = $("sku").value.trim() || (top[0] && top[0].sku) || "";
    const section = $("product");
    if (!sku) {
      $("product-name").textContent = "";
      $("product-figures").textContent = "Choose a product (no views in this range yet).";
      section.dataset.sku = "";
      return;
    }
    $("sku").value = sku;
    const { body } = await api(`/api/products/${encodeURIComponent(sku)}/stats?${range()}`);
    section.dataset.sku = body.sku;
    $("product-name").textContent = `— ${body.sku} (${body.name})`;
    viewsPerDay(body, "product-chart", "product-table", "product-figures");
  }

  // A product's changes, newest first, each with a Revert button (the values right after it).
  function whatChanged(changes) {
    return Object.entries(changes || {})
      .map(([field, c]) => {
        if (c && "changed" in c) return `${field} changed`;
        if (c.old == null) return `${field}: ${c.new}`;
        if (c.new == null) return `${field}: ${c.old}`;
        return `${field}: ${c.old} \u2192 ${c.new}`;
      })
      .join("; ");
  }

  async function loadHistory() {
    const sku = $("product").dataset.sku || "";
    $("history").dataset.sku = sku;
    $("history-name").textContent = sku ? `— ${sku}` : "";
    if (!sku) {
      $("history-table").tBodies[0].replaceChildren();
      $("history-figures").textContent = "Choose a product.";
      return;
    }
    const { body, headers } = await api(
      `/api/products/${encodeURIComponent(sku)}/history?page_size=${LIST_SIZE}`,
    );
    const pages = JSON.parse(headers.get("X-Pagination") || "{}");
    $("history-figures").textContent =
      `${pages.total ?? body.length} change(s)` +
      (pages.total > body.length ? `, the newest ${body.length}.` : ".");
    $("history-table").tBodies[0].replaceChildren(
      ...body.map((event) => {
        const tr = document.createElement("tr");
        tr.dataset.id = event.id;
        tr.dataset.type = event.type;
        if (event.reverted_to) tr.dataset.revertedTo = event.reverted_to;
        const by = event.actor ? event.actor.email : "command line";
        const when = event.at.slice(0, 19).replace("T", " ");
        const cells = [event.id, when, by, event.type.replace("product.", ""), whatChanged(event.changes)];
        tr.append(...cells.map(cell));
        const action = document.createElement("td");
        if (event.type !== "product.deleted") {
          const button = document.createElement("button");
          button.type = "button";
          button.dataset.revert = event.id;
          button.textContent = "Revert";
          button.title = `Set the product back to its values right after change ${event.id}`;
          action.append(button);
        }
        tr.append(action);
        return tr;
      }),
    );
  }

  async function revert(event) {
    const button = event.target.closest("button[data-revert]");
    if (!button) return;
    const sku = $("history").dataset.sku;
    button.disabled = true;
    await section("history", async () => {
      const { body } = await api(`/api/products/${encodeURIComponent(sku)}/revert`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ to: Number(button.dataset.revert) }),
      });
      await loadHistory();
      $("history-figures").textContent =
        `Reverted to change ${button.dataset.revert}: price ${body.price}, ` +
        `quantity ${body.quantity}. ` + $("history-figures").textContent;
    });
  }

  async function loadEmails() {
    const days = $("days").value;
    const { body } = await api(`/api/notifications/summary?days=${encodeURIComponent(days)}`);
    const counts = $("email-counts");
    counts.replaceChildren(
      ...STATUSES.map((status) => {
        const li = document.createElement("li");
        li.dataset.status = status;
        li.dataset.count = body[status];
        li.className = status;
        li.textContent = `${status}: ${body[status]}`;
        return li;
      }),
    );
    draw("email-chart", {
      type: "bar",
      data: {
        labels: body.by_day.map((d) => d.date),
        datasets: STATUSES.map((status) => ({
          label: status,
          data: body.by_day.map((d) => d[status]),
          backgroundColor: COLOURS[status],
        })),
      },
      options: barOptions(true, false),
    });
    fillTable("email-table", body.by_day, ["date", ...STATUSES], (d) => ({
      date: d.date,
      ...Object.fromEntries(STATUSES.map((s) => [s, d[s]])),
    }));
    await Promise.all(["failed", "unknown"].map(listEmails));
  }

  async function listEmails(status) {
    const { body, headers } = await api(
      `/api/notifications?status=${status}&page_size=${LIST_SIZE}`,
    );
    const pages = JSON.parse(headers.get("X-Pagination") || "{}");
    const total = pages.total ?? body.length;
    const label = $(`${status}-total`);
    label.dataset.total = total;
    label.textContent = total > body.length ? `(${total}, newest ${body.length})` : `(${total})`;
    const rows = body.map((n) => ({ ...n, created_at: (n.created_at || "").slice(0, 16).replace("T", " ") }));
    fillTable(
      `${status}-table`,
      rows,
      ["id", "created_at", "recipient", "sku", "event", "attempts", "last_error"],
      (n) => ({ id: n.id }),
    );
  }

  async function section(id, load) {
    const box = $(id);
    box.dataset.state = "loading";
    box.querySelector(".error").textContent = "";
    try {
      const result = await load();
      box.dataset.state = "ready";
      return result;
    } catch (error) {
      box.dataset.state = "error";
      box.querySelector(".error").textContent = error.message;
      return [];
    }
  }

  async function refresh(event) {
    if (event) event.preventDefault();
    document.body.dataset.state = "loading";
    const products = api("/api/products?sort=name&page_size=100")
      .then(({ body }) => {
        $("skus").replaceChildren(
          ...body.map((p) => {
            const option = document.createElement("option");
            option.value = p.sku;
            option.label = p.name;
            return option;
          }),
        );
      })
      .catch(() => {});
    const top = section("top", loadTop);
    await Promise.all([
      section("catalog", loadCatalog),
      top
        .then((items) => section("product", () => loadProduct(items)))
        .then(() => section("history", loadHistory)),
      section("emails", loadEmails),
      products,
    ]);
    if (!sessionStorage.getItem(TOKEN_KEY)) return; // logged out meanwhile (401)
    document.body.dataset.state = "ready";
  }

  function isoDay(date) {
    return date.toISOString().slice(0, 10); // UTC, as the statistics count days
  }

  function start() {
    const today = new Date();
    $("to").value = isoDay(today);
    $("from").value = isoDay(new Date(today.getTime() - 29 * 86400000));
    $("login-form").addEventListener("submit", logIn);
    $("range-form").addEventListener("submit", refresh);
    $("history-table").addEventListener("click", revert);
    $("logout").addEventListener("click", logOut);
    if (sessionStorage.getItem(TOKEN_KEY)) showBoard();
    else showLogin();
  }

  start();
})();
