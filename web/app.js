// The storefront: products with live stock, a store's stock (low-stock view, paging), a
// shopper's order. Hash routes, so any static host serves it: #/, #/product/<sku>,
// #/stock/<store>?below=N&cursor=..., #/order?id=N.
"use strict";

takeTokenFromUrl();

const view = document.getElementById("view");
const title = document.getElementById("title");
let live = null;

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || "") };
}

function go() {
  takeTokenFromUrl(); // also when a sign-in link only changes the fragment
  if (live) live.stop();
  live = null;
  const { parts, query } = route();
  const page = parts[0] || "products";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.toggleAttribute("aria-current", link.dataset.nav === (page === "product" ? "products" : page));
  }
  showWho();
  if (page === "product" && parts[1]) productPage(parts[1]);
  else if (page === "stock") stockPage(parts[1] || CONFIG.stores[0], query);
  else if (page === "order") orderPage(query);
  else productList(query);
}

function showWho() {
  const who = document.getElementById("who");
  if (!token()) return show(who, el("a", { href: "#/order" }, "Sign in"));
  show(who, "Signed in · ", el("button", { type: "button", class: "link", onclick: () => { signOut(); go(); } }, "Sign out"));
}

function setTitle(text) {
  title.textContent = text;
  document.title = `${text} · cachesync shop`;
}

function storePicker(current, onChange) {
  const select = el(
    "select",
    { id: "store", onchange: (event) => onChange(event.target.value) },
    CONFIG.stores.map((s) => el("option", { value: s, selected: s === current }, s)),
  );
  return el("p", { class: "controls" }, el("label", { for: "store" }, "Store "), select);
}

// Names and prices for SKUs, one request for the page (a product document changes rarely).
const products = new Map();
async function productsFor(skus, signal) {
  const wanted = skus.filter((sku) => !products.has(sku));
  for (let i = 0; i < wanted.length; i += 100) {
    const batch = wanted.slice(i, i + 100);
    const answer = await api(`/products?skus=${batch.map(encodeURIComponent).join(",")}`, { signal });
    for (const item of answer.items) products.set(item.sku, item);
    for (const sku of answer.missing) products.set(sku, null);
  }
  return skus.map((sku) => products.get(sku));
}

function stockCell(quantity) {
  const low = quantity < CONFIG.lowStockBelow;
  return el("td", { class: low ? "num low" : "num", "data-quantity": quantity }, quantity, low ? el("span", { class: "tag" }, " low") : null);
}

// --- #/ : the products of a store, by SKU, with their stock there --------------------------
function productList(query) {
  const store = query.get("store") || CONFIG.stores[0];
  const cursor = query.get("cursor");
  setTitle("Products");
  const table = el("div");
  show(view, storePicker(store, (s) => (location.hash = `#/?store=${encodeURIComponent(s)}`)), table);
  live = new LiveView(
    async (signal) => {
      const page = await api(
        `/stores/${encodeURIComponent(store)}/inventory?sort=sku&limit=${CONFIG.pageSize}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
        { signal },
      );
      const documents = await productsFor(page.items.map((i) => i.sku), signal);
      return { page, documents };
    },
    (state) => {
      if (state.status === "loading") return show(table, loading("Loading products…"));
      if (state.status === "error") return show(table, problem(state.error, state.retryIn));
      const { page, documents } = state.data;
      if (!page.items.length) return show(table, empty(`No products in ${store} yet.`));
      const rows = page.items.map((item, i) => {
        const doc = documents[i] || {};
        return el(
          "tr",
          { "data-sku": item.sku },
          el("th", { scope: "row" }, el("a", { href: `#/product/${encodeURIComponent(item.sku)}` }, doc.name || item.sku)),
          el("td", { class: "num" }, money(doc.price)),
          stockCell(item.quantity),
        );
      });
      show(
        table,
        el(
          "table",
          { class: "grid", id: "products" },
          el("caption", {}, `Products in ${store}, live`),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Product"), el("th", { scope: "col", class: "num" }, "Price"), el("th", { scope: "col", class: "num" }, "In stock"))),
          el("tbody", {}, rows),
        ),
        pager(page.nextCursor, cursor, (c) => `#/?store=${encodeURIComponent(store)}${c ? `&cursor=${encodeURIComponent(c)}` : ""}`),
      );
    },
    CONFIG.pollSeconds.list,
  ).start();
}

