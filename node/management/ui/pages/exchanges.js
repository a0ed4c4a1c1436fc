// Exchanges: the list, declaring one; one exchange's bindings (add, remove), publishing a
// message to it, deleting it.

import { del, get, post, put, seg } from "../api.js";
import {
  button,
  checkbox,
  clear,
  field,
  form,
  h,
  input,
  link,
  parseArgs,
  props,
  section,
  select,
  table,
} from "../ui.js";

const exName = (n) => n || "(AMQP default)";
const exPath = (vhost, name) => `/api/exchanges/${seg(vhost)}/${seg(name || "amq.default")}`;

export async function render(ctx) {
  const el = h("div", { id: "exchanges" });
  ctx.main.append(h("h1", {}, "Exchanges"), el);
  let tbl = null;
  const cols = [
    { key: "name", label: "Name", render: (e) => link(`#/exchanges/${seg(e.vhost)}/${seg(e.name || "amq.default")}`, exName(e.name)) },
    { key: "vhost", label: "Virtual host" },
    { key: "type", label: "Type" },
    { key: "durable", label: "Durable" },
    { key: "auto_delete", label: "Auto-delete" },
    { key: "internal", label: "Internal" },
    { key: "policy", label: "Policy" },
  ];
  async function refresh() {
    const rows = await get(ctx.vhost ? `/api/exchanges/${seg(ctx.vhost)}` : "/api/exchanges");
    if (!tbl) {
      tbl = table(cols, rows, { filter: true, rowKey: (e) => `${e.vhost}/${e.name}` });
      clear(el, tbl);
    } else tbl.update(rows);
  }
  await refresh();
  if (ctx.isAdmin) ctx.main.append(section("Add an exchange", declareForm(ctx, refresh)));
  return { refresh };
}

function declareForm(ctx, after) {
  const types = ["direct", "fanout", "topic", "headers", "x-delayed-message"];
  return form(
    [
      field("Virtual host", select("vhost", ctx.vhosts, ctx.vhost || ctx.vhosts[0])),
      field("Name", input("name", { required: true, id: "exchange-name" })),
      field("Type", select("type", types, "direct")),
      field("Durable", checkbox("durable", true)),
      field("Auto-delete", checkbox("auto_delete")),
      field("Internal", checkbox("internal")),
      field("Arguments (key=value, one a line)", h("textarea", { name: "arguments", rows: 2 })),
    ],
    "Add exchange",
    async (v) => {
      await put(exPath(v.vhost, v.name), {
        type: v.type,
        durable: v.durable,
        auto_delete: v.auto_delete,
        internal: v.internal,
        arguments: parseArgs(v.arguments),
      });
    },
    { okText: "Exchange declared", done: after, cls: "declare-exchange" },
  );
}

export async function renderOne(ctx) {
  const [vhost, raw] = ctx.params;
  const name = raw === "amq.default" ? "" : raw;
  const info = h("div", { id: "exchange-info" });
  const bindingsEl = h("div", { id: "exchange-bindings" });
  ctx.main.append(h("h1", {}, "Exchange ", h("code", {}, exName(name)), " in ", h("code", {}, vhost)), info);
  ctx.main.append(section("Bindings from this exchange", bindingsEl));
  if (ctx.isAdmin && name) ctx.main.append(section("Add a binding", bindForm(vhost, name, () => refresh())));
  if (ctx.canUseQueues) ctx.main.append(section("Publish a message", publishForm(vhost, name)));
  if (ctx.isAdmin && name && !name.startsWith("amq."))
    ctx.main.append(
      section(
        "Delete",
        button(
          "Delete this exchange",
          async () => {
            if (!confirm(`Delete exchange ${name}?`)) return;
            await del(exPath(vhost, name));
            location.hash = "#/exchanges";
          },
          { class: "danger", id: "delete-exchange" },
        ),
      ),
    );
  let btbl = null;

  async function refresh() {
    const [ex, bindings] = await Promise.all([get(exPath(vhost, name)), get(`${exPath(vhost, name)}/bindings/source`)]);
    clear(
      info,
      props([
        ["Type", ex.type],
        ["Durable", ex.durable],
        ["Auto-delete", ex.auto_delete],
        ["Internal", ex.internal],
        ["Policy", ex.policy || ""],
        ["Arguments", JSON.stringify(ex.arguments)],
      ]),
    );
    const cols = [
      { key: "destination", label: "To", render: (b) => destLink(b) },
      { key: "destination_type", label: "Kind" },
      { key: "routing_key", label: "Routing key" },
      { key: "arguments", label: "Arguments", render: (b) => JSON.stringify(b.arguments) },
    ];
    if (ctx.isAdmin && name) cols.push({ key: "unbind", label: "", sortable: false, render: (b) => unbindButton(b, refresh) });
    if (!btbl) {
      btbl = table(cols, bindings, { empty: "No bindings." });
      clear(bindingsEl, btbl);
    } else btbl.update(bindings);
  }
  await refresh();
  return { refresh };
}

