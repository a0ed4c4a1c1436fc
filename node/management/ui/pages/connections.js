// Connections: the list (sorted and filtered here: a node holds at most a few thousand), one
// connection's details and channels, and closing it.

import { del, get, seg } from "../api.js";
import { button, clear, fmtNum, h, link, props, section, table } from "../ui.js";

const vhostPath = (ctx, what) => (ctx.vhost ? `/api/vhosts/${seg(ctx.vhost)}/${what}` : `/api/${what}`);

export async function render(ctx) {
  const el = h("div", { id: "connections" });
  ctx.main.append(h("h1", {}, "Connections"), el);
  let tbl = null;
  const cols = [
    { key: "name", label: "Name", render: (c) => link(`#/connections/${seg(c.name)}`, c.name) },
    { key: "user", label: "User" },
    { key: "vhost", label: "Virtual host" },
    { key: "protocol", label: "Protocol" },
    { key: "client", label: "Client", text: (c) => clientName(c), render: (c) => clientName(c) },
    { key: "state", label: "State" },
    { key: "channels", label: "Channels", num: true },
    { key: "node", label: "Node" },
  ];
  if (ctx.isAdmin) cols.push({ key: "close", label: "", sortable: false, render: (c) => closeButton(c, refresh) });

  async function refresh() {
    const rows = await get(vhostPath(ctx, "connections"));
    if (!tbl) {
      tbl = table(cols, rows, { filter: true, rowKey: (c) => c.name, empty: "No connections." });
      clear(el, tbl);
    } else tbl.update(rows);
  }
  await refresh();
  return { refresh };
}

function clientName(c) {
  const p = c.client_properties || {};
  return [p.product, p.version].filter(Boolean).join(" ") || p.container_id || "";
}

function closeButton(c, after) {
  return button(
    "Close",
    async () => {
      if (!confirm(`Close connection ${c.name}?`)) return;
      await del(`/api/connections/${seg(c.name)}`);
      await after();
    },
    { class: "small danger" },
  );
}

export async function renderOne(ctx) {
  const name = ctx.params[0];
  const info = h("div", { id: "connection-info" });
  const chans = h("div", { id: "connection-channels" });
  ctx.main.append(h("h1", {}, "Connection ", h("code", {}, name)), info, section("Channels", chans));
  let gone = false;

  async function refresh() {
    if (gone) return;
    let c;
    try {
      c = await get(`/api/connections/${seg(name)}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      gone = true;
      clear(info, h("p", { class: "notice", id: "connection-gone" }, "This connection is closed."), link("#/connections", "Back to connections"));
      clear(chans);
      return;
    }
    const channels = await get(`/api/connections/${seg(name)}/channels`);
    clear(
      info,
      props([
        ["User", c.user],
        ["Virtual host", c.vhost],
        ["Protocol", c.protocol],
        ["State", c.state],
        ["Client", clientName(c)],
        ["Peer", `${c.peer_host}:${c.peer_port}`],
        ["Heartbeat", `${c.timeout} s`],
        ["Frame max", fmtNum(c.frame_max)],
        ["Channel max", fmtNum(c.channel_max)],
        ["Node", c.node],
        ["Connected", new Date(c.connected_at).toLocaleString()],
      ]),
      ctx.isAdmin || c.user === ctx.user
        ? h(
            "div",
            { class: "actions" },
            button(
              "Close this connection",
              async () => {
                if (!confirm(`Close connection ${name}?`)) return;
                await del(`/api/connections/${seg(name)}`);
                await refresh();
              },
              { class: "danger", id: "close-connection" },
            ),
          )
        : null,
    );
    clear(chans, table(channelColumns(), channels, { empty: "No channels." }));
  }
  await refresh();
  return { refresh };
}

export function channelColumns() {
  return [
    { key: "name", label: "Channel" },
    { key: "user", label: "User" },
    { key: "vhost", label: "Virtual host" },
    { key: "state", label: "State" },
    { key: "confirm", label: "Confirm" },
    { key: "prefetch_count", label: "Prefetch", num: true },
    { key: "consumer_count", label: "Consumers", num: true },
    { key: "messages_unacknowledged", label: "Unacked", num: true },
    { key: "messages_unconfirmed", label: "Unconfirmed", num: true },
  ];
}
