// The app store (/apps) and an app's page (/apps/{name}): one module, two views,
// chosen by the data-view attribute of <main>.

import { api, ApiError } from "./api.js";
import { announce, byId, formatTime, h, replaceChildren, row } from "./dom.js";
import { initLayout } from "./layout.js";

function initials(name) {
  const parts = String(name).split(/[-_\s]+/).filter(Boolean);
  return (parts.length > 1 ? parts[0][0] + parts[1][0] : String(name).slice(0, 2)).toUpperCase();
}

// An avatar in the YAML is one very long base64 line: the Definition shows it folded
// (the image itself is at the top of the page and below).
function foldDataUris(yaml) {
  return yaml.replace(/(data:image\/[\w.+-]+;base64,)([A-Za-z0-9+/=]{64,})/g, (_, head, data) => {
    const kib = Math.max(1, Math.round((data.length * 3) / 4 / 1024));
    return `${head}${data.slice(0, 16)}… (${kib} KiB, folded)`;
  });
}

function avatar(app, size) {
  if (app.avatar_url) {
    return h("img", { class: `avatar avatar-${size}`, src: app.avatar_url, alt: `${app.name} avatar`, width: size === "large" ? "72" : "48", height: size === "large" ? "72" : "48" });
  }
  return h("span", { class: `avatar avatar-${size} avatar-initials`, "aria-hidden": "true" }, initials(app.name));
}

async function storeView() {
  const list = byId("apps");
  const status = byId("apps-status");
  let apps;
  try {
    apps = (await api("/api/apps")).data;
  } catch (error) {
    announce(status, error.message);
    return;
  }
  replaceChildren(
    list,
    apps.map((app) =>
      h(
        "li",
        {},
        h(
          "article",
          { class: "app-card" },
          avatar(app, "small"),
          h("h2", {}, app.name),
          h("p", { class: "app-description" }, app.description || "No description."),
          h("p", { class: "app-meta" }, `Version ${app.version} · model ${app.model}`),
          h("a", { class: "button-link", href: `/apps/${encodeURIComponent(app.name)}` }, "Open"),
        ),
      ),
    ),
  );
  byId("apps-empty").hidden = apps.length > 0;
}

function percent(rate) {
  return typeof rate === "number" ? `${Math.round(rate * 100)}%` : "";
}

function testResults(results) {
  const section = byId("test-results");
  if (!results || !Array.isArray(results.tests) || !results.tests.length) {
    replaceChildren(section, h("p", { class: "hint" }, "No test results recorded"));
    return;
  }
  const summary = results.summary || {};
  replaceChildren(
    section,
    h(
      "p",
      { class: "test-summary" },
      `${summary.tests ?? results.tests.length} tests, ${summary.passed ?? "?"} passed, ${summary.failed ?? "?"} failed`,
      results.created_at ? ` · run ${formatTime(results.created_at)}` : "",
    ),
    h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        {},
        h("caption", { class: "sr-only" }, "Test results"),
        h("thead", {}, row(["Test", "Pass rate", "Status"], "th")),
        h(
          "tbody",
          {},
          results.tests.map((test) =>
            h(
              "tr",
              {},
              h(
                "td",
                {},
                test.name,
                Array.isArray(test.failures) && test.failures.length
                  ? h("ul", { class: "failures" }, test.failures.slice(0, 5).map((failure) => h("li", {}, typeof failure === "string" ? failure : JSON.stringify(failure))))
                  : null,
              ),
              h("td", {}, percent(test.pass_rate)),
              h("td", {}, h("span", { class: `badge badge-${test.status === "passed" ? "ok" : "bad"}` }, test.status)),
            ),
          ),
        ),
      ),
    ),
  );
}

async function detailView(name) {
  const status = byId("app-status");
  let app;
  try {
    app = await api(`/api/apps/${encodeURIComponent(name)}`);
  } catch (error) {
    announce(status, error instanceof ApiError && error.status === 404 ? `There is no app named '${name}' in this workspace.` : error.message);
    byId("app-details").hidden = true;
    return;
  }
  replaceChildren(byId("app-avatar"), avatar(app, "large"));
  const pictured = byId("app-yaml-avatar");
  if (pictured) replaceChildren(pictured, app.avatar_url ? [h("span", { class: "hint" }, "metadata.avatar:"), avatar(app, "small")] : []);
  byId("app-description").textContent = app.description || "No description.";
  byId("app-meta").textContent = `Version ${app.version} · model ${app.spec?.spec?.model || "default"} · updated ${formatTime(app.updated_at)}`;
  byId("app-yaml").textContent = foldDataUris(app.yaml || "");
  testResults(app.test_results);
}

function main() {
  initLayout();
  const main = document.querySelector("main");
  if (main.dataset.view === "app") detailView(main.dataset.app);
  else storeView();
}

main();
