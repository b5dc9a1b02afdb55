// The admin page: providers, runners, replicas, workspaces and keys, people, MCP
// clients, usage, and the audit log.

import { api, currentUser } from "./api.js";
import { announce, byId, formatNumber, formatTime, h, replaceChildren, row, svg } from "./dom.js";
import { initLayout } from "./layout.js";

const USAGE_DAYS = 30;
// Distinct hues with >= 3:1 contrast against the white chart background.
const PALETTE = ["#1f5fbf", "#b3261e", "#1e7b3a", "#8a4fbf", "#a15c00", "#00707a", "#6b6b6b", "#c2185b"];

function failed(target, error) {
  replaceChildren(target, h("p", { class: "message-error" }, error.message));
}

// -- providers -------------------------------------------------------------------

async function loadProviders() {
  const body = byId("providers-body");
  let providers;
  try {
    providers = await api("/api/providers");
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "7" }, error.message)));
    return;
  }
  replaceChildren(
    body,
    providers.map((provider) =>
      row([
        provider.name,
        provider.type || "",
        h("span", { class: `badge badge-${provider.healthy ? "ok" : "bad"}`, title: provider.detail || "" }, provider.healthy ? "ok" : "down"),
        provider.clearance || "",
        provider.location || "",
        provider.circuit || "",
        runnerSummary(provider.state && provider.state.runner),
      ]),
    ),
  );
}

// The runner process behind an embedded provider: state, restarts, last exit.
function runnerSummary(runner) {
  if (!runner) return "";
  const parts = [runner.state];
  if (runner.restarts) parts.push(`${runner.restarts} restart${runner.restarts === 1 ? "" : "s"}`);
  if (runner.last_exit) parts.push(`last exit: ${runner.last_exit}`);
  return parts.join(" · ");
}

// -- runners that joined ---------------------------------------------------------------

function gb(value) {
  return value === null || value === undefined ? "–" : value.toFixed(1);
}

async function loadRunners() {
  const body = byId("runners-body");
  let runners;
  try {
    runners = (await api("/api/admin/runners")).data;
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "8" }, error.message)));
    return;
  }
  if (!runners.length) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "8" }, "No runners have joined. Create a join token with `enclave runners token create`.")));
    return;
  }
  replaceChildren(
    body,
    runners.map((runner) =>
      row([
        runner.name,
        h("span", { class: `badge badge-${runner.state === "up" ? "ok" : "bad"}` }, runner.state),
        runner.clearance,
        runner.location,
        runner.devices.map((d) => `${d.name} ${gb(d.memory_used_gb)} / ${gb(d.memory_free_gb)} / ${gb(d.memory_total_gb)}`).join(", "),
        runner.loaded.map((m) => m.model).join(", ") || "–",
        formatNumber(runner.queue_depth),
        runner.tokens_per_s.toFixed(1),
      ]),
    ),
  );
}

// -- MCP clients ------------------------------------------------------------------------

async function loadMcpClients() {
  const body = byId("mcp-clients-body");
  let clients;
  try {
    clients = (await api("/api/admin/mcp/clients")).data;
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "7" }, error.message)));
    return;
  }
  if (!clients.length) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "7" }, "No key has used /mcp yet.")));
    return;
  }
  replaceChildren(
    body,
    clients.map((client) =>
      row([
        client.key_name || "(no key: refused)",
        client.workspace || "–",
        client.clearance || "workspace floor",
        formatNumber(client.calls),
        formatNumber(client.denied),
        client.last_call ? formatTime(client.last_call) : "–",
        Object.entries(client.tools).map(([tool, count]) => `${tool} ${count}`).join(", "),
      ]),
    ),
  );
}

// -- replicas ---------------------------------------------------------------------------

async function loadReplicas() {
  const body = byId("replicas-body");
  let cluster;
  try {
    cluster = await api("/api/admin/cluster");
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "5" }, error.message)));
    return;
  }
  if (!cluster.replicas) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "5" }, "A single server: cluster.replicas is off (see docs/operations.md, Replicas).")));
    return;
  }
  if (!cluster.members.length) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "5" }, "No replica has sent a heartbeat yet.")));
    return;
  }
  replaceChildren(
    body,
    cluster.members.map((member) =>
      row([
        member.self ? [member.replica, " ", h("span", { class: "hint" }, "(this replica)")] : member.replica,
        member.host,
        formatTime(member.started_at),
        formatTime(member.heartbeat_at),
        h("span", { class: `badge badge-${member.live ? "ok" : "bad"}` }, member.live ? "live" : "dead"),
      ]),
    ),
  );
}

