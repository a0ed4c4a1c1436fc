// Live charts on uPlot (vendor/uplot): one chart per panel, fed from the `*_details.samples` the
// API answers with ?msg_rates_age=…&msg_rates_incr=… (newest first, each a counter's value at
// that time). A rate chart plots the change per second between successive samples, a depth chart
// the values themselves. A chart is created once and then given new data (setData), so a refresh
// redraws a canvas and builds no DOM.

// The history asked for: a point per sampling interval of the node (its statistics_interval,
// read once at login), 120 points at most: ten minutes at RabbitMQ's 5 s.
export const window_ = { age: 600, incr: 5 };

export function setInterval_(ms) {
  const incr = Math.max(0.1, (ms || 5000) / 1000);
  window_.incr = incr;
  window_.age = Math.round(incr * 120 * 10) / 10;
}

export const historyQuery = () => `msg_rates_age=${window_.age}&msg_rates_incr=${window_.incr}`;

const COLOURS = ["#3b82c4", "#e0803a", "#3aa35b", "#c0392b", "#8e5bb5", "#7f8c8d"];

function series(details) {
  // [timestamps in seconds ascending, values ascending]
  const s = (details && details.samples) || [];
  const asc = [...s].reverse();
  return [asc.map((p) => p.timestamp / 1000), asc.map((p) => p.sample)];
}

function ratesOf(details) {
  const [ts, vs] = series(details);
  const outT = [];
  const outV = [];
  for (let i = 1; i < ts.length; i++) {
    const dt = ts[i] - ts[i - 1];
    outT.push(ts[i]);
    outV.push(dt > 0 ? Math.max(0, (vs[i] - vs[i - 1]) / dt) : 0);
  }
  return [outT, outV];
}

// keys: [[label, details-key]]; kind: "rate" | "depth"
export class LiveChart {
  constructor(el, title, keys, kind) {
    this.el = el;
    this.keys = keys;
    this.kind = kind;
    this.plot = null;
    this.title = title;
  }

  update(source) {
    const cols = this.keys.map(([, key]) => (this.kind === "rate" ? ratesOf(source[key]) : series(source[key])));
    const ts = cols.length ? cols[0][0] : [];
    const data = [ts, ...cols.map(([t, v]) => (t.length === ts.length ? v : ts.map(() => null)))];
    if (!window.uPlot) {
      this.el.textContent = "The chart library did not load.";
      return;
    }
    if (!this.plot) {
      const width = Math.max(280, this.el.clientWidth || 480);
      this.plot = new window.uPlot(
        {
          title: this.title,
          width,
          height: 200,
          cursor: { drag: { x: false, y: false } },
          legend: { live: false }, // names only: values show in the totals and tables
          scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
          axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => (this.kind === "rate" ? `${+v.toFixed(1)}/s` : `${v}`)) }],
          series: [{}, ...this.keys.map(([label], i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 2, points: { show: false } }))],
        },
        data,
        this.el,
      );
      this.el.dataset.points = String(ts.length);
      this._resize = () => this.plot && this.plot.setSize({ width: Math.max(280, this.el.clientWidth), height: 200 });
      window.addEventListener("resize", this._resize);
    } else {
      this.plot.setData(data);
    }
    // What the tests (and a curious reader) can check: the last value of each series.
    this.el.dataset.points = String(ts.length);
    this.el.dataset.last = JSON.stringify(data.slice(1).map((v) => (v.length ? v[v.length - 1] : null)));
  }

  destroy() {
    if (this._resize) window.removeEventListener("resize", this._resize);
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

export const RATE_KEYS = [
  ["publish", "publish_details"],
  ["confirm", "confirm_details"],
  ["deliver", "deliver_get_details"],
  ["ack", "ack_details"],
  ["redeliver", "redeliver_details"],
];

export const DEPTH_KEYS = [
  ["ready", "messages_ready_details"],
  ["unacked", "messages_unacknowledged_details"],
  ["total", "messages_details"],
];
