"""Using a model: sampling with a KV cache (and, later, the server)."""
