/*
 * The names the page shares with the gateway, as proto/ declares them: the upload flow's
 * Server-Sent Events (proto/events.py) and the states of a stage in GET /api/stages
 * (proto/states.py). tests/test_contracts.py checks that they match.
 */

// GET /stream/{id}: transcript, chunk..., then done, or error at any point
export const SSE_EVENTS = Object.freeze({
  TRANSCRIPT: "transcript",
  CHUNK: "chunk",
  DONE: "done",
  ERROR: "error",
});

// a stage's state, in the gateway's precedence order
export const STAGE_STATES = Object.freeze(["ready", "busy", "loading", "draining", "stuck", "failed", "down"]);
