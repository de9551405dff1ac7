"""Studies over many runs: study files and the sweep runner, the results store and its statistics, plots, the planner, budget fitting and the demo."""
