// A small, safe Markdown renderer for model output.
//
// Model text is untrusted: it may contain HTML, scripts or javascript: links
// put there by a prompt injection. This renderer never parses HTML. It builds
// DOM nodes with createElement and textContent only, so "<script>" in the
// text stays visible text. Links are made only for http(s) URLs and open in a
// new tab with rel="noopener noreferrer". It is re-run on the whole text as
// tokens stream in, so unfinished syntax (an open code fence) renders sensibly.
//
// Supported: paragraphs, line breaks, headings (shifted down two levels to
// sit under the page's headings), bullet and numbered lists (nested by
// indentation), block quotes, fenced code, horizontal rules, simple tables,
// inline code, bold, italic, strikethrough, links, bare URLs, and citation
// markers "[n]".

import { httpUrl } from "./dom.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])(?:\s+(.*))?$/;
const TABLE_RULE = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;
const MAX_DEPTH = 8;

const INLINE = new RegExp(
  [
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1,2 code span
    "\\[([^\\]\\n]+)\\]\\(\\s*<?([^)\\s>]+)>?(?:\\s+\"[^\"\\n]*\")?\\s*\\)", // 3,4 link
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 5 bold
    "(?<!\\w)__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)", // 6 bold
    "~~(?=\\S)([\\s\\S]*?\\S)~~", // 7 strikethrough
    "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*", // 8 italic
    "(?<![\\w])_(?=[^\\s_])([^_\\n]*?[^\\s_])_(?![\\w])", // 9 italic
    "(https?:\\/\\/[^\\s<>\"'`]*[^\\s<>\"'`.,;:!?)\\]])", // 10 bare URL
    "\\[(\\d{1,3})\\]", // 11 citation marker
    "(\\n)", // 12 line break
  ].join("|"),
  "g",
);

function link(url, children) {
  const a = document.createElement("a");
  a.setAttribute("href", url);
  a.setAttribute("target", "_blank");
  a.setAttribute("rel", "noopener noreferrer");
  a.append(...children);
  return a;
}

function wrap(tag, children) {
  const element = document.createElement(tag);
  element.append(...children);
  return element;
}

