// Channels and consumers: lists, sorted and filtered in the page.

import { get, seg } from "../api.js";
import { clear, h, link, table } from "../ui.js";
import { channelColumns } from "./connections.js";

function listPage(title, id, path, columns, empty) {
  return async (ctx) => {
    const el = h("div", { id });
    ctx.main.append(h("h1", {}, title), el);
    let tbl = null;
    async function refresh() {
      const rows = await get(path(ctx));
      if (!tbl) {
        tbl = table(columns, rows, { filter: true, empty });
        clear(el, tbl);
      } else tbl.update(rows);
    }
    await refresh();
    return { refresh };
  };
}

export const render = listPage(
  "Channels",
  "channels",
  (ctx) => (ctx.vhost ? `/api/vhosts/${seg(ctx.vhost)}/channels` : "/api/channels"),
  [
    ...channelColumns().slice(0, 1).map((c) => ({
      ...c,
      render: (r) => link(`#/connections/${seg(r.connection_details.name)}`, r.name),
    })),
    ...channelColumns().slice(1),
  ],
  "No channels.",
);

export const renderConsumers = listPage(
  "Consumers",
  "consumers",
  (ctx) => (ctx.vhost ? `/api/consumers/${seg(ctx.vhost)}` : "/api/consumers"),
  [
    { key: "consumer_tag", label: "Consumer tag" },
    {
      key: "queue.name",
      label: "Queue",
      render: (c) => link(`#/queues/${seg(c.queue.vhost)}/${seg(c.queue.name)}`, c.queue.name),
    },
    { key: "queue.vhost", label: "Virtual host" },
    { key: "channel_details.name", label: "Channel" },
    { key: "ack_required", label: "Ack required" },
    { key: "exclusive", label: "Exclusive" },
    { key: "prefetch_count", label: "Prefetch", num: true },
    { key: "activity_status", label: "Activity" },
  ],
  "No consumers.",
);
