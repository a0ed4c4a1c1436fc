// Admin: users, virtual hosts, permissions, policies, limits; definitions export and import.
// Everyone who may read these sees the lists; only administrators get the forms and buttons
// (policymakers manage policies of their vhosts, as the API allows).

import { del, get, post, put, seg } from "../api.js";
import { button, clear, field, form, h, input, parseArgs, section, select, table } from "../ui.js";

export async function render(ctx) {
  const admin = ctx.isAdmin;
  const policyWriter = admin || ctx.tags.includes("policymaker");
  const parts = {
    users: h("div", { id: "admin-users" }),
    vhosts: h("div", { id: "admin-vhosts" }),
    permissions: h("div", { id: "admin-permissions" }),
    policies: h("div", { id: "admin-policies" }),
    limits: h("div", { id: "admin-limits" }),
  };
  const nav = h(
    "nav",
    { class: "subnav" },
    ["users", "vhosts", "permissions", "policies", "limits", "definitions"].map((p) => h("a", { href: `#/admin/${p}` }, p[0].toUpperCase() + p.slice(1))),
  );
  ctx.main.append(h("h1", {}, "Admin"), nav);
  const refreshers = [];
  const add = (title, id, el, refresher, formEl, { adminOnly = false } = {}) => {
    if (adminOnly && !admin) {
      // The API shows these to administrators only (as RabbitMQ's): say so rather than fail.
      ctx.main.append(h("section", { class: "panel", id }, h("h2", {}, title), h("p", { class: "notice" }, `${title} are shown to administrators only.`)));
      return;
    }
    ctx.main.append(h("section", { class: "panel", id }, h("h2", {}, title), el, formEl || null));
    // One section failing (a refusal, a node gone) shows its reason there; the others go on.
    refreshers.push(() =>
      refresher().catch((e) => clear(el, h("p", { class: "form-error" }, `Cannot show ${title.toLowerCase()}: ${e.message}`))),
    );
  };

  add("Users", "users", parts.users, async () => {
    const users = await get("/api/users");
    const cols = [
      { key: "name", label: "Name" },
      { key: "tags", label: "Tags", render: (u) => (Array.isArray(u.tags) ? u.tags.join(", ") : u.tags) },
    ];
    if (admin) cols.push({ key: "del", label: "", sortable: false, render: (u) => delButton(`/api/users/${seg(u.name)}`, `user ${u.name}`, refresh) });
    clear(parts.users, table(cols, users, { filter: true, rowKey: (u) => u.name }));
  }, admin ? form(
    [
      field("Username", input("name", { required: true, id: "new-user-name" })),
      field("Password", input("password", { type: "password" })),
      field("Tags", select("tags", ["", "administrator", "monitoring", "policymaker", "management"], "management")),
    ],
    "Add user",
    (v) => put(`/api/users/${seg(v.name)}`, { password: v.password, tags: v.tags }),
    { okText: "User added", done: () => refresh(), cls: "add-user" },
  ) : null, { adminOnly: true });

  add("Virtual hosts", "vhosts", parts.vhosts, async () => {
    const vhosts = await get("/api/vhosts");
    const cols = [{ key: "name", label: "Name" }, { key: "description", label: "Description" }];
    if (admin) cols.push({ key: "del", label: "", sortable: false, render: (v) => delButton(`/api/vhosts/${seg(v.name)}`, `virtual host ${v.name} and everything in it`, refresh) });
    clear(parts.vhosts, table(cols, vhosts, { rowKey: (v) => v.name }));
  }, admin ? form(
    [field("Name", input("name", { required: true })), field("Description", input("description"))],
    "Add virtual host",
    (v) => put(`/api/vhosts/${seg(v.name)}`, { description: v.description }),
    { okText: "Virtual host added", done: () => refresh() },
  ) : null);

  add("Permissions", "permissions", parts.permissions, async () => {
    const perms = await get("/api/permissions");
    const cols = [
      { key: "user", label: "User" },
      { key: "vhost", label: "Virtual host" },
      { key: "configure", label: "Configure" },
      { key: "write", label: "Write" },
      { key: "read", label: "Read" },
    ];
    if (admin) cols.push({ key: "del", label: "", sortable: false, render: (p) => delButton(`/api/permissions/${seg(p.vhost)}/${seg(p.user)}`, `${p.user}'s permissions in ${p.vhost}`, refresh) });
    clear(parts.permissions, table(cols, perms, { filter: true }));
  }, admin ? form(
    [
      field("User", input("user", { required: true })),
      field("Virtual host", select("vhost", ctx.vhosts, ctx.vhosts[0])),
      field("Configure", input("configure", { value: ".*" })),
      field("Write", input("write", { value: ".*" })),
      field("Read", input("read", { value: ".*" })),
    ],
    "Set permission",
    (v) => put(`/api/permissions/${seg(v.vhost)}/${seg(v.user)}`, { configure: v.configure, write: v.write, read: v.read }),
    { okText: "Permission set", done: () => refresh() },
  ) : null, { adminOnly: true });

  add("Policies", "policies", parts.policies, async () => {
    const policies = await get("/api/policies");
    const cols = [
      { key: "name", label: "Name" },
      { key: "vhost", label: "Virtual host" },
      { key: "pattern", label: "Pattern" },
      { key: "apply-to", label: "Apply to" },
      { key: "definition", label: "Definition", render: (p) => JSON.stringify(p.definition) },
      { key: "priority", label: "Priority", num: true },
    ];
    if (policyWriter) cols.push({ key: "del", label: "", sortable: false, render: (p) => delButton(`/api/policies/${seg(p.vhost)}/${seg(p.name)}`, `policy ${p.name}`, refresh) });
    clear(parts.policies, table(cols, policies, { empty: "No policies." }));
  }, policyWriter ? form(
    [
      field("Virtual host", select("vhost", ctx.vhosts, ctx.vhosts[0])),
      field("Name", input("name", { required: true })),
      field("Pattern", input("pattern", { required: true, value: ".*" })),
      field("Apply to", select("apply-to", ["all", "queues", "exchanges", "classic_queues", "quorum_queues"], "queues")),
      field("Priority", input("priority", { type: "number", value: "0" })),
      field("Definition (key=value, one a line: max-length, message-ttl, dead-letter-exchange, …)", h("textarea", { name: "definition", rows: 3, required: true })),
    ],
    "Add policy",
    (v) => put(`/api/policies/${seg(v.vhost)}/${seg(v.name)}`, { pattern: v.pattern, "apply-to": v["apply-to"], priority: Number(v.priority), definition: parseArgs(v.definition) }),
    { okText: "Policy set", done: () => refresh() },
  ) : null);

  add("Limits", "limits", parts.limits, async () => {
    const [vl, ul] = await Promise.all([get("/api/vhost-limits"), get("/api/user-limits")]);
    const flat = (rows, who) => rows.flatMap((r) => Object.entries(r.value || {}).map(([name, value]) => ({ kind: who, of: r[who], name, value })));
    const rows = [...flat(vl, "vhost"), ...flat(ul, "user")];
    const cols = [
      { key: "kind", label: "For" },
      { key: "of", label: "Name" },
      { key: "name", label: "Limit" },
      { key: "value", label: "Value", num: true },
    ];
    if (admin)
      cols.push({
        key: "del",
        label: "",
        sortable: false,
        render: (r) => delButton(`/api/${r.kind}-limits/${seg(r.of)}/${seg(r.name)}`, `the ${r.name} limit of ${r.of}`, refresh),
      });
    clear(parts.limits, table(cols, rows, { empty: "No limits." }));
  }, admin ? form(
    [
      field("For", select("kind", [["vhost", "virtual host"], ["user", "user"]], "vhost")),
      field("Name (virtual host or user)", input("of", { required: true })),
      field("Limit", select("name", ["max-connections", "max-queues", "max-channels"], "max-connections")),
      field("Value", input("value", { type: "number", required: true })),
    ],
    "Set limit",
    (v) => put(`/api/${v.kind}-limits/${seg(v.of)}/${seg(v.name)}`, { value: Number(v.value) }),
    { okText: "Limit set", done: () => refresh() },
  ) : null);

  ctx.main.append(definitionsPanel(ctx, () => refresh()));

  async function refresh() {
    await Promise.all(refreshers.map((r) => r()));
  }
  await refresh();
  const anchor = ctx.params[0];
  if (anchor) document.getElementById(anchor)?.scrollIntoView();
  // Not refreshed on the timer: these lists change when someone changes them (the forms here
  // refresh after their change), and a timer would redraw a list under a half-typed filter.
  return {};
}

