// The management UI's shell: login, the tabs, routing on the URL's hash, one refresh timer for
// the page on show, the alarms banner. Each page is a module in pages/ exporting
// `render(ctx)`, which fills ctx.main and returns {refresh, destroy}; only the page on show is
// refreshed, and only with the few requests it needs.

import { api, clearCredentials, get, hasCredentials, setCredentials, whenUnauthorised } from "./api.js";
import { setInterval_ } from "./charts.js";
import { clear, h, hideError, showError } from "./ui.js";

const PAGES = {
  overview: () => import("./pages/overview.js"),
  cluster: () => import("./pages/cluster.js"),
  connections: () => import("./pages/connections.js"),
  connection: () => import("./pages/connections.js").then((m) => ({ render: m.renderOne })),
  channels: () => import("./pages/channels.js"),
  consumers: () => import("./pages/channels.js").then((m) => ({ render: m.renderConsumers })),
  exchanges: () => import("./pages/exchanges.js"),
  exchange: () => import("./pages/exchanges.js").then((m) => ({ render: m.renderOne })),
  queues: () => import("./pages/queues.js"),
  queue: () => import("./pages/queues.js").then((m) => ({ render: m.renderOne })),
  admin: () => import("./pages/admin.js"),
};

const session = { user: null, tags: [], vhosts: [] };
let current = null; // {refresh, destroy} of the page on show
let timer = null;
let routeSerial = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter((p) => p !== "").map(decodeURIComponent);
  const [first = "", ...rest] = parts;
  const one = { connections: "connection", exchanges: "exchange", queues: "queue" };
  if (rest.length && one[first]) return { page: one[first], tab: first, params: rest };
  const page = first || "overview";
  return { page: PAGES[page] ? page : "overview", tab: page, params: rest };
}

function vhost() {
  return document.getElementById("vhost-select").value;
}

function ctx(main, params) {
  const tags = session.tags;
  return {
    main,
    params,
    vhost: vhost(),
    vhosts: session.vhosts,
    user: session.user,
    tags,
    isAdmin: tags.includes("administrator"),
    // management and policymaker users may purge and get from queues they have permissions on
    canUseQueues: tags.some((t) => ["administrator", "management", "policymaker"].includes(t)),
    refresh: () => refreshNow(),
  };
}

async function show() {
  const serial = ++routeSerial;
  if (current) {
    current.destroy?.();
    current = null;
  }
  hideError();
  const { page, tab, params } = route();
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === tab);
  const main = clear(document.getElementById("main"), h("p", { class: "loading" }, "Loading…"));
  main.dataset.page = "";
  delete main.dataset.ready;
  try {
    const mod = await PAGES[page]();
    const fresh = clear(document.getElementById("main"));
    const view = await mod.render(ctx(fresh, params));
    if (serial !== routeSerial) {
      view?.destroy?.();
      return;
    }
    current = view || null;
    main.dataset.page = page;
    main.dataset.ready = "1";
  } catch (e) {
    clear(main, h("p", { class: "page-error" }, e.message || String(e)));
    showError(e);
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  const secs = Number(document.getElementById("refresh-select").value);
  if (!secs) return;
  timer = setTimeout(async () => {
    await refreshNow();
    schedule();
  }, secs * 1000);
}

async function refreshNow() {
  await Promise.all([refreshAlarms(), current?.refresh ? current.refresh().catch(showError) : null]);
}

async function refreshAlarms() {
  const el = document.getElementById("alarms");
  try {
    const nodes = await get("/api/nodes");
    const lines = [];
    for (const n of nodes) {
      if (n.mem_alarm) lines.push(`Memory alarm on ${n.name}: publishers are blocked until memory use falls.`);
      if (n.disk_free_alarm) lines.push(`Disk alarm on ${n.name}: free disk space is below the limit; publishers are blocked.`);
      if (n.running === false) lines.push(`Node ${n.name} is not running.`);
    }
    clear(el, lines.map((l) => h("div", {}, l)));
    el.hidden = lines.length === 0;
  } catch (e) {
    if (e.status !== 401) {
      clear(el, h("div", {}, `Cannot read the nodes' alarms: ${e.message}`));
      el.hidden = false;
    }
  }
}

function showLogin(message) {
  clearTimeout(timer);
  if (current) current.destroy?.();
  current = null;
  document.getElementById("top").hidden = true;
  document.getElementById("alarms").hidden = true;
  hideError();
  const main = clear(document.getElementById("main"));
  const frag = document.getElementById("login-template").content.cloneNode(true);
  main.append(frag);
  main.dataset.page = "login";
  const f = main.querySelector("#login");
  f.querySelector(".login-error").textContent = message || "";
  f.username.focus();
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    setCredentials(f.username.value, f.password.value);
    try {
      await start();
    } catch (err) {
      clearCredentials();
      showLogin(err.status === 401 ? `Login refused: ${reasonOf(err)}` : err.message);
    }
  });
}

function reasonOf(err) {
  return err.message.replace(/^\d+ /, "");
}

async function start() {
  const who = await api("GET", "/api/whoami", undefined, { quiet401: true });
  session.user = who.name;
  session.tags = who.tags || [];
  const [vhosts, name, overview] = await Promise.all([
    get("/api/vhosts"),
    get("/api/cluster-name").catch(() => ({ name: "" })),
    get("/api/overview"),
  ]);
  setInterval_(overview.statistics_interval);
  session.vhosts = vhosts.map((v) => v.name);
  const sel = document.getElementById("vhost-select");
  const keep = sessionStorage.getItem("merpati.vhost") || "";
  clear(sel, h("option", { value: "" }, "All"), session.vhosts.map((v) => h("option", { value: v, selected: v === keep }, v)));
  document.getElementById("cluster-name").textContent = name.name || "";
  document.getElementById("who").textContent = `${session.user} (${session.tags.join(", ") || "no tags"})`;
  document.getElementById("top").hidden = false;
  for (const a of document.querySelectorAll("#tabs a[data-tab=admin]")) a.hidden = !session.tags.some((t) => ["administrator", "monitoring", "policymaker"].includes(t));
  refreshAlarms();
  await show();
}

whenUnauthorised((err) => {
  clearCredentials();
  showLogin(`Please log in again: ${reasonOf(err)}`);
});

window.addEventListener("hashchange", () => {
  if (hasCredentials()) show();
});
document.getElementById("refresh-select").addEventListener("change", schedule);
document.getElementById("vhost-select").addEventListener("change", (e) => {
  sessionStorage.setItem("merpati.vhost", e.target.value);
  show();
});
document.getElementById("logout").addEventListener("click", () => {
  clearCredentials();
  showLogin("Logged out.");
});

if (hasCredentials()) {
  start().catch((e) => {
    clearCredentials();
    showLogin(e.status === 401 ? `Login refused: ${reasonOf(e)}` : e.message);
  });
} else {
  showLogin();
}
