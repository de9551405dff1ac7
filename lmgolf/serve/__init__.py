"""Using a model: sampling with a KV cache, the terminal chat, the OpenAI-style server and chat page, and export."""