// -- workspaces and keys ---------------------------------------------------------------

async function loadWorkspaces() {
  const body = byId("workspaces-body");
  let workspaces;
  try {
    workspaces = (await api("/api/admin/workspaces")).data;
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "3" }, error.message)));
    return;
  }
  replaceChildren(body, workspaces.map((workspace) => row([workspace.name, workspace.classification || "", formatNumber(workspace.keys ?? 0)])));
  replaceChildren(byId("workspace-names"), workspaces.map((workspace) => h("option", { value: workspace.name })));
}

async function loadKeys() {
  const body = byId("keys-body");
  let keys;
  try {
    keys = await api("/api/keys");
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "7" }, error.message)));
    return;
  }
  const me = currentUser();
  replaceChildren(
    body,
    keys.map((key) => {
      let action = "";
      if (key.id === me.key_id) action = h("span", { class: "hint" }, "this key");
      else if (key.status === "active") {
        action = h("button", { type: "button", class: "small danger", onclick: () => revoke(key) }, "Revoke");
      }
      return row([
        key.name,
        h("code", {}, key.prefix || ""),
        key.workspace,
        key.admin ? "yes" : "no",
        h("span", { class: `badge badge-${key.status === "active" ? "ok" : "muted"}` }, key.status),
        key.expires_at ? formatTime(key.expires_at) : "never",
        action,
      ]);
    }),
  );
}

async function revoke(key) {
  const status = byId("keys-status");
  try {
    await api(`/api/keys/${key.id}`, { method: "DELETE" });
    announce(status, `Key '${key.name}' revoked.`);
  } catch (error) {
    announce(status, `Could not revoke '${key.name}': ${error.message}`);
  }
  await Promise.all([loadKeys(), loadWorkspaces()]);
}

async function createKey(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const output = byId("new-key");
  const name = byId("key-name").value.trim();
  const workspace = byId("key-workspace").value.trim() || "default";
  const admin = byId("key-admin").checked;
  if (!name) return;
  let created;
  try {
    created = await api("/api/keys", { method: "POST", json: { name, workspace, admin } });
  } catch (error) {
    replaceChildren(output, h("p", { class: "message-error" }, `Could not create the key: ${error.message}`));
    output.hidden = false;
    return;
  }
  form.reset();
  const secret = h("code", { class: "secret" }, created.key);
  const copy = h("button", { type: "button", class: "small" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      copy.textContent = "Copied";
    } catch {
      window.getSelection().selectAllChildren(secret);
    }
  });
  replaceChildren(
    output,
    h("p", {}, `New key '${created.name}' for workspace ${created.workspace}${created.admin ? " (admin)" : ""}:`),
    h("p", { class: "secret-line" }, secret, " ", copy),
    h("p", { class: "warning" }, "Copy it now: it will not be shown again."),
  );
  output.hidden = false;
  await Promise.all([loadKeys(), loadWorkspaces()]);
}

// -- people -------------------------------------------------------------------------------

// A person's name as the provider sent it; SCIM or a provider may leave it empty.
function personName(user) {
  return user.name || user.email || user.subject;
}

function workspaceRoles(workspaces) {
  return Object.entries(workspaces || {}).map(([workspace, role]) => `${workspace}: ${role}`).join(", ") || "–";
}

async function loadPeople() {
  const body = byId("people-body");
  let users;
  try {
    users = (await api("/api/admin/users")).data;
  } catch (error) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "8" }, error.message)));
    return;
  }
  if (!users.length) {
    replaceChildren(body, h("tr", {}, h("td", { colspan: "8" }, "No one has signed in with the identity provider yet. See docs/identity.md.")));
    return;
  }
  const me = currentUser();
  replaceChildren(
    body,
    users.map((user) => {
      let action;
      if (user.id === me.user_id) action = h("span", { class: "hint" }, "you");
      else if (user.disabled) {
        action = h("button", { type: "button", class: "small", "aria-label": `Enable ${personName(user)}`, onclick: (event) => setDisabled(event.currentTarget, user, false) }, "Enable");
      } else {
        action = h("button", { type: "button", class: "small danger", "aria-label": `Disable ${personName(user)}`, onclick: (event) => confirmDisable(event.currentTarget.parentElement, user) }, "Disable");
      }
      return row([
        user.provisioned ? [personName(user), " ", h("span", { class: "hint" }, "(SCIM)")] : personName(user),
        user.email || "–",
        user.groups.join(", ") || "–",
        user.admin ? "yes" : "no",
        workspaceRoles(user.workspaces),
        user.last_login_at ? formatTime(user.last_login_at) : "never",
        h("span", { class: `badge badge-${user.disabled ? "muted" : "ok"}` }, user.disabled ? "disabled" : "active"),
        action,
      ]);
    }),
  );
}

