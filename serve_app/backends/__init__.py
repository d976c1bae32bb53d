"""Model backends: anything that answers an OpenAI chat request."""
