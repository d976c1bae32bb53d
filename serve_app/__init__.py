"""Ray Serve application: OpenAI-compatible ingress, batched router deployment, model backends."""
