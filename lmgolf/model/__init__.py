"""Model: the GPT and its parts, and the parameter and FLOP accounting read off the built module."""
