/* Requests to the gateway: same origin, its cookie, an optional timeout; {"error": ...} bodies. */

export function apiFetch(url, options, timeoutMs) {
  const opts = Object.assign({ credentials: "same-origin" }, options || {});
  if (!timeoutMs || typeof AbortController === "undefined") return fetch(url, opts);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  opts.signal = ctl.signal;
  return fetch(url, opts).finally(() => clearTimeout(timer));
}

export async function readJson(res) {
  try {
    return await res.json();
  } catch (_) {
    return null;
  }
}

export function errorFromBody(body, res, fallback) {
  if (body && typeof body.error === "string" && body.error) return body.error;
  return fallback + " (HTTP " + res.status + ").";
}
