"""Serving: the OpenAI-compatible HTTP app, the engine's own process and its client, metrics, the web page."""
