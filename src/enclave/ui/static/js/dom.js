// Small DOM helpers. Everything from the server or a model goes in through
// textContent or setAttribute, never through HTML parsing, so no string can
// become markup. URLs are checked before they become href/src attributes.

const SVG_NS = "http://www.w3.org/2000/svg";
const URL_ATTRIBUTES = new Set(["href", "src", "action", "formaction", "xlink:href"]);

/** The http(s) URL, normalised, or null: no javascript:, data:, relative or other URLs. */
export function httpUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** A URL safe to put in href/src: same-origin paths, or http(s). */
export function safeUrl(value) {
  const text = String(value ?? "").trim();
  if (text.startsWith("/") && !text.startsWith("//") && !text.startsWith("/\\")) return text;
  if (text.startsWith("#")) return text;
  return httpUrl(text);
}

function setAttributes(element, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") {
      element.textContent = String(value);
    } else if (name === "class") {
      element.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "dataset") {
      for (const [key, data] of Object.entries(value)) element.dataset[key] = String(data);
    } else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name.startsWith("on")) {
      throw new Error(`refusing a non-function event handler attribute: ${name}`);
    } else if (URL_ATTRIBUTES.has(name)) {
      const url = safeUrl(value);
      if (url !== null) element.setAttribute(name, url);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
}

function appendChildren(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("a", {href: "/x", class: "link"}, "text", otherNode): an element, built safely. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attrs);
  appendChildren(element, children);
  return element;
}

/** The same for SVG elements (charts). */
export function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  setAttributes(element, attrs);
  appendChildren(element, children);
  return element;
}

/** Replace an element's children. */
export function replaceChildren(element, ...children) {
  element.replaceChildren();
  appendChildren(element, children);
  return element;
}

export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`missing #${id}`);
  return element;
}

/** Show a message in a role=alert/status element (or clear it with ""). */
export function announce(element, message) {
  element.textContent = message || "";
  element.hidden = !message;
}

/** "3 Mar 2025, 14:05" in the reader's locale; the raw value when it is not a date. */
export function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function formatNumber(value) {
  return typeof value === "number" ? value.toLocaleString() : String(value ?? "");
}

/** A table row of cells; a Node is placed as is, anything else becomes text. */
export function row(cells, tag = "td") {
  return h("tr", {}, cells.map((cell) => h(tag, {}, cell)));
}

/** "p. 3", "pp. 3–5" or "" from a chunk location. */
export function pagesText(location) {
  if (!location || location.page_start == null) return "";
  const { page_start: start, page_end: end } = location;
  return end != null && end !== start ? `pp. ${start}–${end}` : `p. ${start}`;
}

/** "Policy › Leave › Annual" from a chunk location. */
export function headingText(location) {
  const path = (location && location.heading_path) || [];
  return path.join(" › ");
}
