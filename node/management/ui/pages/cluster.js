// Cluster: every member with its state, the Raft leader, the queues each leads, memory and store
// size; drain, undrain and rebalance for administrators.

import { get, post, seg } from "../api.js";
import { button, clear, fmtBytes, fmtDuration, fmtRate, h, section, table } from "../ui.js";
import { alarmText } from "./overview.js";

export async function render(ctx) {
  const summary = h("div", { id: "cluster-summary" });
  const nodesEl = h("div", { id: "cluster-nodes" });
  const result = h("pre", { class: "result", id: "cluster-result", hidden: true });
  const actions = ctx.isAdmin
    ? h(
        "div",
        { class: "actions" },
        button(
          "Rebalance queue leaders",
          async () => {
            const r = await post("/api/merpati/cluster/rebalance");
            report(`${r.moves.length} queue leader(s) moved`, r.moves);
            await refresh();
          },
          { id: "rebalance" },
        ),
      )
    : null;
  ctx.main.append(h("h1", {}, "Cluster"), summary, section("Nodes", nodesEl, actions, result));
  let tbl = null;

  function report(title, detail) {
    result.hidden = false;
    result.textContent = `${title}\n${JSON.stringify(detail, null, 2)}`;
  }

  async function drain(name, undo) {
    const verb = undo ? "undrain" : "drain";
    if (!undo && !confirm(`Drain ${name}? Its queues and their messages move to the other nodes.`)) return;
    const r = await post(`/api/merpati/cluster/nodes/${seg(name)}/${verb}`, undo ? {} : { timeout: 60 });
    report(`${verb} ${name}`, r);
    await refresh();
  }

  async function refresh() {
    const [ov, nodes] = await Promise.all([get("/api/overview"), get("/api/nodes")]);
    const c = ov.merpati_cluster || {};
    const draining = new Set(c.draining || []);
    clear(
      summary,
      h(
        "p",
        {},
        `${(c.running || []).length} of ${Object.keys(c.members || {}).length} nodes running. Raft leader: `,
        h("strong", { id: "raft-leader" }, c.raft_leader || "none (no majority)"),
        c.raft_term !== undefined && c.raft_term !== null ? `, term ${c.raft_term}, commit index ${c.commit_index}.` : ".",
      ),
    );
    const rows = nodes.map((n) => ({
      ...n,
      state: !n.running ? "down" : draining.has(n.name) ? "draining" : "running",
      raft: c.raft_leader === n.name ? "leader" : "follower",
      leaders: (c.queue_leaders || {})[n.name] ?? "",
    }));
    const cols = [
      { key: "name", label: "Node" },
      { key: "state", label: "State", render: (n) => h("span", { class: n.state === "running" ? "ok" : "bad" }, n.state) },
      { key: "raft", label: "Raft" },
      { key: "leaders", label: "Queue leaders", num: true },
      { key: "mem_used", label: "Memory", render: (n) => (n.mem_used !== undefined ? `${fmtBytes(n.mem_used)} / ${fmtBytes(n.mem_limit)}` : "on its own page") },
      { key: "store_size", label: "Store", render: (n) => fmtBytes(n.store_size) },
      { key: "disk_free", label: "Disk free", render: (n) => fmtBytes(n.disk_free) },
      { key: "uptime", label: "Uptime", render: (n) => (n.uptime ? fmtDuration(n.uptime) : "") },
      { key: "rate", label: "Publish", render: (n) => (n.message_stats ? fmtRate(n.message_stats.publish_details?.rate) : "") },
      { key: "alarms", label: "Alarms", render: alarmText },
    ];
    if (ctx.isAdmin)
      cols.push({
        key: "actions",
        label: "",
        sortable: false,
        render: (n) =>
          // From the row, not the refresh's closure: the table keeps its first columns.
          n.state === "draining"
            ? button("Undrain", () => drain(n.name, true), { class: "small" })
            : button("Drain", () => drain(n.name, false), { class: "small danger" }),
      });
    if (!tbl) {
      tbl = table(cols, rows, { rowKey: (n) => n.name });
      clear(nodesEl, tbl);
    } else tbl.update(rows);
  }

  await refresh();
  return { refresh };
}
