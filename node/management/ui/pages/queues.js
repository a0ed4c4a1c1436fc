// Queues: the list is paginated, filtered and sorted by the node (RabbitMQ's
// /api/queues?page=…), so a page of 10,000 queues costs one page; one queue's details, its rate
// charts, consumers and bindings, getting messages, purge, delete, move to another node.

import { del, get, post, put, seg } from "../api.js";
import { historyQuery, LiveChart } from "../charts.js";
import {
  button,
  checkbox,
  clear,
  field,
  fmtNum,
  fmtRate,
  form,
  h,
  input,
  link,
  parseArgs,
  props,
  section,
  select,
  showError,
  table,
} from "../ui.js";
import { publishForm, unbindButton } from "./exchanges.js";

const qPath = (vhost, name) => `/api/queues/${seg(vhost)}/${seg(name)}`;

// what the list keeps between visits of the page
const listState = { page: 1, pageSize: 100, name: "", regex: false, sort: "", reverse: false };

export async function render(ctx) {
  const el = h("div", { id: "queues" });
  const pager = h("div", { class: "pager", id: "queues-pager" });
  const nameInput = h("input", { type: "search", placeholder: "Filter by name", value: listState.name, class: "filter", id: "queues-filter" });
  const regex = h("input", { type: "checkbox", checked: listState.regex, id: "queues-regex" });
  const sizeSel = select("page_size", ["20", "50", "100", "500"], String(listState.pageSize));
  let typing = null;
  nameInput.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      listState.name = nameInput.value;
      listState.page = 1;
      refresh().catch(showError);
    }, 250);
  });
  regex.addEventListener("change", () => {
    listState.regex = regex.checked;
    listState.page = 1;
    refresh().catch(showError);
  });
  sizeSel.addEventListener("change", () => {
    listState.pageSize = Number(sizeSel.value);
    listState.page = 1;
    refresh().catch(showError);
  });
  ctx.main.append(
    h("h1", {}, "Queues"),
    h("div", { class: "table-tools" }, nameInput, h("label", {}, regex, " Regex"), h("label", {}, "Page size ", sizeSel), pager),
    el,
  );
  const cols = [
    { key: "name", label: "Name", render: (q) => link(`#/queues/${seg(q.vhost)}/${seg(q.name)}`, q.name) },
    { key: "vhost", label: "Virtual host" },
    { key: "type", label: "Type" },
    { key: "node", label: "Leader" },
    { key: "policy", label: "Policy" },
    { key: "consumers", label: "Consumers", num: true },
    { key: "messages_ready", label: "Ready", num: true },
    { key: "messages_unacknowledged", label: "Unacked", num: true },
    { key: "messages", label: "Total", num: true },
    { key: "message_stats.publish_details.rate", label: "Incoming", num: true, render: (q) => fmtRate(q.message_stats?.publish_details?.rate) },
  ];
  let tbl = null;

  async function refresh() {
    const params = new URLSearchParams({ page: String(listState.page), page_size: String(listState.pageSize) });
    if (listState.name) params.set("name", listState.name);
    if (listState.regex) params.set("use_regex", "true");
    if (listState.sort) params.set("sort", listState.sort);
    if (listState.reverse) params.set("sort_reverse", "true");
    const base = ctx.vhost ? `/api/queues/${seg(ctx.vhost)}` : "/api/queues";
    let body;
    try {
      body = await get(`${base}?${params}`);
    } catch (e) {
      if (listState.page > 1 && /page out of range/.test(e.message)) {
        listState.page = 1; // the list shrank under us
        return refresh();
      }
      throw e;
    }
    const rows = body.items;
    const opts = {
      rowKey: (q) => `${q.vhost}/${q.name}`,
      onSort: (key, reverse) => {
        listState.sort = key;
        listState.reverse = reverse;
        listState.page = 1;
        refresh().catch(showError);
      },
      sortKey: listState.sort || null,
      sortReverse: listState.reverse,
      empty: listState.name ? "No queue matches the filter." : "No queues.",
    };
    tbl = table(cols, rows, opts);
    clear(el, tbl);
    clear(
      pager,
      button("‹ Prev", async () => { listState.page--; await refresh(); }, { class: "small", disabled: body.page <= 1, id: "queues-prev" }),
      h("span", { id: "queues-count" }, ` Page ${body.page} of ${body.page_count} · ${fmtNum(body.filtered_count)} of ${fmtNum(body.total_count)} queues `),
      button("Next ›", async () => { listState.page++; await refresh(); }, { class: "small", disabled: body.page >= body.page_count, id: "queues-next" }),
    );
  }
  await refresh();
  if (ctx.isAdmin) ctx.main.append(section("Add a queue", declareForm(ctx, refresh)));
  return { refresh };
}

