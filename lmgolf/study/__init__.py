"""Studies over many runs or models: budget fitting and the demo (sweeps later)."""
