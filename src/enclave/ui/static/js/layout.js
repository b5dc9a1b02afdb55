// What every signed-in page shares: the Sign out button (a POST with the CSRF
// token; the form's hidden field covers a page whose script failed to load).
// The server answers where to go next: the sign-in page, or the identity
// provider's logout when the person signed in there.

import { request } from "./api.js";

export function initLayout() {
  const form = document.getElementById("sign-out");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let next = "/login";
    try {
      const answer = await (await request("/ui/logout", { method: "POST" })).json();
      if (answer && typeof answer.next === "string") next = answer.next;
    } catch {
      // signed out already, or the server is away: the sign-in page either way
    } finally {
      window.location.assign(next);
    }
  });
}
