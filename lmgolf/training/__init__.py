"""Training: the budgeted loop, optimizers and schedule, checkpoints, and quantization-aware training."""
