// Shared by the storefront and the operator's page: the API call with its states, the token.
"use strict";

const CONFIG = window.CACHESYNC_CONFIG;
const TOKEN_KEY = "cachesync.token";

// A sign-in that comes back with #access_token=... (an OIDC implicit or hosted-UI redirect,
// or the links `make run` prints): kept for this tab only, and taken out of the address bar.
function takeTokenFromUrl() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("access_token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, on a 503
  }
}

// GET a path of the read API as JSON; an ApiError says why not (status 0: the network).
async function api(path, { auth = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (auth && token()) headers.Authorization = `Bearer ${token()}`;
  let response;
  try {
    response = await fetch(CONFIG.apiBase + path, { headers, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The shop cannot be reached. Check your connection.", 5);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok) return body;
  const message = (body && (body.message || body.error)) || response.statusText;
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  throw new ApiError(response.status, message, Number.isFinite(retryAfter) ? retryAfter : null);
}

// A live view: `load` runs now and every `seconds`, and after a 503 when Retry-After says.
// `render(state)` gets {status: "loading" | "ready" | "error", data, error}.
class LiveView {
  constructor(load, render, seconds) {
    this.load = load;
    this.render = render;
    this.seconds = seconds;
    this.timer = null;
    this.controller = null;
    this.loaded = false;
  }

  start() {
    this.render({ status: "loading" });
    this.tick();
    return this;
  }

  stop() {
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
  }

  async tick() {
    this.controller = new AbortController();
    let next = this.seconds;
    let again = this.seconds > 0; // a one-off view (an order) retries only what is retryable
    try {
      const data = await this.load(this.controller.signal);
      this.loaded = true;
      this.render({ status: "ready", data });
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status === 503 || error.status === 0) {
        next = error.retryAfter || this.seconds || 5; // honour Retry-After
        again = true;
      }
      this.render({ status: "error", error, retryIn: next, stale: this.loaded });
    }
    if (again) this.timer = setTimeout(() => this.tick(), next * 1000);
  }
}

// --- small DOM helpers (text only: nothing from the API is parsed as HTML) ---------------
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(container, ...children) {
  container.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
}

// The message for a failed call; a 503 says it will retry, and when.
function problem(error, retryIn) {
  if (error.status === 503) {
    return el(
      "div",
      { class: "notice retrying", role: "status", "data-state": "unavailable" },
      el("strong", {}, "Stock is briefly unavailable."),
      ` Retrying in ${retryIn} s…`,
    );
  }
  if (error.status === 0) {
    return el("div", { class: "notice retrying", role: "status", "data-state": "offline" }, error.message);
  }
  return el("div", { class: "notice error", role: "alert", "data-state": "error" }, `Error ${error.status}: ${error.message}`);
}

function loading(text = "Loading…") {
  return el("p", { class: "loading", role: "status", "data-state": "loading" }, text);
}

function empty(text) {
  return el("p", { class: "empty", "data-state": "empty" }, text);
}

function money(value) {
  return typeof value === "number" ? value.toLocaleString(undefined, { style: "currency", currency: "USD" }) : "–";
}
