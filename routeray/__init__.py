"""The `routeray` command line (and the demo it starts)."""
