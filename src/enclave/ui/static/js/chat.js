// The chat page: conversations, streaming answers, and what grounding and
// apps add to an answer (citations, quoted extractive answers, clarifying
// questions, disagreement, abstention, pending actions).
//
// Conversations live on the server (/api/conversations). Sending a message
// POSTs it to /api/conversations/{id}/messages, which streams the same chunks
// as /v1/chat/completions; the server stores both sides, so reloading the page
// shows the same conversation. Stop aborts the fetch; the server keeps the
// partial answer marked as cancelled, and the page marks it "Stopped".

import { api, ApiError, request } from "./api.js";
import { announce, byId, formatTime, h, headingText, pagesText, replaceChildren } from "./dom.js";
import { initLayout } from "./layout.js";
import { renderMarkdown } from "./markdown.js";
import { readEvents } from "./sse.js";

// Top-level fields of a chat answer that Enclave adds to OpenAI's shape.
const EXTRA_FIELDS = ["citations", "disagreement", "grounding", "app"];

const ui = {
  model: byId("model"),
  knowledge: byId("knowledge-options"),
  newChat: byId("new-chat"),
  conversations: byId("conversations"),
  messages: byId("messages"),
  empty: byId("empty-chat"),
  composer: byId("composer"),
  input: byId("message"),
  send: byId("send"),
  stop: byId("stop"),
  status: byId("chat-status"),
  dialog: byId("citation-dialog"),
  dialogTitle: byId("citation-title"),
  dialogBody: byId("citation-body"),
  dialogClose: byId("citation-close"),
};

const state = {
  conversationId: null,
  conversations: [],
  streaming: null, // the AbortController of the answer being streamed
  abstainMessage: document.querySelector('meta[name="enclave-abstain"]')?.getAttribute("content") || "",
};

function showError(message) {
  announce(ui.status, message);
}

function conversationUrl(id) {
  return id ? `/?c=${encodeURIComponent(id)}` : "/";
}

// -- models and knowledge ----------------------------------------------------

async function loadModels(preselect) {
  let models = [];
  try {
    // Only models that chat: an embedding model would answer every message with an error.
    models = (await api("/v1/models")).data
      .filter((model) => !model.capabilities || model.capabilities.includes("chat"))
      .map((model) => model.id);
  } catch (error) {
    showError(`Models could not be loaded: ${error.message}`);
  }
  const plain = models.filter((id) => !id.startsWith("app/"));
  const apps = models.filter((id) => id.startsWith("app/"));
  const option = (id) => h("option", { value: id }, id);
  replaceChildren(
    ui.model,
    plain.length && apps.length ? h("optgroup", { label: "Models" }, plain.map(option)) : plain.map(option),
    apps.length ? h("optgroup", { label: "Apps" }, apps.map(option)) : null,
  );
  if (preselect) selectModel(preselect);
}

function selectModel(id) {
  if (!id) return;
  const found = Array.from(ui.model.options).some((option) => option.value === id);
  if (found) ui.model.value = id;
  else showError(`The model '${id}' is not available to this key.`);
}

async function loadKnowledge() {
  try {
    const bases = (await api("/api/knowledge")).data;
    if (!bases.length) {
      replaceChildren(ui.knowledge, h("p", { class: "hint" }, "No knowledge bases yet. ", h("a", { href: "/knowledge" }, "Create one")));
      return;
    }
    replaceChildren(
      ui.knowledge,
      bases.map((base) =>
        h(
          "label",
          { class: "check" },
          h("input", { type: "checkbox", name: "knowledge", value: base.name }),
          ` ${base.name}`,
        ),
      ),
    );
  } catch (error) {
    replaceChildren(ui.knowledge, h("p", { class: "hint" }, error.message));
  }
}

function selectedKnowledge() {
  return Array.from(ui.knowledge.querySelectorAll('input[name="knowledge"]:checked')).map((box) => box.value);
}

