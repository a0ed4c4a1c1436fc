// The management API as the UI calls it: basic auth with the credentials the user logged in
// with (kept in sessionStorage, as RabbitMQ's UI keeps them in the browser), JSON in and out,
// and every failure turned into an ApiError whose message is words a person can read.

const KEY = "merpati.credentials";

export class ApiError extends Error {
  constructor(status, reason, path) {
    super(reason);
    this.status = status;
    this.path = path;
  }
}

let credentials = sessionStorage.getItem(KEY);
let onUnauthorised = () => {};

export function setCredentials(user, password) {
  // btoa needs Latin-1: encode UTF-8 first so any username or password works.
  credentials = btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`)));
  sessionStorage.setItem(KEY, credentials);
}

export function clearCredentials() {
  credentials = null;
  sessionStorage.removeItem(KEY);
}

export function hasCredentials() {
  return credentials !== null;
}

export function whenUnauthorised(fn) {
  onUnauthorised = fn;
}

// A path segment as RabbitMQ's API wants it ("/" is %2F).
export const seg = (s) => encodeURIComponent(s);

export async function api(method, path, body, { quiet401 = false } = {}) {
  const headers = { "X-Requested-With": "XMLHttpRequest" };
  if (credentials) headers.Authorization = `Basic ${credentials}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, `The node did not answer (${e.message}). Is it running?`, path);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!resp.ok) {
    const reason =
      (data && typeof data === "object" && (data.reason || data.error)) ||
      (typeof data === "string" && data.trim()) ||
      resp.statusText ||
      "request failed";
    const err = new ApiError(resp.status, `${resp.status} ${reason}`, path);
    // 401 is also the API's answer to a user who may not do a thing ("Not administrator
    // user"): only a refused login sends the user back to the login form.
    const loginRefused = ["Login failed", "Not management user"].includes(data && data.reason);
    if (resp.status === 401 && loginRefused && !quiet401) onUnauthorised(err);
    throw err;
  }
  return data;
}

export const get = (path) => api("GET", path);
export const put = (path, body) => api("PUT", path, body ?? {});
export const post = (path, body) => api("POST", path, body ?? {});
export const del = (path) => api("DELETE", path);
