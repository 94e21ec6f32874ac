"""Moved: the training modes live in `pclc.training_modes` (beside `pclc.train`, the loop). This re-export keeps
`from pclc.training import …` working while the branches of this round merge; delete it after."""

from pclc.training_modes import *  # noqa: F403
from pclc.training_modes import __all__  # noqa: F401