function pager(nextCursor, cursor, link) {
  return el(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    cursor ? el("a", { href: link(null) }, "First page") : null,
    nextCursor ? el("a", { href: link(nextCursor), rel: "next" }, "Next page") : null,
  );
}

// --- #/product/<sku> : a product, and its stock in every store -----------------------------
function productPage(sku) {
  setTitle("Product");
  const details = el("div");
  const stock = el("div");
  show(view, details, el("h2", {}, "Stock by store"), stock);
  api(`/products/${encodeURIComponent(sku)}`)
    .then((doc) => {
      setTitle(doc.name || sku);
      show(
        details,
        el("p", { class: "price" }, money(doc.price)),
        el("p", {}, doc.description || ""),
        el("p", { class: "meta" }, `SKU ${doc.sku}`),
      );
    })
    .catch((error) => show(details, error.status === 404 ? empty(`There is no product ${sku}.`) : problem(error, 5)));
  live = new LiveView(
    (signal) =>
      Promise.all(
        CONFIG.stores.map((store) =>
          api(`/stores/${encodeURIComponent(store)}/inventory/${encodeURIComponent(sku)}`, { signal }).then(
            (item) => ({ store, quantity: item.quantity }),
            (error) => {
              if (error.status === 404) return { store, quantity: null };
              throw error;
            },
          ),
        ),
      ),
    (state) => {
      if (state.status === "loading") return show(stock, loading("Loading stock…"));
      if (state.status === "error") return show(stock, problem(state.error, state.retryIn));
      show(
        stock,
        el(
          "table",
          { class: "grid", id: "stock" },
          el("caption", {}, "Units on hand, live"),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Store"), el("th", { scope: "col", class: "num" }, "In stock"))),
          el(
            "tbody",
            {},
            state.data.map(({ store, quantity }) =>
              el("tr", { "data-store": store }, el("th", { scope: "row" }, store), quantity === null ? el("td", { class: "num" }, "not stocked") : stockCell(quantity)),
            ),
          ),
        ),
      );
    },
    CONFIG.pollSeconds.product,
  ).start();
}

// --- #/stock/<store>?below=N : a store's stock, lowest first, paged --------------------------
function stockPage(store, query) {
  const below = query.get("below");
  const cursor = query.get("cursor");
  setTitle(`Stock in ${store}`);
  const link = (b, c) => `#/stock/${encodeURIComponent(store)}?${b ? `below=${b}` : ""}${c ? `&cursor=${encodeURIComponent(c)}` : ""}`;
  const form = el(
    "form",
    { class: "controls", onsubmit: (event) => { event.preventDefault(); location.hash = link(event.target.below.value, null); } },
    el("label", { for: "below" }, "Low stock: fewer than "),
    el("input", { id: "below", name: "below", type: "number", min: "0", step: "1", value: below || "", inputmode: "numeric" }),
    " units ",
    el("button", { type: "submit" }, "Show"),
    " ",
    el("a", { href: link(null, null) }, "All stock"),
  );
  const table = el("div");
  show(view, storePicker(store, (s) => (location.hash = `#/stock/${encodeURIComponent(s)}?${below ? `below=${below}` : ""}`)), form, table);
  live = new LiveView(
    async (signal) => {
      const params = new URLSearchParams({ sort: "quantity", limit: String(CONFIG.pageSize) });
      if (below) params.set("below", below);
      if (cursor) params.set("cursor", cursor);
      const page = await api(`/stores/${encodeURIComponent(store)}/inventory?${params}`, { signal });
      const documents = await productsFor(page.items.map((i) => i.sku), signal);
      return { page, documents };
    },
    (state) => {
      if (state.status === "loading") return show(table, loading("Loading stock…"));
      if (state.status === "error") return show(table, problem(state.error, state.retryIn));
      const { page, documents } = state.data;
      if (!page.items.length) return show(table, empty(below ? `Nothing in ${store} is below ${below} units.` : `${store} has no stock yet.`));
      show(
        table,
        el(
          "table",
          { class: "grid", id: "inventory" },
          el("caption", {}, below ? `Below ${below} units in ${store}, lowest first, live` : `Stock in ${store}, lowest first, live`),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "SKU"), el("th", { scope: "col" }, "Product"), el("th", { scope: "col", class: "num" }, "In stock"))),
          el(
            "tbody",
            {},
            page.items.map((item, i) =>
              el(
                "tr",
                { "data-sku": item.sku },
                el("th", { scope: "row" }, el("a", { href: `#/product/${encodeURIComponent(item.sku)}` }, item.sku)),
                el("td", {}, (documents[i] && documents[i].name) || "–"),
                stockCell(item.quantity),
              ),
            ),
          ),
        ),
        pager(page.nextCursor, cursor, (c) => link(below, c)),
      );
    },
    CONFIG.pollSeconds.stock,
  ).start();
}

