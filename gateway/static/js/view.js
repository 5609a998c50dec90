/*
 * What the person sees: the state (body[data-state] and the status line), and the conversation,
 * one <li> per turn: what they said (growing while they speak), the answer (its words appearing
 * as their audio plays), a note (stopped, interrupted, an error) and the turn's latency.
 * Everything from the server goes in as textContent, never as HTML.
 */
export const el = {};

export function findElements() {
  ["record", "stop", "clear", "persona", "status", "notice", "conversation", "stages", "visualizer",
   "record-hint", "empty-hint", "persona-info", "mode-hands-free", "mode-push-to-talk"]
    .forEach((id) => { el[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = document.getElementById(id); });
  el.scroller = el.conversation.parentElement;
}

export function makeEl(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** state: idle | listening | hearing | thinking | speaking | recording | error */
export function showState(state, message, pressed) {
  document.body.dataset.state = state;
  el.status.textContent = message;
  el.record.setAttribute("aria-pressed", pressed ? "true" : "false");
}

function atBottom() {
  const c = el.scroller;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 40;
}

// keep the newest turn in view, unless the person scrolled up
function withAutoScroll(fn) {
  const stick = atBottom();
  fn();
  el.emptyHint.hidden = el.conversation.children.length > 0;
  if (stick) el.scroller.scrollTop = el.scroller.scrollHeight;
}

export function addTurn(personaName, voice) {
  const li = makeEl("li", "turn");
  const user = makeEl("div", "msg msg--user");
  user.appendChild(makeEl("span", "msg__who", "You"));
  const userText = makeEl("p", "msg__text msg__text--pending", "…");
  user.appendChild(userText);
  const reply = makeEl("div", "msg msg--assistant");
  const who = makeEl("span", "msg__who", personaName);
  const voiceLabel = makeEl("span", "msg__voice", voice ? " · voice " + voice : "");
  who.appendChild(voiceLabel);
  reply.appendChild(who);
  const replyText = makeEl("p", "msg__text msg__text--pending", "…");
  reply.appendChild(replyText);
  const timing = makeEl("dl", "latency");
  timing.setAttribute("aria-label", "Latency of this answer");
  timing.hidden = true;
  reply.appendChild(timing);
  const note = makeEl("p", "msg__note");
  note.hidden = true;
  reply.appendChild(note);
  li.appendChild(user);
  li.appendChild(reply);
  withAutoScroll(() => el.conversation.appendChild(li));
  return { li, userText, replyText, timing, note, voice: voiceLabel };
}

/** Final text; `partial` keeps it marked as still growing (the transcript while they speak). */
export function setText(node, text, partial) {
  withAutoScroll(() => {
    node.textContent = text;
    node.classList.remove("msg__text--pending");
    node.classList.toggle("msg__text--partial", !!partial);
  });
}

export function isPending(node) {
  return node.classList.contains("msg__text--pending");
}

export function setNote(view, text, kind) {
  withAutoScroll(() => {
    view.note.textContent = text;
    view.note.hidden = false;
    view.note.classList.toggle("msg__note--error", kind === "error");
    view.note.classList.toggle("msg__note--interrupted", kind === "interrupted");
  });
}

// placeholders that never got real text do not stay as "…"
export function finalizePlaceholders(view) {
  if (isPending(view.userText)) setText(view.userText, "(no transcript)");
  if (isPending(view.replyText)) setText(view.replyText, "(no reply)");
  view.userText.classList.remove("msg__text--partial");
}

export function setSpokenVoice(view, voice) {
  setText(view.voice, " · voice " + voice);
  view.voice.dataset.spoken = voice;
}

export function clearConversation() {
  withAutoScroll(() => { el.conversation.textContent = ""; });
}

/** rows: [{key, label, seconds}]; title: the tooltip (every number the server gave). */
export function showLatency(view, rows, title) {
  const dl = view.timing;
  withAutoScroll(() => {
    dl.textContent = "";
    rows.forEach((r) => {
      if (!(typeof r.seconds === "number" && isFinite(r.seconds) && r.seconds >= 0)) return;
      const row = makeEl("div", "latency__item");
      row.dataset.key = r.key;
      row.appendChild(makeEl("dt", "latency__label", r.label));
      row.appendChild(makeEl("dd", "latency__value", r.seconds.toFixed(2) + " s"));
      dl.appendChild(row);
    });
    dl.title = title || "";
    dl.hidden = !dl.children.length;
  });
}

export function showNotice(text) {
  const was = el.notice.textContent;
  el.notice.textContent = text;
  el.notice.hidden = !text;
  return was !== text;
}
