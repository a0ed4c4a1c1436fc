// Small DOM helpers the pages share: element building, number formats, sortable and filterable
// tables, forms that show the API's errors beside them, and the page-wide error banner.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const fmtNum = (n) =>
  n === undefined || n === null ? "" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });

export function fmtRate(r) {
  if (r === undefined || r === null) return "";
  return `${Number(r).toLocaleString("en-US", { maximumFractionDigits: r < 10 ? 2 : 0 })}/s`;
}

export function fmtBytes(b) {
  if (b === undefined || b === null || b === "") return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(b);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toLocaleString("en-US", { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}

export function fmtDuration(ms) {
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s %= 86400;
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : `${mm}m ${s % 60}s`;
}

export const yesNo = (b) => (b ? "yes" : "no");

export function dig(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

// --- the page-wide error banner -------------------------------------------------------------

export function showError(err) {
  const el = document.getElementById("error");
  const text = err instanceof Error ? err.message : String(err);
  clear(el, h("span", {}, text), h("button", { type: "button", class: "link", onclick: hideError }, "dismiss"));
  el.hidden = false;
}

export function hideError() {
  document.getElementById("error").hidden = true;
}

export function flash(text) {
  const el = h("div", { class: "flash", role: "status" }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), 3000);
}

// --- tables ---------------------------------------------------------------------------------

// columns: [{key, label, render?(row) -> node|string, sort?: value fn or key, num?: bool}]
// opts: {filter: true, sortable: true, rowKey, empty, onSort(key, reverse) for server sorting,
//        sortKey, sortReverse}
export function table(columns, rows, opts = {}) {
  const state = { sortKey: opts.sortKey ?? null, reverse: !!opts.sortReverse, filter: opts.filterText ?? "" };
  const wrap = h("div", { class: "table-wrap" });
  const tbody = h("tbody");
  const thead = h("thead");
  const count = h("span", { class: "count" });
  const render = () => {
    let shown = rows;
    if (opts.filter && state.filter && !opts.serverFilter) {
      const f = state.filter.toLowerCase();
      shown = rows.filter((r) =>
        columns.some((c) => String(c.text ? c.text(r) : (dig(r, c.key) ?? "")).toLowerCase().includes(f)),
      );
    }
    if (state.sortKey && !opts.onSort) {
      const col = columns.find((c) => c.key === state.sortKey);
      const val = col && col.sort ? col.sort : (r) => dig(r, state.sortKey);
      shown = [...shown].sort((a, b) => {
        const x = val(a);
        const y = val(b);
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
        return state.reverse ? -c : c;
      });
    }
    clear(
      thead,
      h(
        "tr",
        {},
        columns.map((c) => {
          const sortable = opts.sortable !== false && c.sortable !== false;
          const mark = state.sortKey === c.key ? (state.reverse ? " ▼" : " ▲") : "";
          return h(
            "th",
            {
              class: c.num ? "num" : "",
              dataset: { key: c.key },
              onclick: sortable
                ? () => {
                    state.reverse = state.sortKey === c.key ? !state.reverse : false;
                    state.sortKey = c.key;
                    if (opts.onSort) opts.onSort(state.sortKey, state.reverse);
                    else render();
                  }
                : undefined,
            },
            c.label + mark,
          );
        }),
      ),
    );
    clear(
      tbody,
      shown.length
        ? shown.map((r) =>
            h(
              "tr",
              { dataset: { key: opts.rowKey ? opts.rowKey(r) : "" } },
              columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.render ? c.render(r) : fmtCell(dig(r, c.key)))),
            ),
          )
        : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "Nothing here.")),
    );
    count.textContent = opts.countText ? opts.countText(shown.length) : `${shown.length} of ${rows.length}`;
  };
  if (opts.filter) {
    const input = h("input", {
      type: "search",
      placeholder: "Filter",
      value: state.filter,
      class: "filter",
      oninput: (e) => {
        state.filter = e.target.value;
        if (opts.onFilter) opts.onFilter(state.filter);
        else render();
      },
    });
    wrap.append(h("div", { class: "table-tools" }, input, opts.tools || null, count));
  }
  wrap.append(h("table", { class: "list" }, thead, tbody));
  render();
  wrap.update = (newRows) => {
    rows = newRows;
    render();
  };
  return wrap;
}

function fmtCell(v) {
  if (v === true || v === false) return yesNo(v);
  if (typeof v === "number") return fmtNum(v);
  if (v && typeof v === "object") return JSON.stringify(v);
  return v ?? "";
}

// key/value rows of an object, as RabbitMQ's detail pages show them
export function props(pairs) {
  return h(
    "table",
    { class: "props" },
    pairs.filter(Boolean).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v instanceof Node ? v : fmtCell(v)))),
  );
}

// --- forms ----------------------------------------------------------------------------------

// A form whose submit runs `action(values)`; an error is shown in words under the form, success
// calls `done` (if any) and flashes `okText`.
export function form(fields, submitLabel, action, { okText, done, cls } = {}) {
  const err = h("p", { class: "form-error", role: "alert" });
  const f = h(
    "form",
    {
      class: `form ${cls || ""}`,
      onsubmit: async (e) => {
        e.preventDefault();
        err.textContent = "";
        const values = readForm(f);
        const btn = f.querySelector("button[type=submit]");
        btn.disabled = true;
        try {
          await action(values, f);
          if (okText) flash(okText);
          if (done) await done(values);
        } catch (ex) {
          err.textContent = ex.message || String(ex);
        } finally {
          btn.disabled = false;
        }
      },
    },
    fields,
    h("div", { class: "form-actions" }, h("button", { type: "submit" }, submitLabel)),
    err,
  );
  return f;
}

function readForm(f) {
  const values = {};
  for (const el of f.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") values[el.name] = el.checked;
    else values[el.name] = el.value;
  }
  return values;
}

export const field = (label, input) => h("label", { class: "field" }, h("span", {}, label), input);
export const input = (name, attrs = {}) => h("input", { name, ...attrs });
export const checkbox = (name, checked = false) => h("input", { name, type: "checkbox", checked });
export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map((o) => {
      const [v, label] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, label);
    }),
  );
}

// "key=value" lines (one a line) into an object; values that look like numbers or booleans
// become them, as RabbitMQ's UI types its argument rows.
export function parseArgs(text) {
  const out = {};
  for (const line of (text || "").split("\n")) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf("=");
    if (i < 1) throw new Error(`"${t}" is not key=value`);
    const k = t.slice(0, i).trim();
    const v = t.slice(i + 1).trim();
    out[k] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v === "true" ? true : v === "false" ? false : v;
  }
  return out;
}

export function button(label, onclick, attrs = {}) {
  return h(
    "button",
    {
      type: "button",
      ...attrs,
      onclick: async (e) => {
        const b = e.currentTarget;
        b.disabled = true;
        try {
          await onclick(e);
        } catch (ex) {
          showError(ex);
        } finally {
          b.disabled = false;
        }
      },
    },
    label,
  );
}

export function section(title, ...body) {
  return h("section", { class: "panel" }, h("h2", {}, title), body);
}

export function link(href, text) {
  return h("a", { href }, text);
}