// --- #/order : a signed-in shopper's order (or any order, for staff) -------------------------------
function signIn(reason) {
  const steps = CONFIG.signInUrl
    ? el("p", {}, el("a", { class: "button", href: CONFIG.signInUrl }, "Sign in"))
    : el(
        "p",
        {},
        "Sign in with your shop account to see your orders. Running locally? Open the storefront link that ",
        el("code", {}, "make run"),
        " prints: it signs you in as staff, who may read any order (the generated orders have no owner).",
      );
  return el("section", { class: "notice", "data-state": "signin", "aria-labelledby": "signin-title" }, el("h2", { id: "signin-title" }, "Sign in to look up an order"), reason ? el("p", {}, reason) : null, steps);
}

// a valid sign-in that may not read orders (no ownership rule here, and no staff scope)
function forbidden(message) {
  return el(
    "section",
    { class: "notice", "data-state": "forbidden", role: "alert" },
    el("strong", {}, "This account cannot look up orders here."),
    " ",
    message,
  );
}

function orderPage(query) {
  setTitle("My order");
  if (!token()) return show(view, signIn());
  const id = query.get("id") || "";
  const result = el("div");
  const form = el(
    "form",
    { class: "controls", onsubmit: (event) => { event.preventDefault(); location.hash = `#/order?id=${encodeURIComponent(event.target.orderid.value.trim())}`; } },
    el("label", { for: "orderid" }, "Order number "),
    el("input", { id: "orderid", name: "orderid", required: true, value: id, pattern: "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", autocomplete: "off" }),
    " ",
    el("button", { type: "submit" }, "Look up"),
  );
  show(view, form, result);
  if (!id) return;
  live = new LiveView(
    (signal) => api(`/orders/${encodeURIComponent(id)}`, { auth: true, signal }),
    (state) => {
      if (state.status === "loading") return show(result, loading("Looking up the order…"));
      if (state.status === "error") {
        const { error } = state;
        if (error.status === 401) {
          signOut();
          showWho();
          return show(result, signIn("Your sign-in has expired or is not valid here."));
        }
        // the deploy's ownership rule answers another shopper's order as a missing one
        if (error.status === 404) return show(result, empty(`There is no order ${id} for this account.`));
        if (error.status === 403) return show(result, forbidden(error.message));
        return show(result, problem(error, state.retryIn));
      }
      const order = state.data;
      const address = order.address || {};
      show(
        result,
        el(
          "dl",
          { class: "order", id: "order" },
          el("dt", {}, "Order"), el("dd", {}, order.orderid),
          el("dt", {}, "Placed"), el("dd", {}, order.ordertime ? new Date(order.ordertime).toLocaleString() : "–"),
          el("dt", {}, "Item"), el("dd", {}, order.itemid || "–"),
          el("dt", {}, "Units"), el("dd", {}, order.orderunits ?? "–"),
          el("dt", {}, "Ship to"), el("dd", {}, [address.city, address.state, address.zipcode].filter(Boolean).join(", ") || "–"),
        ),
      );
    },
    0,
  ).start();
}

window.addEventListener("hashchange", go);
go();
