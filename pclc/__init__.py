"""pclc: the PC-LC loss library (losses, models, data, training, attacks, evaluation).

Knows nothing of Ray or MLflow: a trial is `pclc.experiment.run_trial(cfg, reporter)`. `pclc.contract` and
`pclc.metrics` are the words the MLflow writer (sweeps) and reader (analysis) share.

The `pclc` command is not this package: it lives in `sweeps.cli`, the composition root, so that this library
never imports Ray.
"""

__version__ = "0.1.0"
