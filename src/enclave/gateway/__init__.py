"""The gateway: classification, routing, limits, usage and audit for every request."""
