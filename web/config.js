// Where the pages find the read API, and what they show. Served as is: deployed, set apiBase
// to the stack's ApiUrl output (the pages then call it cross-origin, under the HTTP API's CORS).
window.CACHESYNC_CONFIG = {
  apiBase: "", // "" = the origin that serves the pages (make run serves both)
  stores: ["store1", "store2", "store3", "store4", "store5"],
  lowStockBelow: 10,
  pageSize: 20,
  // live stock: one request per interval per open view (docs/api.md, "The pages")
  pollSeconds: { list: 5, product: 2, stock: 5, admin: 5 },
  signInUrl: "", // deployed: your identity provider's sign-in page, which returns #access_token=...
};
