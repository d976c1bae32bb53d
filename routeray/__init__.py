"""The `routeray` command line."""
