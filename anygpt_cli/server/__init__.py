"""The HTTP server of `anygpt serve`: OpenAI's API in front of the shared engine."""
