"""The endpoint's metrics as Prometheus shows them (Ray prefixes `ray_`; counters end in
`_total`). tests/serve_app asserts that a running app exports each; the Grafana dashboard and
the alert rules in deploy/ may only use these."""

from __future__ import annotations

COUNTERS = (
    "ray_routeray_requests_total",
    "ray_routeray_route_decisions_total",
    "ray_routeray_estimated_cost_usd_total",
    "ray_routeray_backend_errors_total",
    "ray_routeray_fallbacks_total",
    "ray_routeray_upstream_auth_failures_total",
)
GAUGES = ("ray_routeray_strong_share",)
HISTOGRAMS = (
    "ray_routeray_router_latency_seconds",
    "ray_routeray_router_batch_latency_seconds",
    "ray_routeray_router_batch_size",
)


def families() -> dict[str, str]:
    """Metric family -> its Prometheus type, as a scrape's `# TYPE` lines give them."""
    kinds = (COUNTERS, "counter"), (GAUGES, "gauge"), (HISTOGRAMS, "histogram")
    return {name: kind for names, kind in kinds for name in names}


def series_names() -> set[str]:
    """Every series name a query may use, histograms with their _bucket/_sum/_count."""
    suffixes = ("_bucket", "_sum", "_count")
    return {*COUNTERS, *GAUGES, *(h + s for h in HISTOGRAMS for s in suffixes)}
