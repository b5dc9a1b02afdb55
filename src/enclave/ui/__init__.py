"""The web UI: server-rendered pages and the static files they load (see ``docs/ui.md``)."""
