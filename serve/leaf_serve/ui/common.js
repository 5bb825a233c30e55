// Shared by the three pages. Everything from the server is shown with textContent, never as HTML.

const percent = new Intl.NumberFormat("en", { style: "percent", maximumFractionDigits: 0 });
const precise = new Intl.NumberFormat("en", { style: "percent", maximumFractionDigits: 1 });

export function pct(value, digits = 0) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return (digits ? precise : percent).format(value);
}

// Absolute URLs from the origin: a page opened with user and token in its address would otherwise resolve
// relative URLs with the credentials in them, which fetch() and <img> refuse.
export function url(path) {
  return new URL(path, window.location.origin).href;
}

export async function getJSON(path) {
  const response = await fetch(url(path), { headers: { Accept: "application/json" } });
  return readJSON(response);
}

// The server answers every failure as {"error": "..."}: surface that sentence.
export async function readJSON(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const reason = body && typeof body.error === "string" ? body.error : `${response.status} ${response.statusText}`;
    const error = new Error(reason);
    error.status = response.status;
    throw error;
  }
  return body;
}

export function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso || "–";
  return date.toISOString().replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
}