// -- conversations list --------------------------------------------------------

async function loadConversations() {
  try {
    state.conversations = (await api("/api/conversations")).data;
  } catch (error) {
    showError(`Conversations could not be loaded: ${error.message}`);
    return;
  }
  renderConversations();
}

function renderConversations() {
  replaceChildren(
    ui.conversations,
    state.conversations.map((conversation) => conversationItem(conversation)),
  );
  if (!state.conversations.length) {
    ui.conversations.append(h("li", { class: "hint" }, "No conversations yet."));
  }
}

function conversationItem(conversation) {
  const current = conversation.id === state.conversationId;
  const link = h(
    "a",
    {
      href: conversationUrl(conversation.id),
      class: "conversation-link",
      "aria-current": current ? "page" : null,
      title: conversation.updated_at ? `Updated ${formatTime(conversation.updated_at)}` : null,
    },
    conversation.title || "Untitled",
  );
  link.addEventListener("click", (event) => {
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    openConversation(conversation.id);
  });
  const item = h(
    "li",
    { class: ["conversation", current && "current"], dataset: { id: conversation.id } },
    link,
    h(
      "span",
      { class: "conversation-actions" },
      h("button", { type: "button", class: "small", onclick: () => startRename(item, conversation) }, "Rename"),
      h("button", { type: "button", class: "small danger", onclick: () => startDelete(item, conversation) }, "Delete"),
    ),
  );
  return item;
}

function startRename(item, conversation) {
  const inputId = `title-${conversation.id}`;
  const input = h("input", { id: inputId, name: "title", type: "text", maxlength: "200", required: true, value: conversation.title || "" });
  const form = h(
    "form",
    { class: "rename-form" },
    h("label", { for: inputId }, "Conversation title"),
    input,
    h("button", { type: "submit", class: "small primary" }, "Save"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = input.value.trim();
    if (!title) return;
    try {
      await api(`/api/conversations/${encodeURIComponent(conversation.id)}`, { method: "PATCH", json: { title } });
      conversation.title = title;
    } catch (error) {
      showError(`Could not rename: ${error.message}`);
    }
    renderConversations();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") renderConversations();
  });
  replaceChildren(item, form);
  input.focus();
  input.select();
}

function startDelete(item, conversation) {
  const keep = h("button", { type: "button", class: "small", onclick: () => renderConversations() }, "Keep");
  replaceChildren(
    item,
    h(
      "div",
      { class: "confirm-inline" },
      h("span", {}, "Delete conversation?"),
      h(
        "button",
        {
          type: "button",
          class: "small danger",
          onclick: async () => {
            try {
              await api(`/api/conversations/${encodeURIComponent(conversation.id)}`, { method: "DELETE" });
            } catch (error) {
              showError(`Could not delete: ${error.message}`);
            }
            if (conversation.id === state.conversationId) startNewChat();
            await loadConversations();
          },
        },
        "Yes, delete",
      ),
      keep,
    ),
  );
  keep.focus();
}

// -- opening a conversation ----------------------------------------------------

function stopStreaming() {
  if (state.streaming) state.streaming.abort();
}

function clearMessages() {
  replaceChildren(ui.messages);
  ui.empty.hidden = false;
}

function startNewChat({ push = true } = {}) {
  stopStreaming();
  state.conversationId = null;
  clearMessages();
  showError("");
  if (push) history.pushState({ c: null }, "", "/");
  renderConversations();
  ui.input.focus();
}

