"""Packing: the .lmg artifact (reader, writer), pack policies, GPTQ, pruning and the runner file."""
