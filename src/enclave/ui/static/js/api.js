// The one way pages talk to the server: same-origin fetch with the session
// cookie, the CSRF token on unsafe methods, JSON in and out, and errors
// turned into readable messages from {"error": {"message": ...}}.

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") || "" : "";
}

/** The signed-in key, from <meta name="enclave-user">: {key_id, key_name, workspace, is_admin,
 *  role, user_id, user_name} (user_*: a person signed in with the identity provider). */
export function currentUser() {
  const meta = document.querySelector('meta[name="enclave-user"]');
  try {
    return meta ? JSON.parse(meta.getAttribute("content") || "{}") : {};
  } catch {
    return {};
  }
}

export function requestHeaders(method, extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  if (UNSAFE.has(method.toUpperCase())) headers["X-CSRF-Token"] = csrfToken();
  return headers;
}

function signInAgain() {
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/login?next=${encodeURIComponent(next)}`);
}

/** A readable message from an error response body (JSON or text). */
export function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    const error = body && body.error;
    if (error && typeof error.message === "string") return error.message;
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through
  }
  if (status === 0) return "The server could not be reached.";
  return text && text.length < 300 ? text : `The request failed (HTTP ${status}).`;
}

async function failure(response) {
  const text = await response.text().catch(() => "");
  let code = null;
  try {
    code = JSON.parse(text).error.code || null;
  } catch {
    code = null;
  }
  if (response.status === 401) signInAgain();
  return new ApiError(response.status, errorMessage(response.status, text), code);
}

/** fetch(), raising ApiError for non-2xx answers; returns the Response. */
export async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: requestHeaders(method, headers), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "The server could not be reached.");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

/** JSON API call: the parsed body, or null for 204. */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/**
 * Upload a FormData with XMLHttpRequest, reporting upload progress (fetch
 * cannot). onProgress receives a fraction 0..1. Resolves with the parsed JSON.
 */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        if (onProgress) onProgress(1);
        try {
          resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
        } catch {
          reject(new ApiError(xhr.status, "The server sent an unreadable answer."));
        }
        return;
      }
      if (xhr.status === 401) signInAgain();
      reject(new ApiError(xhr.status, errorMessage(xhr.status, xhr.responseText)));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "The upload failed: the server could not be reached.")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "The upload was cancelled.")));
    xhr.send(formData);
  });
}