function delButton(path, what, after) {
  return button(
    "Delete",
    async () => {
      if (!confirm(`Delete ${what}?`)) return;
      await del(path);
      await after();
    },
    { class: "small danger" },
  );
}

function definitionsPanel(ctx, after) {
  const exportBtn = button(
    "Download definitions",
    async () => {
      const path = ctx.vhost ? `/api/definitions/${seg(ctx.vhost)}` : "/api/definitions";
      const defs = await get(path);
      const blob = new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" });
      const a = h("a", { href: URL.createObjectURL(blob), download: `merpati-definitions${ctx.vhost ? `-${ctx.vhost}` : ""}.json` });
      document.body.append(a);
      a.click();
      a.remove();
    },
    { id: "export-definitions" },
  );
  const body = [h("p", {}, ctx.vhost ? `Definitions of virtual host ${ctx.vhost}.` : "Definitions of the whole cluster (users, virtual hosts, permissions, policies, queues, exchanges, bindings)."), exportBtn];
  if (ctx.isAdmin) {
    const text = h("textarea", { name: "definitions", rows: 6, id: "import-text", placeholder: "Paste definitions JSON here, or choose a file" });
    const file = h("input", {
      type: "file",
      accept: "application/json,.json",
      id: "import-file",
      onchange: async (e) => {
        const f = e.target.files[0];
        if (f) text.value = await f.text();
      },
    });
    body.push(
      h("h3", {}, "Import"),
      form(
        [field("File", file), field("Definitions (applied all or nothing: the node checks them whole first)", text)],
        "Import definitions",
        async (v) => {
          let defs;
          try {
            defs = JSON.parse(v.definitions);
          } catch (e) {
            throw new Error(`The definitions are not valid JSON: ${e.message}`);
          }
          const path = ctx.vhost ? `/api/definitions/${seg(ctx.vhost)}` : "/api/definitions";
          await post(path, defs);
        },
        { okText: "Definitions imported", done: after, cls: "import-definitions" },
      ),
    );
  }
  return section("Definitions", h("div", { id: "definitions" }, body));
}