export function destLink(b) {
  return b.destination_type === "queue"
    ? link(`#/queues/${seg(b.vhost)}/${seg(b.destination)}`, b.destination)
    : link(`#/exchanges/${seg(b.vhost)}/${seg(b.destination)}`, b.destination);
}

export function unbindButton(b, after) {
  if (!b.source) return ""; // the default exchange's bindings are implicit
  const kind = b.destination_type === "queue" ? "q" : "e";
  return button(
    "Unbind",
    async () => {
      await del(`/api/bindings/${seg(b.vhost)}/e/${seg(b.source)}/${kind}/${seg(b.destination)}/${seg(b.properties_key)}`);
      await after();
    },
    { class: "small" },
  );
}

function bindForm(vhost, source, after) {
  return form(
    [
      field("To", select("kind", [["q", "queue"], ["e", "exchange"]], "q")),
      field("Name", input("dest", { required: true })),
      field("Routing key", input("routing_key")),
      field("Arguments (key=value, one a line)", h("textarea", { name: "arguments", rows: 2 })),
    ],
    "Bind",
    async (v) => {
      await post(`/api/bindings/${seg(vhost)}/e/${seg(source)}/${v.kind}/${seg(v.dest)}`, {
        routing_key: v.routing_key,
        arguments: parseArgs(v.arguments),
      });
    },
    { okText: "Binding added", done: after },
  );
}

export function publishForm(vhost, exchange, { routingKey = "" } = {}) {
  const result = h("p", { class: "publish-result", role: "status" });
  const f = form(
    [
      field("Routing key", input("routing_key", { value: routingKey, id: "publish-routing-key" })),
      field("Delivery mode", select("delivery_mode", [["1", "1 - non-persistent"], ["2", "2 - persistent"]], "2")),
      field("Headers (key=value, one a line)", h("textarea", { name: "headers", rows: 2 })),
      field("Properties (key=value: content_type, correlation_id, message_id, reply_to, expiration, priority, type, app_id, user_id)", h("textarea", { name: "properties", rows: 2 })),
      field("Payload", h("textarea", { name: "payload", rows: 4, id: "publish-payload" })),
      field("Payload encoding", select("payload_encoding", [["string", "string (UTF-8)"], ["base64", "base64"]], "string")),
    ],
    "Publish message",
    async (v) => {
      const properties = parseArgs(v.properties);
      properties.delivery_mode = Number(v.delivery_mode);
      const headers = parseArgs(v.headers);
      if (Object.keys(headers).length) properties.headers = headers;
      const r = await post(`${exPath(vhost, exchange)}/publish`, {
        routing_key: v.routing_key,
        properties,
        payload: v.payload,
        payload_encoding: v.payload_encoding,
      });
      result.textContent = r.routed ? "Message published." : "Message published, but it was not routed to any queue.";
      result.className = `publish-result ${r.routed ? "ok" : "bad"}`;
    },
    { cls: "publish" },
  );
  f.append(result);
  return f;
}
