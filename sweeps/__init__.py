"""sweeps: Ray Tune + Optuna + MLflow around `pclc.experiment.run_trial`. The only package that imports Ray.

The `pclc` command lives here, in `sweeps.cli` (the composition root: the top of pclc → analysis → sweeps),
not in the `pclc` package, which never imports Ray or MLflow. `python -m sweeps` is `pclc sweep`.

- `sweeps.config`: the sweep file (`read_sweep_file(path, overrides) -> SweepConfig`), validated before Ray starts.
- `sweeps.cli`: the `pclc` command (train, sweep, evaluate, analyze): one parser per subcommand.
- `sweeps.driver`: `run_sweep(cfg, ...) -> SweepResult` (plan → parent run → Tuner → fit → collect) and
  `sweep_command(args)` behind `pclc sweep`; `sweeps.summary`: what the end of a sweep prints (best rows,
  the ablation's table).
- `sweeps.trainable`: the thin Tune trainable (a `TuneReporter`); `sweeps.tracking`: the MLflow writer of the
  layout `pclc.contract` names (parent + child runs).

Nothing is imported here, so `import sweeps.config` stays cheap (no Ray, no MLflow).
"""