// Disabling signs the person out everywhere, so it asks first, in the row itself.
function confirmDisable(cell, user) {
  const keep = h("button", { type: "button", class: "small", onclick: () => loadPeople() }, "Keep");
  replaceChildren(
    cell,
    h(
      "div",
      { class: "confirm-inline" },
      h("span", {}, `Disable ${personName(user)}?`),
      h("button", { type: "button", class: "small danger", onclick: (event) => setDisabled(event.currentTarget, user, true) }, "Yes, disable"),
      keep,
    ),
  );
  keep.focus();
}

async function setDisabled(button, user, disabled) {
  const status = byId("people-status");
  const name = personName(user);
  button.disabled = true; // one PATCH per click, however impatient
  try {
    await api(`/api/admin/users/${user.id}`, { method: "PATCH", json: { disabled } });
    announce(status, `${name} ${disabled ? "disabled" : "enabled"}.`);
  } catch (error) {
    announce(status, `Could not ${disabled ? "disable" : "enable"} ${name}: ${error.message}`);
  }
  await loadPeople();
}

// -- usage -------------------------------------------------------------------------------

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

async function loadUsage() {
  const chart = byId("usage-chart");
  const body = byId("usage-body");
  const since = new Date(Date.now() - (USAGE_DAYS - 1) * 86400000);
  let lines;
  try {
    lines = (await api(`/api/usage?since=${isoDay(since)}`)).data;
  } catch (error) {
    failed(chart, error);
    return;
  }
  // Totals per day and series (workspace · model); the API splits by key and provider too.
  const totals = new Map();
  const bySeries = new Map();
  for (const line of lines) {
    const series = `${line.workspace} · ${line.model}`;
    const key = `${line.day}\u0000${series}`;
    const entry = totals.get(key) || { day: line.day, workspace: line.workspace, model: line.model, series, requests: 0, prompt: 0, completion: 0, total: 0 };
    entry.requests += line.requests;
    entry.prompt += line.prompt_tokens;
    entry.completion += line.completion_tokens;
    entry.total += line.total_tokens;
    totals.set(key, entry);
    bySeries.set(series, (bySeries.get(series) || 0) + line.total_tokens);
  }
  const entries = Array.from(totals.values()).sort((a, b) => a.day.localeCompare(b.day) || a.series.localeCompare(b.series));
  replaceChildren(
    body,
    entries.map((entry) =>
      row([entry.day, entry.workspace, entry.model, formatNumber(entry.requests), formatNumber(entry.prompt), formatNumber(entry.completion), formatNumber(entry.total)]),
    ),
  );
  if (!entries.length) body.append(h("tr", {}, h("td", { colspan: "7" }, `No usage in the last ${USAGE_DAYS} days.`)));
  const series = Array.from(bySeries.keys()).sort();
  replaceChildren(chart, usageChart(entries, series, since), legend(series));
}