async function openConversation(id, { push = true, keepModel = false } = {}) {
  stopStreaming();
  showError("");
  let conversation;
  try {
    conversation = await api(`/api/conversations/${encodeURIComponent(id)}`);
  } catch (error) {
    showError(error instanceof ApiError && error.status === 404 ? "That conversation was not found." : error.message);
    startNewChat({ push: false });
    return;
  }
  state.conversationId = conversation.id;
  if (push) history.pushState({ c: conversation.id }, "", conversationUrl(conversation.id));
  if (conversation.model && !keepModel) {
    if (Array.from(ui.model.options).some((option) => option.value === conversation.model)) {
      ui.model.value = conversation.model;
    }
  }
  clearMessages();
  for (const message of conversation.messages || []) {
    if (message.role === "user") appendUserMessage(message.content || "");
    else if (message.role === "assistant") {
      const view = new AssistantMessage(message.extra?.model || conversation.model || "");
      ui.messages.append(view.article);
      view.text = message.content || "";
      const error = message.extra?.error;
      view.finish({
        extra: message.extra || {},
        cancelled: Boolean(message.extra?.cancelled),
        error: error && typeof error === "object" ? error.message || "The answer failed." : error,
      });
    }
  }
  ui.empty.hidden = ui.messages.childElementCount > 0;
  renderConversations();
  scrollToEnd(true);
}

// -- messages --------------------------------------------------------------------

