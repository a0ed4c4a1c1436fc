// Overview: the totals, live charts of the message rates and queued messages (one request per
// refresh: /api/overview with its history), and the nodes.

import { get } from "../api.js";
import { DEPTH_KEYS, historyQuery, LiveChart, RATE_KEYS } from "../charts.js";
import { clear, fmtBytes, fmtNum, fmtRate, h, section, table } from "../ui.js";

export async function render(ctx) {
  const totals = h("div", { class: "totals", id: "totals" });
  const rateEl = h("div", { class: "chart", id: "chart-rates" });
  const depthEl = h("div", { class: "chart", id: "chart-depth" });
  const nodesEl = h("div", { id: "nodes" });
  // Whose rates the chart shows: the whole cluster (the default) or one node.
  const scope = h("select", { id: "rates-scope", onchange: () => refresh().catch(() => {}) }, h("option", { value: "" }, "Cluster"));
  ctx.main.append(
    h("h1", {}, "Overview"),
    totals,
    h(
      "div",
      { class: "charts" },
      section("Message rates", h("label", { class: "scope" }, "Of ", scope), rateEl),
      section("Queued messages", depthEl),
    ),
    section("Nodes", nodesEl),
  );
  const rates = new LiveChart(rateEl, "messages / s", RATE_KEYS, "rate");
  const depth = new LiveChart(depthEl, "messages", DEPTH_KEYS, "depth");
  let nodesTable = null;

  async function refresh() {
    const [ov, nodes] = await Promise.all([get(`/api/overview?${historyQuery()}`), get(`/api/nodes?${historyQuery()}`)]);
    const names = nodes.map((n) => n.name);
    if ([...scope.options].slice(1).map((o) => o.value).join() !== names.join()) {
      const keep = scope.value;
      clear(scope, h("option", { value: "" }, "Cluster"), names.map((n) => h("option", { value: n, selected: n === keep }, n)));
    }
    const o = ov.object_totals || {};
    const q = ov.queue_totals || {};
    const m = ov.message_stats || {};
    const card = (label, value, id, sub) =>
      h("div", { class: "card", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label), sub ? h("div", { class: "sub" }, sub) : null);
    clear(
      totals,
      card("Connections", fmtNum(o.connections), "total-connections"),
      card("Channels", fmtNum(o.channels), "total-channels"),
      card("Consumers", fmtNum(o.consumers), "total-consumers"),
      card("Exchanges", fmtNum(o.exchanges), "total-exchanges"),
      card("Queues", fmtNum(o.queues), "total-queues"),
      card("Ready", fmtNum(q.messages_ready), "total-ready"),
      card("Unacked", fmtNum(q.messages_unacknowledged), "total-unacked"),
      card("Publish", fmtRate(m.publish_details?.rate), "rate-publish"),
      card("Deliver", fmtRate(m.deliver_get_details?.rate), "rate-deliver"),
    );
    const picked = scope.value && nodes.find((n) => n.name === scope.value);
    rates.update(picked ? picked.message_stats || {} : m);
    depth.update(q);
    const cluster = ov.merpati_cluster || {};
    const rows = nodes.map((n) => ({ ...n, raft_leader: cluster.raft_leader === n.name, leaders: cluster.queue_leaders?.[n.name] }));
    const cols = [
      { key: "name", label: "Node" },
      { key: "running", label: "Running", render: (n) => h("span", { class: n.running ? "ok" : "bad" }, n.running ? "running" : "down") },
      { key: "raft_leader", label: "Raft leader", render: (n) => (n.raft_leader ? "leader" : "") },
      { key: "leaders", label: "Queue leaders", num: true },
      { key: "message_stats.publish_details.rate", label: "Publish", num: true, render: (n) => fmtRate(n.message_stats?.publish_details?.rate) },
      { key: "message_stats.deliver_get_details.rate", label: "Deliver", num: true, render: (n) => fmtRate(n.message_stats?.deliver_get_details?.rate) },
      { key: "mem_used", label: "Memory", render: (n) => (n.mem_used ? `${fmtBytes(n.mem_used)} of ${fmtBytes(n.mem_limit)}` : "") },
      { key: "disk_free", label: "Disk free", render: (n) => (n.disk_free !== undefined ? fmtBytes(n.disk_free) : "") },
      { key: "alarms", label: "Alarms", render: (n) => alarmText(n) },
    ];
    if (!nodesTable) {
      nodesTable = table(cols, rows, { rowKey: (n) => n.name });
      clear(nodesEl, nodesTable);
    } else nodesTable.update(rows);
  }

  await refresh();
  return {
    refresh,
    destroy() {
      rates.destroy();
      depth.destroy();
    },
  };
}

export function alarmText(n) {
  const a = [];
  if (n.mem_alarm) a.push("memory");
  if (n.disk_free_alarm) a.push("disk");
  return a.length ? h("span", { class: "bad" }, a.join(", ")) : "none";
}
