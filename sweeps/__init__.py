"""sweeps: Ray Tune + Optuna + MLflow around `pclc.experiment.run_trial`. The only package that imports Ray."""