function nearEnd() {
  const log = ui.messages;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function scrollToEnd(force = false) {
  if (force || nearEnd()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function appendUserMessage(text) {
  ui.empty.hidden = true;
  const article = h(
    "article",
    { class: "message user" },
    h("header", { class: "message-meta" }, h("span", { class: "message-role" }, "You")),
    h("div", { class: "message-body plain" }, text),
  );
  ui.messages.append(article);
  scrollToEnd(true);
  return article;
}

class AssistantMessage {
  constructor(model) {
    this.model = model;
    this.text = "";
    this.pending = false;
    this.finished = false;
    this.body = h("div", { class: "message-body markdown" });
    this.extras = h("div", { class: "message-extras" });
    this.article = h(
      "article",
      { class: "message assistant", "aria-busy": "true" },
      h(
        "header",
        { class: "message-meta" },
        h("span", { class: "message-role" }, "Assistant"),
        model ? h("span", { class: "message-model" }, model) : null,
      ),
      this.body,
      this.extras,
    );
  }

  append(delta) {
    this.text += delta;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      if (this.finished) return; // finish() has drawn the answer as what it is
      this.render();
      scrollToEnd();
    });
  }

  render() {
    replaceChildren(this.body, renderMarkdown(this.text));
  }

  finish({ extra = {}, cancelled = false, error = null, live = false }) {
    this.finished = true;
    this.article.setAttribute("aria-busy", "false");
    const grounding = extra.grounding && typeof extra.grounding === "object" ? extra.grounding : null;
    const citations = Array.isArray(extra.citations) ? extra.citations : [];
    const kind = cancelled || error ? "plain" : answerKind(grounding, extra, this.text);
    if (kind === "abstained") {
      this.article.classList.add("abstained");
      this.body.before(h("p", { class: "badge badge-notfound" }, "Not found"));
      replaceChildren(this.body, abstentionView(this.text));
    } else if (kind === "clarify") {
      replaceChildren(this.body, clarifyView(grounding, citations, this.article));
    } else if (kind === "extractive") {
      replaceChildren(this.body, extractiveView(this.text, citations));
    } else {
      this.render();
    }
    if (citations.length) this.extras.append(citationRow(citations));
    if (extra.disagreement) this.extras.append(disagreementSection(extra.disagreement));
    if (grounding && Array.isArray(grounding.unsupported) && grounding.unsupported.length) {
      this.extras.append(unsupportedNote(grounding.unsupported, this.text));
    }
    const app = extra.app;
    if (app && Array.isArray(app.tool_calls) && app.tool_calls.length) this.extras.append(toolCalls(app.tool_calls));
    if (app && app.pending_action) this.extras.append(actionCard(app.pending_action, live ? "pending" : null, extra.model || this.model));
    if (cancelled) {
      this.article.classList.add("stopped");
      this.extras.append(h("p", { class: "message-note" }, "Stopped"));
    }
    if (error) {
      this.article.classList.add("failed");
      this.extras.append(h("p", { class: "message-error" }, `Error: ${error}`));
    }
    if (!this.text && !error && !cancelled && !this.extras.childElementCount) {
      this.body.append(h("p", { class: "hint" }, "(empty answer)"));
    }
  }
}

// -- grounded answers: extractive quotes, clarifying questions, abstention -------

// How a finished answer is shown: "abstained" (the sources do not answer; the text
// is the abstain message, perhaps followed by what the sources do cover),
// "clarify" (a question back, with the readings to choose from), "extractive"
// (the sources' own sentences, one a line, each cited) or "plain" (Markdown).
function answerKind(grounding, extra, text) {
  if (!grounding) return "plain";
  if (grounding.abstained) {
    // An app may answer from its tools although its knowledge had nothing: only the
    // abstain message itself (and what follows it) marks its answer as not found.
    const message = state.abstainMessage.trim();
    if (!extra.app || (message && text.trim().startsWith(message))) return "abstained";
    return "plain";
  }
  const clarify = grounding.clarify;
  if (clarify && Array.isArray(clarify.options) && clarify.options.length) return "clarify";
  const extractive = grounding.answer_style === "extractive" || grounding.fallback === "extractive";
  if (extractive && !extra.disagreement && text.trim()) return "extractive";
  return "plain";
}

// "The sentence. [1]" or "The sentence. [1][2]": the sentence and its numbers.
const QUOTED_LINE = /^(.*?\S)((?:\s*\[\d+\])+)\s*$/;

function extractiveView(text, citations) {
  const byNumber = new Map(citations.map((citation) => [citation.number, citation]));
  const lines = text.split("\n").map((line) => line.trim()).filter(Boolean);
  return h(
    "div",
    { class: "extractive-answer" },
    h("p", { class: "extract-caption" }, "Quoted from your sources"),
    lines.map((line) => {
      const found = QUOTED_LINE.exec(line);
      if (!found) return h("p", { class: "extract-note" }, line);
      const numbers = Array.from(found[2].matchAll(/\[(\d+)\]/g), (m) => Number(m[1]));
      return h(
        "blockquote",
        { class: "extract" },
        h("mark", { class: "quote" }, found[1]),
        numbers.map((number) => [" ", citationChip(byNumber.get(number), number)]),
      );
    }),
  );
}

function abstentionView(text) {
  const message = state.abstainMessage.trim();
  const trimmed = text.trim();
  if (!message || !trimmed.startsWith(message) || trimmed === message) return renderMarkdown(text);
  // What the sources do cover ("The sources mention cluster but not GPUs, ...").
  return [
    h("p", {}, message),
    h("p", { class: "abstain-coverage" }, trimmed.slice(message.length).trim()),
  ];
}

// The user's message this answer replies to: the nearest one above it.
function questionBefore(article) {
  for (let node = article.previousElementSibling; node; node = node.previousElementSibling) {
    if (node.matches("article.message.user")) return node.querySelector(".message-body")?.textContent.trim() || "";
  }
  return "";
}

function clarifyView(grounding, citations, article) {
  const clarify = grounding.clarify;
  const byNumber = new Map(citations.map((citation) => [citation.number, citation]));
  const buttons = clarify.options.map((option) => {
    const citation = byNumber.get(option.number);
    const source = option.document?.name || citation?.document?.name || "";
    const button = h(
      "button",
      { type: "button", class: "clarify-option", "aria-pressed": "false" },
      h("span", { class: "clarify-label" }, option.label || "This one"),
      option.quote ? h("q", { class: "clarify-quote" }, option.quote) : null,
      option.number != null
        ? h("span", { class: "clarify-cite", title: source }, `[${option.number}]${source ? ` ${source}` : ""}`)
        : null,
    );
    button.addEventListener("click", async () => {
      const question = questionBefore(article);
      const followUp = question ? `${question} (${option.label})` : String(option.label || "");
      if (!followUp || state.streaming) return;
      for (const other of buttons) other.disabled = true;
      button.setAttribute("aria-pressed", "true");
      const knowledge = Array.isArray(grounding.knowledge) && grounding.knowledge.length ? grounding.knowledge : null;
      const sent = await sendMessage(followUp, { knowledge });
      if (!sent) {
        button.setAttribute("aria-pressed", "false");
        for (const other of buttons) other.disabled = false;
      }
    });
    return button;
  });
  return h(
    "div",
    { class: "clarify" },
    h("p", { class: "clarify-question" }, clarify.question || "Which one do you mean?"),
    h("div", { class: "clarify-options", role: "group", "aria-label": "Choose what you mean" }, buttons),
  );
}

function unsupportedNote(sentences, text) {
  const flat = (value) => value.split(/\s+/).join(" ").trim();
  const shown = flat(text);
  // Kept in the text (the "flag" policy) or taken out of it ("remove").
  const kept = sentences.some((sentence) => sentence && shown.includes(flat(sentence)));
  const count = sentences.length;
  return h(
    "details",
    { class: "unsupported-note" },
    h("summary", {}, `${count} unsupported sentence${count === 1 ? "" : "s"} ${kept ? "flagged" : "removed"}`),
    h("ul", {}, sentences.map((sentence) => h("li", {}, sentence))),
  );
}

// -- citations, disagreement, tool calls, pending actions ------------------------

function citationLabel(citation) {
  const name = citation.document?.name || citation.title || "source";
  return `Citation ${citation.number}: ${name}`;
}

// A citation's [n] chip, opening its quote; plain text when the number cites nothing.
function citationChip(citation, number = citation?.number) {
  if (!citation) return h("span", { class: "cite-marker" }, `[${number}]`);
  return h(
    "button",
    {
      type: "button",
      class: "citation",
      "aria-label": citationLabel(citation),
      title: citation.document?.name || "",
      onclick: () => openCitation(citation),
    },
    `[${citation.number}]`,
  );
}

function citationRow(citations) {
  return h(
    "div",
    { class: "citations" },
    h("span", { class: "citations-label" }, "Sources"),
    citations.map((citation) => citationChip(citation)),
  );
}

function locationText(location) {
  return [pagesText(location), headingText(location)].filter(Boolean).join(" · ");
}

function openCitation(citation) {
  const title = `Citation ${citation.number}`;
  ui.dialog.setAttribute("aria-label", title);
  ui.dialogTitle.textContent = title;
  const details = [
    ["Document", citation.document?.name || ""],
    ["Title", citation.title || ""],
    ["Knowledge base", citation.knowledge_base || ""],
    ["Location", locationText(citation.location) || "—"],
    // The fused ranking score (about 0.01-0.03) means nothing to a reader; the cosine
    // similarity to the question does, so that is shown, explained.
    [
      "Relevance",
      typeof citation.similarity === "number"
        ? `${Math.round(citation.similarity * 100)}% similar to the question (cosine similarity of the embeddings)`
        : "",
    ],
  ].filter(([, value]) => value);
  replaceChildren(
    ui.dialogBody,
    h("blockquote", { class: "quote" }, citation.quote || ""),
    h("dl", { class: "details" }, details.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])),
  );
  ui.dialog.showModal();
  ui.dialogClose.focus();
}