/** Inline Markdown to an array of nodes. */
export function renderInline(text, depth = 0, inLink = false) {
  const nodes = [];
  if (depth > MAX_DEPTH) return [document.createTextNode(text)];
  const pattern = new RegExp(INLINE.source, "g");
  let last = 0;
  let match;
  while ((match = pattern.exec(text)) !== null) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    last = pattern.lastIndex;
    const m = match;
    if (m[2] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
      nodes.push(code);
    } else if (m[3] !== undefined) {
      const url = httpUrl(m[4]);
      const label = renderInline(m[3], depth + 1, true);
      if (url && !inLink) nodes.push(link(url, label));
      else nodes.push(document.createTextNode(m[0]));
    } else if (m[5] !== undefined || m[6] !== undefined) {
      nodes.push(wrap("strong", renderInline(m[5] ?? m[6], depth + 1, inLink)));
    } else if (m[7] !== undefined) {
      nodes.push(wrap("del", renderInline(m[7], depth + 1, inLink)));
    } else if (m[8] !== undefined || m[9] !== undefined) {
      nodes.push(wrap("em", renderInline(m[8] ?? m[9], depth + 1, inLink)));
    } else if (m[10] !== undefined) {
      const url = httpUrl(m[10]);
      if (url && !inLink) nodes.push(link(url, [document.createTextNode(m[10])]));
      else nodes.push(document.createTextNode(m[10]));
    } else if (m[11] !== undefined) {
      const marker = document.createElement("span");
      marker.className = "cite-marker";
      marker.textContent = `[${m[11]}]`;
      nodes.push(marker);
    } else if (m[12] !== undefined) {
      nodes.push(document.createElement("br"));
    }
    if (pattern.lastIndex === match.index) pattern.lastIndex += 1; // never loop on empty
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function splitRow(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines, start, depth) {
  const header = splitRow(lines[start]);
  const alignments = splitRow(lines[start + 1]).map((cell) =>
    cell.endsWith(":") ? (cell.startsWith(":") ? "center" : "right") : "left",
  );
  const element = document.createElement("table");
  const head = document.createElement("thead");
  const headRow = document.createElement("tr");
  header.forEach((cell, index) => {
    const th = document.createElement("th");
    th.setAttribute("scope", "col");
    th.className = `align-${alignments[index] || "left"}`;
    th.append(...renderInline(cell, depth + 1));
    headRow.append(th);
  });
  head.append(headRow);
  element.append(head);
  const body = document.createElement("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    const tr = document.createElement("tr");
    const cells = splitRow(lines[i]);
    header.forEach((_, index) => {
      const td = document.createElement("td");
      td.className = `align-${alignments[index] || "left"}`;
      td.append(...renderInline(cells[index] ?? "", depth + 1));
      tr.append(td);
    });
    body.append(tr);
    i += 1;
  }
  element.append(body);
  const scroller = document.createElement("div");
  scroller.className = "table-scroll";
  scroller.append(element);
  return [scroller, i];
}

function list(lines, start, depth) {
  const first = ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const indent = first[1].length;
  const element = document.createElement(ordered ? "ol" : "ul");
  if (ordered) {
    const number = parseInt(first[2], 10);
    if (number !== 1) element.setAttribute("start", String(number));
  }
  let i = start;
  while (i < lines.length) {
    const item = ITEM.exec(lines[i]);
    if (!item || item[1].length !== indent || /\d/.test(item[2]) !== ordered) break;
    const content = [item[3] ?? ""];
    const contentIndent = indent + item[2].length + 1;
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        // A blank line ends the item unless indented content follows.
        const next = lines[i + 1];
        if (next !== undefined && next.startsWith(" ".repeat(Math.min(contentIndent, indent + 2))) && next.trim()) {
          content.push("");
          i += 1;
          continue;
        }
        break;
      }
      const nested = ITEM.exec(line);
      if (nested && nested[1].length <= indent) break;
      if (!nested && !line.startsWith(" ") && startsBlock(line)) break;
      const stripped = line.replace(new RegExp(`^ {0,${contentIndent}}`), "");
      content.push(stripped);
      i += 1;
    }
    const li = document.createElement("li");
    const rest = content.slice(1);
    const blockAt = rest.findIndex((line) => startsBlock(line) || line === "");
    if (blockAt === -1) li.append(...renderInline(content.join("\n"), depth + 1));
    else {
      // The item's own text inline (a tight list), then its nested blocks.
      li.append(...renderInline([content[0], ...rest.slice(0, blockAt)].join("\n"), depth + 1));
      li.append(renderBlocks(rest.slice(blockAt), depth + 1));
    }
    element.append(li);
    // Blank lines between items keep the list going.
    let j = i;
    while (j < lines.length && !lines[j].trim()) j += 1;
    const following = j < lines.length ? ITEM.exec(lines[j]) : null;
    if (j > i && following && following[1].length === indent && /\d/.test(following[2]) === ordered) i = j;
  }
  return [element, i];
}

/** Block Markdown (already split into lines) to a DocumentFragment. */
export function renderBlocks(lines, depth = 0) {
  const fragment = document.createDocumentFragment();
  if (depth > MAX_DEPTH) {
    fragment.append(document.createTextNode(lines.join("\n")));
    return fragment;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const code = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(marker[0].repeat(marker.length)) && lines[i].trim().replace(new RegExp(`^\\${marker[0]}+`), "").trim() === "")) {
        code.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or past the end while streaming)
      const pre = document.createElement("pre");
      const element = document.createElement("code");
      if (fence[2]) element.dataset.language = fence[2];
      element.textContent = code.join("\n");
      pre.append(element);
      fragment.append(pre);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + 2, 6);
      const element = document.createElement(`h${level}`);
      element.append(...renderInline(heading[2] ?? "", depth + 1));
      fragment.append(element);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      fragment.append(document.createElement("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && lines[i].trim() && QUOTE.test(lines[i])) {
        quoted.push(lines[i].replace(QUOTE, ""));
        i += 1;
      }
      const element = document.createElement("blockquote");
      element.append(renderBlocks(quoted, depth + 1));
      fragment.append(element);
      continue;
    }
    if (ITEM.test(line)) {
      const [element, next] = list(lines, i, depth);
      fragment.append(element);
      i = next;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const [element, next] = table(lines, i, depth);
      fragment.append(element);
      i = next;
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && (paragraph.length === 0 || !startsBlock(lines[i]))) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    const element = document.createElement("p");
    element.append(...renderInline(paragraph.join("\n"), depth + 1));
    fragment.append(element);
  }
  return fragment;
}

/** Markdown text to a DocumentFragment of safe nodes. */
export function renderMarkdown(text) {
  return renderBlocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"));
}
