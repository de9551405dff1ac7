"""Scoring: bits per byte in every legal evaluation mode, test-time training, classic-compressor baselines."""
