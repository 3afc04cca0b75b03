"""What a rollout reads: per-version traffic, errors, latency and accuracy, and shadow figures.

:class:`RolloutSignals` is the seam :class:`mlharbor.pipelines.rollout.Rollout` reads through;
:class:`LogSignals` implements it over the monitor's prediction log and the feedback store
(and is the estimated-accuracy guard's
:class:`~mlharbor.pipelines.abrollout.EstimateSignals`). :class:`VariantStats` and
:class:`ShadowStats` are what it returns. Kept apart from the rollout's steps so that module
stays about decisions and endpoint moves; :mod:`mlharbor.pipelines.rollout` re-exports every
name here.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from mlharbor.core.loop import EstimatedPerformance

if TYPE_CHECKING:
    from mlharbor.monitoring.feedback import Feedback
    from mlharbor.monitoring.predlog import PredictionLog


@dataclasses.dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's requests in a window: routed to it, failed over, latencies, labels."""

    requests: int
    errors: int
    latencies: tuple[float, ...]
    labelled: int
    correct: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return float(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)])

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclasses.dataclass(frozen=True, slots=True)
class ShadowStats:
    """A shadow phase: primary requests, shadow answers matched to them, agreement, latency,
    and errors on both sides.

    ``primary_requests`` are the requests the primary's route answered and ``primary_errors``
    those a fallback answered instead (a failed primary); ``shadow_requests`` are the copies
    the shadow answered and ``shadow_errors`` the copies it failed (logged with ``error``).
    A copy dropped for lack of capacity is in neither: it says nothing about the shadow.
    """

    primary_requests: int
    shadow_requests: int
    compared_rows: int
    agreeing_rows: int
    primary_p99: float | None
    shadow_p99: float | None
    primary_errors: int = 0
    shadow_errors: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.compared_rows if self.compared_rows else None

    @property
    def shadow_copies(self) -> int:
        """Copies the shadow answered or failed."""
        return self.shadow_requests + self.shadow_errors

    @property
    def primary_error_rate(self) -> float | None:
        total = self.primary_requests + self.primary_errors
        return self.primary_errors / total if total else None

    @property
    def shadow_error_rate(self) -> float | None:
        return self.shadow_errors / self.shadow_copies if self.shadow_copies else None


class RolloutSignals(Protocol):
    """Where the rollout reads traffic, latency, errors and accuracy per served version."""

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]: ...

    def shadow(self, endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats: ...


class LogSignals:
    """:class:`RolloutSignals` over the prediction log and the feedback store.

    A request answered by a fallback was routed to the *other* variant (during the canary the
    champion is the challenger's fallback and a model is never its own), so it counts as a
    request and an error of that variant; its latency and prediction are the fallback's and
    are left out of both variants' latency and accuracy. It is also the estimated-accuracy
    guard's :class:`~mlharbor.pipelines.abrollout.EstimateSignals` (estimators fitted once per
    version and reference end, then kept).
    """

    def __init__(self, log: PredictionLog, feedback: Feedback | None = None) -> None:
        self.log = log
        self.feedback = feedback
        self._estimators: dict[tuple[str, int, str], Any] = {}

    def estimates(self, endpoint: str, start: datetime, end: datetime,
                  versions: tuple[int, int], *, reference_end: datetime,
                  confidence: float) -> dict[int, EstimatedPerformance | None]:
        from mlharbor.pipelines.abrollout import log_estimates

        return log_estimates(self, self._estimators, endpoint, start, end, versions,
                             reference_end=reference_end, confidence=confidence)

    def variants(self, endpoint: str, start: datetime, end: datetime,
                 versions: tuple[int, int]) -> dict[int, VariantStats]:
        frame = self._frame(endpoint, start, end)
        out: dict[int, VariantStats] = {}
        primary = frame[~frame["shadow"]] if len(frame) else frame
        labelled = self._labelled(endpoint, primary)
        for version in versions:
            other = versions[1] if version == versions[0] else versions[0]
            first = primary[primary["row"] == 0] if len(primary) else primary
            own = first[(first["version"] == version) & first["fallback"].isna()] \
                if len(first) else first
            failed = first[(first["version"] == other) & first["fallback"].notna()] \
                if len(first) else first
            judged = labelled[(labelled["version"] == version) & labelled["fallback"].isna()] \
                if len(labelled) else labelled
            latencies = tuple(float(v) for v in own["latency_s"].dropna()) if len(own) else ()
            out[version] = VariantStats(
                requests=len(own) + len(failed), errors=len(failed), latencies=latencies,
                labelled=len(judged),
                correct=int(judged["correct"].sum()) if len(judged) else 0)
        return out

    def shadow(self, endpoint: str, start: datetime, end: datetime,
               shadow_version: int) -> ShadowStats:
        from mlharbor.monitoring.labels import label_text

        frame = self._frame(endpoint, start, end)
        if not len(frame):
            return ShadowStats(0, 0, 0, 0, None, None)
        ours = frame[frame["shadow"] & (frame["version"] == shadow_version)]
        copies, failed = ours[ours["error"].isna()], ours[ours["error"].notna()]
        routed = frame[~frame["shadow"]]
        primary = routed[routed["fallback"].isna()]
        joined = primary.merge(copies, on=["request_id", "row"], suffixes=("", "_shadow"))
        agree = sum(label_text(a) == label_text(b) for a, b in
                    zip(joined["prediction"], joined["prediction_shadow"], strict=True))
        p_first, s_first = primary[primary["row"] == 0], copies[copies["row"] == 0]
        fell_back = routed[(routed["row"] == 0) & routed["fallback"].notna()]
        return ShadowStats(
            primary_requests=len(p_first), shadow_requests=len(s_first),
            compared_rows=len(joined), agreeing_rows=int(agree),
            primary_p99=_p99(p_first["latency_s"]), shadow_p99=_p99(s_first["latency_s"]),
            primary_errors=len(fell_back),
            shadow_errors=int((failed["row"] == 0).sum()))

    def _frame(self, endpoint: str, start: datetime, end: datetime) -> Any:
        import pandas as pd

        columns = ["request_id", "row", "version", "shadow", "fallback", "latency_s",
                   "prediction", "error"]
        table = self.log.scan(endpoint, start, end, columns=columns)
        frame = table.to_pandas()
        for column in columns:
            if column not in frame:
                frame[column] = None
        frame["shadow"] = frame["shadow"].fillna(False).astype(bool)
        frame["version"] = pd.to_numeric(frame["version"], errors="coerce")
        return frame

    def _labelled(self, endpoint: str, primary: Any) -> Any:
        """The primary rows that have a feedback label, with ``correct`` per row."""
        from mlharbor.monitoring.labels import label_text

        if self.feedback is None or not len(primary):
            return primary.iloc[0:0].assign(correct=[])
        labels = self.feedback.labels(endpoint).to_pandas()
        if labels.empty:
            return primary.iloc[0:0].assign(correct=[])
        labels["row"] = labels["row"].astype("int64")
        rows = primary.assign(row=primary["row"].astype("int64"))
        joined = rows.merge(labels, on=["request_id", "row"])
        joined["correct"] = [label_text(p) == label_text(y)
                             for p, y in zip(joined["prediction"], joined["label"], strict=True)]
        return joined


def _p99(values: Any) -> float | None:
    present = [float(v) for v in values.dropna()] if len(values) else []
    if not present:
        return None
    present.sort()
    return present[min(len(present) - 1, math.ceil(0.99 * len(present)) - 1)]