function usageChart(entries, series, since) {
  const days = [];
  for (let i = 0; i < USAGE_DAYS; i += 1) days.push(isoDay(new Date(since.getTime() + i * 86400000)));
  const stacks = new Map(days.map((day) => [day, []]));
  for (const entry of entries) if (stacks.has(entry.day)) stacks.get(entry.day).push(entry);
  const peak = Math.max(1, ...Array.from(stacks.values()).map((items) => items.reduce((sum, item) => sum + item.total, 0)));
  const width = 720;
  const height = 240;
  const left = 56;
  const bottom = 28;
  const top = 12;
  const plotHeight = height - bottom - top;
  const slot = (width - left - 8) / days.length;
  const bar = Math.max(2, slot * 0.7);
  const total = entries.reduce((sum, entry) => sum + entry.total, 0);
  const chart = svg(
    "svg",
    {
      class: "usage-chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": "Tokens per day",
      preserveAspectRatio: "xMidYMid meet",
    },
    svg("title", {}, `Tokens per day, last ${USAGE_DAYS} days: ${formatNumber(total)} in all`),
  );
  // Axis and gridlines at 0, 50% and 100% of the peak.
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotHeight * (1 - fraction);
    chart.append(svg("line", { x1: left, x2: width - 4, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis-label" }, compact(peak * fraction)));
  }
  days.forEach((day, index) => {
    const x = left + index * slot + (slot - bar) / 2;
    let y = top + plotHeight;
    for (const item of stacks.get(day)) {
      const barHeight = (item.total / peak) * plotHeight;
      y -= barHeight;
      chart.append(
        svg(
          "rect",
          { x: x.toFixed(1), y: y.toFixed(1), width: bar.toFixed(1), height: Math.max(barHeight, 0.5).toFixed(1), fill: PALETTE[series.indexOf(item.series) % PALETTE.length] },
          svg("title", {}, `${day} · ${item.series}: ${formatNumber(item.total)} tokens`),
        ),
      );
    }
    // Weekly labels counted back from today, so today's label never crowds another.
    if ((days.length - 1 - index) % 7 === 0) {
      chart.append(svg("text", { x: (x + bar / 2).toFixed(1), y: height - 8, "text-anchor": "middle", class: "axis-label" }, day.slice(5)));
    }
  });
  return chart;
}

function legend(series) {
  if (!series.length) return null;
  return h(
    "ul",
    { class: "legend", "aria-label": "Chart legend" },
    series.map((name, index) =>
      h(
        "li",
        {},
        svg("svg", { width: "12", height: "12", viewBox: "0 0 12 12", "aria-hidden": "true" }, svg("rect", { width: "12", height: "12", fill: PALETTE[index % PALETTE.length] })),
        ` ${name}`,
      ),
    ),
  );
}

function compact(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return String(Math.round(value));
}

// -- audit log -------------------------------------------------------------------------------

let auditBefore = null;

function auditQuery(before) {
  const params = new URLSearchParams({ limit: "100" });
  const workspace = byId("audit-workspace").value.trim();
  const outcome = byId("audit-outcome").value.trim();
  const since = byId("audit-since").value.trim();
  if (workspace) params.set("workspace", workspace);
  if (outcome) params.set("outcome", outcome);
  if (since) params.set("since", since);
  if (before != null) params.set("before", String(before));
  return `/api/admin/audit?${params}`;
}

async function loadAudit({ more = false } = {}) {
  const body = byId("audit-body");
  const older = byId("audit-older");
  const status = byId("audit-status");
  announce(status, "");
  let page;
  try {
    page = await api(auditQuery(more ? auditBefore : null));
  } catch (error) {
    announce(status, error.message);
    return;
  }
  const rows = page.data.map((entry) =>
    row([
      String(entry.seq),
      formatTime(entry.time),
      entry.workspace || "",
      entry.key_id == null ? "" : String(entry.key_id),
      entry.endpoint || "",
      entry.requested_model || "",
      entry.classification || "",
      entry.provider || "",
      h("span", { class: `badge badge-${entry.outcome === "ok" ? "ok" : "bad"}` }, entry.outcome || ""),
      entry.status == null ? "" : String(entry.status),
      entry.latency_ms == null ? "" : `${Math.round(entry.latency_ms)} ms`,
      `${formatNumber(entry.prompt_tokens ?? 0)} / ${formatNumber(entry.completion_tokens ?? 0)}`,
      entry.error_code || "",
    ]),
  );
  if (more) body.append(...rows);
  else replaceChildren(body, rows);
  if (!more && !rows.length) body.append(h("tr", {}, h("td", { colspan: "13" }, "No entries match.")));
  auditBefore = page.next_before ?? null;
  older.hidden = auditBefore == null;
}

async function verifyChain() {
  const output = byId("verification");
  const button = byId("verify-chain");
  button.disabled = true;
  output.textContent = "Verifying…";
  try {
    const result = await api("/api/admin/audit/verify", { method: "POST" });
    const notes = Array.isArray(result.notes) && result.notes.length ? ` Notes: ${result.notes.join("; ")}` : "";
    output.textContent = result.ok
      ? `Chain OK: ${formatNumber(result.entries)} entries verified; head ${String(result.head_hash || "").slice(0, 16)}.${notes}`
      : `Chain broken at entry ${result.first_bad ?? "?"}: ${result.reason || "hash mismatch"}.${notes}`;
    output.className = result.ok ? "verification ok" : "verification bad";
  } catch (error) {
    output.textContent = `Verification failed to run: ${error.message}`;
    output.className = "verification bad";
  } finally {
    button.disabled = false;
  }
}

function main() {
  initLayout();
  byId("create-key").addEventListener("submit", createKey);
  byId("audit-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit();
  });
  byId("audit-older").addEventListener("click", () => loadAudit({ more: true }));
  byId("verify-chain").addEventListener("click", verifyChain);
  loadProviders();
  loadRunners();
  loadReplicas();
  loadMcpClients();
  loadWorkspaces();
  loadKeys();
  loadPeople();
  loadUsage();
  loadAudit();
}

main();
