// The review grid: each photo from the inbox, newest first, with the two decisions a reviewer makes.
import { el, getJSON, pct, readJSON, show, url, when } from "/ui/common.js";

const $ = (id) => document.getElementById(id);
const OTHER = ""; // never a class name (the server requires at least one character)
let labels = [];

function setStatus(text) {
  $("status").textContent = text;
}

function setError(text) {
  $("error").textContent = text;
  show($("error"), Boolean(text));
}

async function post(path, body) {
  const response = await fetch(url(path), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  return readJSON(response);
}

function why(item) {
  const said = `the model said ${item.display}, ${pct(item.probability)}`;
  if (item.reason === "marked_wrong") {
    const person = item.user_display ? `; the person said ${item.user_display}` : "";
    return `Marked wrong on the page (${said}${person}).`;
  }
  return `The model was not sure (${said}).`;
}

function card(item) {
  const node = $("item").content.firstElementChild.cloneNode(true);
  const base = `item-${item.id}`;
  node.id = base;
  const title = node.querySelector(".item-title");
  title.id = `${base}-title`;
  title.textContent = `Captured ${when(item.captured_at)}`;
  node.querySelector("article").setAttribute("aria-labelledby", title.id);
  const img = node.querySelector(".thumb");
  img.src = url(item.photo);
  img.alt = `Photo ${item.id}; ${why(item)}`;
  node.querySelector(".item-why").textContent = `${why(item)} Model version ${item.version}.`;

  const pick = node.querySelector(".pick");
  pick.id = `${base}-pick`;
  node.querySelector(".pick-label").htmlFor = pick.id;
  // The model's answer is preselected, never the label that came with /feedback: anyone can send that,
  // so it is only shown, and used when the reviewer asks for it (the "Use …" button).
  for (const { label, display } of labels) {
    const option = el("option", { value: label }, display);
    option.selected = label === item.label;
    pick.append(option);
  }
  pick.append(el("option", { value: OTHER }, "Another class (type its name)…"));
  const extra = node.querySelector(".new");
  const name = node.querySelector(".new-name");
  name.id = `${base}-name`;
  node.querySelector(".new-label").htmlFor = name.id;
  pick.addEventListener("change", () => show(extra, pick.value === OTHER));
  if (item.user_label) {
    const use = el("button", { type: "button", class: "use-suggestion" }, `Use “${item.user_display}”`);
    use.addEventListener("click", () => {
      const known = labels.some((l) => l.label === item.user_label);
      pick.value = known ? item.user_label : OTHER;
      name.value = known ? "" : item.user_label;
      show(extra, !known);
    });
    node.querySelector(".actions").prepend(use);
  }

  const form = node.querySelector(".decide");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const other = pick.value === OTHER;
    const label = other ? name.value.trim() : pick.value;
    if (!label) {
      setError("Type the name of the class, or pick one from the list.");
      name.focus();
      return;
    }
    await decide(node, `/review/items/${item.id}/accept`, {
      label,
      new_class: other && node.querySelector(".new-confirm").checked,
    }, (body) => `Added to the training data: ${body.accepted}`);
  });
  node.querySelector(".reject").addEventListener("click", () =>
    decide(node, `/review/items/${item.id}/reject`, {}, () => `Deleted photo ${item.id}.`),
  );
  return node;
}

async function decide(node, path, body, done) {
  setError("");
  for (const button of node.querySelectorAll("button")) button.disabled = true;
  try {
    const result = await post(path, body);
    const next = node.nextElementSibling || node.previousElementSibling;
    node.remove();
    setStatus(`${done(result)} ${remaining()}`);
    // Keyboard users keep their place: focus moves to the next photo's first control.
    const focusable = next && next.querySelector("select");
    if (focusable) focusable.focus();
  } catch (error) {
    setError(error.message);
    for (const button of node.querySelectorAll("button")) button.disabled = false;
  }
}

function remaining() {
  const n = $("grid").children.length;
  return n === 0 ? "The inbox is empty." : `${n} photo${n === 1 ? "" : "s"} left.`;
}

async function main() {
  let body;
  try {
    body = await getJSON("/review/items");
  } catch (error) {
    setStatus("");
    setError(`The inbox could not be loaded: ${error.message}`);
    return;
  }
  labels = [...body.labels].sort((a, b) => a.display.localeCompare(b.display));
  $("where").textContent = `Photos come from ${body.inbox}; confirmed ones go to ${body.data}/<class>/.`;
  $("grid").replaceChildren(...body.items.map(card));
  const more = body.items.length >= body.limit ? ` Showing the newest ${body.limit}.` : "";
  setStatus(`${remaining()}${more}`);
}

main();
