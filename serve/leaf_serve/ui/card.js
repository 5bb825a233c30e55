// The model card: /model/card.json rendered as it is (the server copies it from published files).
import { el, getJSON, pct, show, when } from "/ui/common.js";

const $ = (id) => document.getElementById(id);
const count = new Intl.NumberFormat("en");

function number(value) {
  return typeof value === "number" ? count.format(value) : "–";
}

function fill(card) {
  $("version").textContent = card.version;
  $("trained").textContent = when(card.trained_at);
  const d = card.dataset;
  $("photos").textContent =
    d.images == null ? "–" : `${number(d.images)} (${number(d.train_images)} training, ${number(d.val_images)} validation)`;
  $("classes").textContent = number(card.classes.length);
  $("accuracy").textContent = pct(card.metrics.accuracy, 1);
  $("top3").textContent = pct(card.metrics.top3_accuracy, 1);
  $("f1").textContent = typeof card.metrics.macro_f1 === "number" ? card.metrics.macro_f1.toFixed(3) : "–";
  $("since").textContent = when(card.served_since);
  show($("summary"), true);

  if (card.gate && card.gate.reason) {
    $("gate-verdict").textContent = card.gate.promote ? "Promoted by the quality gate" : "The quality gate said no";
    $("gate-reason").textContent = card.gate.reason;
    show($("gate"), true);
  }

  const rows = $("class-rows");
  rows.replaceChildren();
  for (const c of card.metrics.per_class) {
    const row = el("tr");
    row.append(el("th", { scope: "row" }, c.display));
    for (const v of [pct(c.precision), pct(c.recall), typeof c.f1 === "number" ? c.f1.toFixed(2) : "–", number(c.support)]) {
      row.append(el("td", {}, v));
    }
    rows.append(row);
  }
  show($("per-class"), card.metrics.per_class.length > 0);

  for (const [key, section, img] of [["curves", "curves", "curves-img"], ["confusion_matrix", "matrix", "matrix-img"]]) {
    if (card.figures[key]) {
      $(img).src = card.figures[key];
      show($(section), true);
    }
  }
  fillTrust(card.trust || {});
  if (card.missing.length) {
    $("missing").textContent = `Not published with this version: ${card.missing.join(", ")}.`;
    show($("missing"), true);
  }
  if (card.problem) {
    $("problem").textContent = `Some published files could not be verified and are not shown: ${card.problem}`;
    show($("problem"), true);
  }
}

function fillTrust(trust) {
  const cal = trust.calibration;
  const ood = trust.ood;
  if (!cal && !ood && !trust.drift) return;
  $("calibration").textContent = cal
    ? `${cal.method} (T = ${cal.temperature.toFixed(3)}): expected calibration error ${pct(cal.before.ece, 1)} before, ` +
      `${pct(cal.after.ece, 1)} after, on ${number(cal.report_images)} held-out photos`
    : "not calibrated (trained before calibration)";
  $("ood").textContent = ood
    ? `${pct(ood.heldout_abstain_rate, 1)} of ${number(ood.heldout_images)} held-out leaf photos and ` +
      `${pct(ood.ood_set_abstain_rate, 1)} of ${number(ood.ood_set_images)} photos that are no leaves are answered ` +
      "\"This does not look like a leaf photo\""
    : "no detector in this version";
  const drift = trust.drift;
  $("drift").textContent = drift
    ? `${number(drift.answers_seen)} answers; drift ${drift.status}` +
      (drift.psi ? ` (PSI ${drift.psi.max.toFixed(3)} over the last ${number(drift.window)}, alert above ${drift.alert_psi})` : "")
    : "–";
  if (trust.reliability_figure) {
    $("reliability-img").src = trust.reliability_figure;
    show($("reliability"), true);
  }
  show($("trust"), true);
}

async function main() {
  try {
    const card = await getJSON("/model/card.json");
    fill(card);
    $("status").textContent = `Model ${card.name}, version ${card.version}.`;
    document.title = `${card.name} ${card.version} — Leaf diagnosis`;
  } catch (error) {
    $("status").textContent = "";
    $("problem").textContent = `The model card could not be loaded: ${error.message}`;
    show($("problem"), true);
  }
}

main();