function claimItem(claim) {
  const source = [claim.document?.name, pagesText(claim.location)].filter(Boolean).join(", ");
  return h(
    "li",
    { class: "claim" },
    h("blockquote", { class: "quote" }, claim.quote || claim.sentence || ""),
    h("p", { class: "claim-source" }, claim.number != null ? `[${claim.number}] ` : "", source),
  );
}

// What the sources disagree about, by the question's answer type.
const DISAGREEMENT_KINDS = {
  person: "who it is",
  organisation: "which organisation",
  number: "the figure",
  date: "the date",
  place: "the place",
  yesno: "yes or no",
};

function disagreementSection(disagreement) {
  const column = (heading, claims) =>
    h(
      "div",
      { class: "disagreement-column" },
      h("h4", {}, heading),
      claims && claims.length ? h("ul", { class: "claims" }, claims.map(claimItem)) : h("p", { class: "hint" }, "None"),
    );
  const about = DISAGREEMENT_KINDS[disagreement.kind];
  return h(
    "section",
    { class: "disagreement", dataset: disagreement.kind ? { kind: disagreement.kind } : {} },
    h("h3", {}, about ? `Sources disagree on ${about}` : "Sources disagree"),
    h(
      "div",
      { class: "disagreement-columns" },
      column("Supporting", disagreement.supporting),
      column("Contradicting", disagreement.contradicting),
    ),
  );
}

