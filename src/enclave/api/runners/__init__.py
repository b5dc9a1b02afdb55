"""``/api/admin/runners`` and ``/api/admin/deployments``: remote runners, join tokens."""
