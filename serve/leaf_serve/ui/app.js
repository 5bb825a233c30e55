// The diagnosis page: one photo in, the top diagnoses out, through the same /classify as any client.
import { el, getJSON, pct, readJSON, show, url } from "/ui/common.js";
import { classify, feedback, startOffline } from "/ui/offline.js";

const $ = (id) => document.getElementById(id);
// The server writes the accepted formats (leaf_common.formats) into the page: one list for both checks.
const TYPES = $("photo").accept.split(",");
let settings = null;
let current = null; // the photo on screen, sent again if the user marks the diagnosis wrong
let previewUrl = null;

function setStatus(text) {
  $("status").textContent = text;
}

function setError(text) {
  $("error").textContent = text;
  show($("error"), Boolean(text));
}

async function loadSettings() {
  try {
    settings = await getJSON("/ui/settings.json");
  } catch (error) {
    setError(`The model is not ready yet: ${error.message}`);
    return;
  }
  show($("privacy"), settings.capture);
  const select = $("actual");
  const labels = [...settings.labels].sort((a, b) => a.display.localeCompare(b.display));
  for (const { label, display } of labels) select.append(el("option", { value: label }, display));
  startOffline(settings); // --offline-page only
}

async function diagnose(file) {
  setError("");
  $("feedback-status").textContent = "";
  if (!file) return;
  if (!TYPES.includes(file.type)) {
    const formats = $("photo-formats").textContent;
    setError(`Please choose a ${formats} photo; this file is ${file.type || "of an unknown type"}.`);
    return;
  }
  current = file;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  setStatus("Looking at the leaf…");
  const form = new FormData();
  form.append("file", file, file.name || "leaf");
  let body;
  try {
    const send = (signal) => fetch(url("/classify"), { method: "POST", body: form, signal }).then(readJSON);
    body = await classify(file, send); // the server, or this device's copy of the model with no network
  } catch (error) {
    setStatus("");
    setError(`The photo could not be diagnosed: ${error.message}`);
    return;
  }
  render(body);
}

function render(body) {
  const [best] = body.predictions;
  const notLeaf = body.abstain_reason === "not_a_leaf";
  const unsure = !body.confident || notLeaf;
  show($("unsure"), unsure);
  show($("list-title"), !notLeaf);
  show($("predictions"), !notLeaf);
  if (notLeaf) {
    // Its probabilities describe a leaf it is not looking at: show no disease at all.
    $("unsure-text").textContent =
      "This does not look like a leaf photo. Take a photo of one leaf, in focus, in daylight, filling most of the picture.";
    $("verdict").textContent = "";
  } else if (unsure) {
    $("unsure-text").textContent =
      `The best guess, ${best.display}, is only ${pct(best.probability)} likely ` +
      `(the model says it is sure from ${pct(body.confidence_threshold)}). ` +
      "Try another photo: one leaf, in focus, in daylight, filling most of the picture.";
    $("verdict").textContent = "";
  } else {
    $("verdict").textContent = `Most likely: ${best.display} (${pct(best.probability)})`;
  }
  const list = $("predictions");
  list.replaceChildren();
  for (const p of body.predictions) {
    const item = el("li", { class: "prediction" });
    item.append(el("span", { class: "name" }, p.display), el("span", { class: "pct" }, pct(p.probability)));
    const bar = el("span", { class: "meter", "aria-hidden": "true" });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, p.probability || 0)) * 100}%`; // CSSOM: allowed by the CSP
    bar.append(fill);
    item.append(bar);
    list.append(item);
  }
  $("model-line").textContent = `Model ${body.model}, version ${body.version}.${body.where ? ` ${body.where}` : ""}`;
  show($("result"), true);
  const canReport = Boolean(settings && settings.capture);
  show($("feedback"), canReport && !body.captured);
  $("wrong").disabled = false;
  $("feedback-status").textContent = body.captured
    ? "Because the model was not sure, this photo was kept so that people can check it."
    : "";
  if (notLeaf) setStatus("This does not look like a leaf photo.");
  else setStatus(unsure ? "Not sure. See the diagnosis below." : `Diagnosis ready: ${best.display}.`);
  $("result-title").focus();
}

async function reportWrong(event) {
  event.preventDefault();
  if (!current) return;
  $("wrong").disabled = true;
  const form = new FormData();
  form.append("file", current, current.name || "leaf");
  const label = $("actual").value;
  const query = label ? `?label=${encodeURIComponent(label)}` : "";
  try {
    const send = () => fetch(url(`/feedback${query}`), { method: "POST", body: form }).then(readJSON);
    const body = await feedback(current, label, send); // null: no network, kept on this device for later
    $("feedback-status").textContent = body
      ? `Thank you. The photo was sent for review (${body.captured}).`
      : "Thank you. There is no network: the photo is kept on this device and sent when the network is back.";
    show($("feedback"), false);
  } catch (error) {
    $("feedback-status").textContent = `The photo was not sent: ${error.message}`;
    $("wrong").disabled = false;
  }
}

function wireDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const [file] = event.dataTransfer.files;
    diagnose(file);
  });
}

$("photo").addEventListener("change", (event) => diagnose(event.target.files[0]));
$("upload").addEventListener("submit", (event) => event.preventDefault());
$("wrong-form").addEventListener("submit", reportWrong);
wireDrop();
loadSettings();
