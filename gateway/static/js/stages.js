/*
 * The stage badges in the header (state, model, where its weights came from) and the banner
 * while a stage is not ready, from GET /api/stages, polled every STAGES_POLL_MS.
 */
import { STAGE_STATES } from "./contract.js";
import { apiFetch, readJson } from "./http.js";
import { makeEl } from "./view.js";

const STAGES_POLL_MS = 2000;
const STAGES_TIMEOUT_MS = 1800;    // shorter than the poll period so polls never pile up
const STAGE_ORDER = ["asr", "llm", "tts"];

/** Polls forever; onResult(stages) with the stages object, or null when the gateway is unreachable. */
export async function pollStages(list, onResult) {
  let stages = null;
  try {
    const res = await apiFetch("/api/stages", { cache: "no-store" }, STAGES_TIMEOUT_MS);
    const body = await readJson(res);
    if (body && body.stages && typeof body.stages === "object") stages = body.stages;
  } catch (_) {
    stages = null;
  }
  try {
    if (stages) renderStages(list, stages);
    else renderGatewayUnreachable(list);
    await onResult(stages);
  } finally {
    setTimeout(() => pollStages(list, onResult), STAGES_POLL_MS);
  }
}

function stageBadge(name, info) {
  const state = info && typeof info.state === "string" ? info.state : "unknown";
  const li = makeEl("li", "stage");
  li.dataset.stage = name;
  li.dataset.stageState = state;
  li.appendChild(makeEl("span", "stage__name", name.toUpperCase()));
  li.appendChild(makeEl("span", "stage__state", state));
  const model = info && (info.model || info.backend) ? String(info.model || info.backend) : "";
  li.dataset.model = model;
  if (model) li.appendChild(makeEl("span", "stage__model", modelLabel(model)));
  // where the weights came from (local, hub-cache, hub, registry) and on which device
  const where = [info && info.source, info && info.device].filter(Boolean).join(" · ");
  if (where) li.appendChild(makeEl("span", "stage__source", where));
  li.title = ["backend", "model", "source", "device", "reason", "error"]
    .filter((k) => info && info[k]).map((k) => k + ": " + info[k]).join("\n");
  li.setAttribute("aria-label", name.toUpperCase() + " " + state + (model ? ", " + model : "") +
    (where ? ", " + where : ""));
  return li;
}

// A local path is shown by its last part ("/models/qwen2/" -> "qwen2"); hub ids stay whole.
function modelLabel(model) {
  if (!/^[/~.]/.test(model)) return model;
  const parts = model.split(/[/]+/).filter(Boolean);
  return parts.length ? parts[parts.length - 1] : model;
}

function renderStages(list, stages) {
  const names = STAGE_ORDER.filter((n) => n in stages);
  Object.keys(stages).forEach((n) => { if (names.indexOf(n) < 0) names.push(n); });
  // skip the DOM work when nothing shown changed (the payload also carries ever-changing counters)
  const signature = JSON.stringify(names.map((n) => {
    const i = stages[n] || {};
    return [n, i.state, i.backend, i.model, i.source, i.device, i.error];
  }));
  if (signature === list.dataset.signature) return;
  list.dataset.signature = signature;
  list.textContent = "";
  names.forEach((n) => list.appendChild(stageBadge(n, stages[n])));
}

function renderGatewayUnreachable(list) {
  if (list.dataset.signature === "unreachable") return;
  list.dataset.signature = "unreachable";
  list.textContent = "";
  const li = makeEl("li", "stage stage--unreachable", "gateway unreachable");
  li.dataset.stageState = "down";
  list.appendChild(li);
}

// What each state of a stage means for the user (null when it is fine); transient: the
// supervisor is bringing it back, so a turn waits for it. One entry per state in STAGE_STATES.
const STAGE_PROBLEMS = {
  ready: null,
  busy: null,
  loading: (label) => ({ text: label + " is loading its model", transient: true }),
  draining: (label) => ({ text: label + " is restarting", transient: true }),
  stuck: (label) => ({ text: label + " is not answering", transient: false }),
  failed: (label, info) => ({ text: label + " could not start" + (info.error ? ": " + info.error : ""), transient: false }),
  down: (label) => ({ text: label + " is down; supervisor restarts it", transient: true }),
};

function stageProblem(name, info) {
  const state = info && typeof info.state === "string" ? info.state : "unknown";
  const label = name.toUpperCase();
  if (STAGE_STATES.indexOf(state) < 0) return { text: label + " is " + state, transient: false };
  const problem = STAGE_PROBLEMS[state];
  return problem ? problem(label, info) : null;
}

/** The banner's text while any stage is not ready ("" when all are). */
export function stageNotice(stages) {
  const problems = !stages ? [] : Object.keys(stages).map((n) => stageProblem(n, stages[n])).filter(Boolean);
  if (!problems.length) return "";
  const subject = problems.length > 1 ? "they are" : "it is";
  const waits = problems.every((p) => p.transient);
  return problems.map((p) => p.text).join(". ") + ". " +
    (waits ? "Answers wait until " + subject + " back." : "Answers fail until " + subject + " fixed.");
}
