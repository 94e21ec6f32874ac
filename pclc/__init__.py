"""pclc: the PC-LC loss library (losses, models, data, training, attacks, evaluation).

Knows nothing of Ray or MLflow: a trial is `pclc.experiment.run_trial(cfg, report)`.
"""

__version__ = "0.1.0"
