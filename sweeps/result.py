"""What a finished sweep hands back: `SweepResult`, filled by the stages (`sweeps.stages`), printed by
`sweeps.summary`. Data only, so both can import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # named only: importing the result stays free of MLflow
    from sweeps.tracking import TrialOutcome


@dataclass
class SweepResult:
    """What a finished `run_sweep` hands back (and prints)."""

    name: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    resumed: bool
    trials: dict[str, TrialOutcome]
    finished: list[dict[str, Any]] = field(default_factory=list)  # one row per trial with final metrics
    best: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: int = 0
    reconcile: dict[str, int] = field(default_factory=dict)
    grid: Any = field(default=None, repr=False)  # Tune's ResultGrid, for callers that want more
    confirmed: list[dict[str, Any]] = field(default_factory=list)  # the confirmation runs that finished
    verdict: Any = None  # analysis.verdict.Verdict: the comparisons with the references

    @property
    def failed(self) -> list[str]:
        return [t for t, o in self.trials.items() if o.error is not None]

    @property
    def ui_command(self) -> str:
        from pclc.redact import mask_uri

        return f"mlflow ui --backend-store-uri {mask_uri(self.tracking_uri)}"