function toolCalls(calls) {
  return h(
    "details",
    { class: "tool-calls" },
    h("summary", {}, `Tool calls (${calls.length})`),
    h(
      "ul",
      {},
      calls.map((call) =>
        h(
          "li",
          {},
          h("code", {}, call.operation || call.operation_id || call.name || "call"),
          call.status ? ` ${call.status}` : "",
          call.http_status ? ` (HTTP ${call.http_status})` : "",
        ),
      ),
    ),
  );
}

const DECIDED = { executed: "Confirmed", confirmed: "Confirmed", cancelled: "Cancelled", expired: "Expired" };

function actionCard(action, knownStatus, model) {
  const status = h("p", { class: "action-status", "aria-live": "polite" });
  const buttons = h("div", { class: "action-buttons" });
  const decide = (text) => {
    buttons.remove();
    status.textContent = text;
  };
  const confirm = h("button", { type: "button", class: "primary" }, "Confirm");
  const cancel = h("button", { type: "button" }, "Cancel");
  const run = (kind) => async () => {
    confirm.disabled = true;
    cancel.disabled = true;
    const ok = await respondToAction(action, kind, model);
    if (ok) decide(kind === "confirm" ? "Confirmed" : "Cancelled");
    else {
      confirm.disabled = false;
      cancel.disabled = false;
      refreshActionStatus(action, decide); // it may have been decided elsewhere, or expired
    }
  };
  confirm.addEventListener("click", run("confirm"));
  cancel.addEventListener("click", run("cancel"));
  buttons.append(confirm, cancel);
  const args = action.arguments && Object.keys(action.arguments).length ? JSON.stringify(action.arguments, null, 2) : "(no arguments)";
  const card = h(
    "div",
    { class: "action-card", role: "group", "aria-label": "Pending action" },
    h("p", { class: "action-title" }, "The app asks before it runs ", h("code", {}, action.operation || action.operation_id || "an operation"), action.api ? ` on ${action.api}` : ""),
    h("pre", { class: "action-arguments" }, h("code", {}, args)),
    action.expires_at ? h("p", { class: "hint" }, `Expires ${formatTime(action.expires_at)}`) : null,
    buttons,
    status,
  );
  if (knownStatus && DECIDED[knownStatus]) decide(DECIDED[knownStatus]);
  else if (!knownStatus) refreshActionStatus(action, decide);
  return card;
}

async function refreshActionStatus(action, decide) {
  try {
    const current = await api(`/api/actions/${encodeURIComponent(action.id)}`);
    if (current.status !== "pending" && DECIDED[current.status]) decide(DECIDED[current.status]);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) decide("No longer available");
  }
}

async function respondToAction(action, kind, model) {
  if (state.streaming || !state.conversationId) return false;
  const appModel = model && model.startsWith("app/") ? model : ui.model.value;
  appendUserMessage(kind === "confirm" ? "Confirmed." : "Cancelled.");
  const view = new AssistantMessage(appModel);
  ui.messages.append(view.article);
  scrollToEnd(true);
  const body = { content: null, model: appModel, [kind]: action.id };
  const result = await streamAnswer(state.conversationId, body, view);
  return !result.error && !result.cancelled;
}