function declareForm(ctx, after) {
  return form(
    [
      field("Virtual host", select("vhost", ctx.vhosts, ctx.vhost || ctx.vhosts[0])),
      field("Type", select("type", ["classic", "quorum"], "classic")),
      field("Name", input("name", { required: true, id: "queue-name" })),
      field("Durable", checkbox("durable", true)),
      field("Auto-delete", checkbox("auto_delete")),
      field("Arguments (key=value, one a line: x-message-ttl, x-max-length, x-dead-letter-exchange, …)", h("textarea", { name: "arguments", rows: 2 })),
    ],
    "Add queue",
    async (v) => {
      const args = parseArgs(v.arguments);
      if (v.type !== "classic") args["x-queue-type"] = v.type;
      await put(qPath(v.vhost, v.name), { durable: v.durable, auto_delete: v.auto_delete, arguments: args });
    },
    { okText: "Queue declared", done: after, cls: "declare-queue" },
  );
}

export async function renderOne(ctx) {
  const [vhost, name] = ctx.params;
  const info = h("div", { id: "queue-info" });
  const rateEl = h("div", { class: "chart", id: "queue-chart-rates" });
  const depthEl = h("div", { class: "chart", id: "queue-chart-depth" });
  const consumersEl = h("div", { id: "queue-consumers" });
  const bindingsEl = h("div", { id: "queue-bindings" });
  ctx.main.append(
    h("h1", {}, "Queue ", h("code", {}, name), " in ", h("code", {}, vhost)),
    info,
    h("div", { class: "charts" }, section("Incoming messages", rateEl), section("Messages", depthEl)),
    section("Consumers", consumersEl),
    section("Bindings", bindingsEl),
  );
  if (ctx.canUseQueues) ctx.main.append(section("Get messages", getForm(vhost, name, () => refresh())));
  if (ctx.canUseQueues) ctx.main.append(section("Publish a message to this queue", publishForm(vhost, "", { routingKey: name })));
  if (ctx.isAdmin) ctx.main.append(section("Move", await moveForm(vhost, name, () => refresh())));
  if (ctx.canUseQueues || ctx.isAdmin) ctx.main.append(section("Purge and delete", dangerZone(ctx, vhost, name, () => refresh())));
  const rates = new LiveChart(rateEl, "messages / s", [["publish", "publish_details"]], "rate");
  const depth = new LiveChart(depthEl, "messages", [["ready", "messages_ready_details"], ["unacked", "messages_unacknowledged_details"]], "depth");
  let gone = false;

  async function refresh() {
    if (gone) return;
    let q;
    try {
      q = await get(`${qPath(vhost, name)}?${historyQuery()}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      gone = true;
      clear(info, h("p", { class: "notice", id: "queue-gone" }, "This queue does not exist (any more)."), link("#/queues", "Back to queues"));
      return;
    }
    const [consumers, bindings] = await Promise.all([get(`/api/consumers/${seg(vhost)}`), get(`${qPath(vhost, name)}/bindings`)]);
    clear(
      info,
      props([
        ["Type", q.type],
        ["State", q.state],
        ["Leader", q.node],
        q.members && q.type === "quorum" ? ["Replicas", `${q.members.join(", ")} (online: ${q.online.join(", ")})`] : null,
        ["Durable", q.durable],
        ["Auto-delete", q.auto_delete],
        ["Exclusive", q.exclusive],
        ["Arguments", JSON.stringify(q.arguments)],
        ["Policy", q.policy || ""],
        ["Effective policy", JSON.stringify(q.effective_policy_definition || {})],
        ["Messages", h("span", { id: "queue-messages" }, fmtNum(q.messages))],
        ["Ready", h("span", { id: "queue-ready" }, fmtNum(q.messages_ready))],
        ["Unacked", h("span", { id: "queue-unacked" }, fmtNum(q.messages_unacknowledged))],
        ["Consumers", fmtNum(q.consumers)],
        ["Incoming", fmtRate(q.message_stats?.publish_details?.rate)],
      ]),
    );
    rates.update(q.message_stats || {});
    depth.update(q);
    clear(
      consumersEl,
      table(
        [
          { key: "consumer_tag", label: "Consumer tag" },
          { key: "channel_details.name", label: "Channel" },
          { key: "ack_required", label: "Ack required" },
          { key: "prefetch_count", label: "Prefetch", num: true },
        ],
        consumers.filter((c) => c.queue.name === name),
        { empty: "No consumers." },
      ),
    );
    const bcols = [
      { key: "source", label: "From", render: (b) => (b.source ? link(`#/exchanges/${seg(vhost)}/${seg(b.source)}`, b.source) : "(AMQP default)") },
      { key: "routing_key", label: "Routing key" },
      { key: "arguments", label: "Arguments", render: (b) => JSON.stringify(b.arguments) },
    ];
    if (ctx.isAdmin) bcols.push({ key: "unbind", label: "", sortable: false, render: (b) => unbindButton(b, refresh) });
    clear(bindingsEl, table(bcols, bindings, { empty: "No bindings." }), ctx.isAdmin ? bindForm(vhost, name, refresh) : null);
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

function bindForm(vhost, queue, after) {
  return form(
    [
      field("From exchange", input("source", { required: true })),
      field("Routing key", input("routing_key")),
      field("Arguments (key=value, one a line)", h("textarea", { name: "arguments", rows: 1 })),
    ],
    "Bind",
    async (v) => {
      await post(`/api/bindings/${seg(vhost)}/e/${seg(v.source)}/q/${seg(queue)}`, { routing_key: v.routing_key, arguments: parseArgs(v.arguments) });
    },
    { okText: "Binding added", done: after },
  );
}

function getForm(vhost, name, after) {
  const out = h("div", { class: "messages", id: "got-messages" });
  const f = form(
    [
      field(
        "Ack mode",
        select(
          "ackmode",
          [
            ["ack_requeue_true", "Nack message requeue true"],
            ["ack_requeue_false", "Automatic ack"],
            ["reject_requeue_true", "Reject requeue true"],
            ["reject_requeue_false", "Reject requeue false"],
          ],
          "ack_requeue_true",
        ),
      ),
      field("Encoding", select("encoding", [["auto", "Auto string / base64"], ["base64", "base64"]], "auto")),
      field("Messages", input("count", { type: "number", value: "1", min: "1" })),
      field("Truncate at (bytes)", input("truncate", { type: "number", value: "50000", min: "1" })),
    ],
    "Get message(s)",
    async (v) => {
      const msgs = await post(`${qPath(vhost, name)}/get`, {
        count: Number(v.count),
        ackmode: v.ackmode,
        encoding: v.encoding,
        truncate: Number(v.truncate),
      });
      clear(
        out,
        msgs.length
          ? msgs.map((m, i) =>
              h(
                "div",
                { class: "message" },
                h("h3", {}, `Message ${i + 1}`),
                props([
                  ["Exchange", m.exchange || "(AMQP default)"],
                  ["Routing key", m.routing_key],
                  ["Redelivered", m.redelivered],
                  ["Remaining in queue", fmtNum(m.message_count)],
                  ["Properties", JSON.stringify(m.properties)],
                  ["Payload", h("span", {}, `${m.payload_bytes} bytes, encoding: ${m.payload_encoding}`)],
                ]),
                h("pre", { class: "payload" }, m.payload),
              ),
            )
          : h("p", { class: "notice" }, "Queue is empty."),
      );
    },
    { done: after, cls: "get-messages" },
  );
  return h("div", {}, f, out);
}

async function moveForm(vhost, name, after) {
  let nodes = [];
  try {
    nodes = (await get("/api/nodes")).filter((n) => n.running).map((n) => n.name);
  } catch {
    nodes = [];
  }
  return form(
    [field("To node", select("node", nodes, nodes[0]))],
    "Move queue",
    async (v) => {
      const r = await post(`/api/merpati/queues/${seg(vhost)}/${seg(name)}/move`, { node: v.node });
      return r;
    },
    { okText: "Queue moving", done: after, cls: "move-queue" },
  );
}

function dangerZone(ctx, vhost, name, after) {
  return h(
    "div",
    { class: "actions" },
    button(
      "Purge messages",
      async () => {
        if (!confirm(`Purge every ready message of ${name}?`)) return;
        await del(`${qPath(vhost, name)}/contents`);
        await after();
      },
      { class: "danger", id: "purge-queue" },
    ),
    ctx.isAdmin
      ? button(
          "Delete queue",
          async () => {
            if (!confirm(`Delete queue ${name} and its messages?`)) return;
            await del(qPath(vhost, name));
            location.hash = "#/queues";
          },
          { class: "danger", id: "delete-queue" },
        )
      : null,
  );
}
