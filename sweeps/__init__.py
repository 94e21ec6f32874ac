"""sweeps: Ray Tune + Optuna + MLflow around `pclc.experiment.run_trial`. The only package that imports Ray.

- `sweeps.config`: the sweep file (`load_sweep(path, overrides) -> SweepConfig`), validated before Ray starts.
- `sweeps.driver`: `run_sweep(cfg, ...) -> SweepResult` and `sweep_command(args)` behind `pclc sweep`.
- `sweeps.trainable`: the thin Tune trainable; `sweeps.tracking`: the MLflow layout (parent + child runs).

Nothing is imported here, so `import sweeps.config` stays cheap (no Ray, no MLflow).
"""
