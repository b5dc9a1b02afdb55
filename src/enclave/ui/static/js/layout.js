// What every signed-in page shares: the Sign out button (a POST with the CSRF
// token; the form's hidden field covers a page whose script failed to load).

import { request } from "./api.js";

export function initLayout() {
  const form = document.getElementById("sign-out");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await request("/ui/logout", { method: "POST" });
    } finally {
      window.location.assign("/login");
    }
  });
}