// -- sending and streaming ---------------------------------------------------------

function setStreaming(on) {
  ui.stop.disabled = !on;
  ui.send.disabled = on;
  ui.composer.setAttribute("aria-busy", on ? "true" : "false");
}

async function streamAnswer(conversationId, body, view) {
  const controller = new AbortController();
  state.streaming = controller;
  setStreaming(true);
  const extra = {};
  let cancelled = false;
  let error = null;
  try {
    const response = await request(`/api/conversations/${encodeURIComponent(conversationId)}/messages`, {
      method: "POST",
      json: body,
      signal: controller.signal,
      headers: { Accept: "text/event-stream" },
    });
    for await (const event of readEvents(response)) {
      if (event.object === "enclave.message") continue;
      if (event.error) {
        error = event.error.message || "The answer failed.";
        continue;
      }
      for (const choice of event.choices || []) {
        if ((choice.index ?? 0) !== 0) continue;
        const delta = choice.delta && choice.delta.content;
        if (delta) view.append(delta);
      }
      for (const field of EXTRA_FIELDS) {
        if (field in event) extra[field] = event[field];
      }
    }
  } catch (failure) {
    if (failure.name === "AbortError") cancelled = true;
    else error = failure.message || "The request failed.";
  } finally {
    if (state.streaming === controller) state.streaming = null;
    setStreaming(false);
  }
  view.finish({ extra, cancelled, error, live: true });
  if (error) showError(error);
  scrollToEnd();
  return { cancelled, error };
}

// The composer's Send, Enter, and a clarifying question's options all send here.
async function send() {
  await sendMessage(ui.input.value.trim(), { fromComposer: true });
}

/** Send ``content`` as the user; true once it is sent. ``knowledge`` overrides the
 * checked knowledge bases (a follow-up asks the bases that answered). */
async function sendMessage(content, { knowledge = null, fromComposer = false } = {}) {
  if (!content || state.streaming) return false;
  const model = ui.model.value;
  if (!model) {
    showError("Choose a model first.");
    return false;
  }
  showError("");
  if (!state.conversationId) {
    try {
      const conversation = await api("/api/conversations", { method: "POST", json: { model } });
      state.conversationId = conversation.id;
      history.pushState({ c: conversation.id }, "", conversationUrl(conversation.id));
      state.conversations.unshift(conversation);
      renderConversations();
    } catch (error) {
      showError(`Could not start a conversation: ${error.message}`);
      return false;
    }
  }
  if (fromComposer) ui.input.value = "";
  appendUserMessage(content);
  const view = new AssistantMessage(model);
  ui.messages.append(view.article);
  scrollToEnd(true);
  const body = { content, model };
  const bases = knowledge || selectedKnowledge();
  if (bases.length) body.knowledge = bases;
  await streamAnswer(state.conversationId, body, view);
  await loadConversations();
  return true;
}

// -- wiring ----------------------------------------------------------------------------

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => stopStreaming());
  ui.newChat.addEventListener("click", () => startNewChat());
  ui.dialogClose.addEventListener("click", () => ui.dialog.close());
  ui.dialog.addEventListener("click", (event) => {
    if (event.target === ui.dialog) ui.dialog.close(); // a click on the backdrop
  });
  window.addEventListener("popstate", () => {
    const id = new URLSearchParams(window.location.search).get("c");
    if (id) openConversation(id, { push: false });
    else startNewChat({ push: false });
  });
}

async function main() {
  initLayout();
  wire();
  setStreaming(false);
  const params = new URLSearchParams(window.location.search);
  const model = params.get("model");
  await Promise.all([loadModels(model), loadKnowledge(), loadConversations()]);
  const id = params.get("c");
  if (id) await openConversation(id, { push: false, keepModel: Boolean(model) });
  else renderConversations();
  ui.input.focus();
}

main();
