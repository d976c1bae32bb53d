"""What `routeray serve --demo` and `routeray batch route --demo-prompts` need on one machine with
nothing configured: generated prompts, a tiny random-weight chat model for vLLM, a local
stand-in for the strong model's API, and the demo's serve config."""
