"""Data: corpora, tokenizers, the token shard format, prepared data folders and the window sampler."""
