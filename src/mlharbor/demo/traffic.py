"""Demo traffic: realistic requests with a gradual drift, and ground truth that arrives late.

Started by ``mlharbor demo`` (``make run``) in a background thread of the same process, so the
dashboard has something to show and the demo's retraining policy something to react to: rows
sampled from the bundled churn table are sent to the serving app over HTTP with the demo key
while, over ``ramp_s`` seconds, the world changes:

* covariate shift: ``monthly_charges`` creeps up and ``contract`` shifts toward
  month-to-month (what the drift trigger sees);
* concept shift: month-to-month DSL customers start leaving (a competitor's offer): their
  label turns to churned with a probability growing to :data:`SEGMENT_CHURN`, so the champion,
  trained before, misses them and a challenger trained on the labelled production rows does
  better -- retraining really helps, it is not a coin flip the validation gates decide.

Each answered request's true label is recorded ``feedback_delay_s`` seconds later through
``record`` (the Monitor's feedback API, or a POST to the feedback route). Every request that
is not answered 200 once serving is ready (a status or a transport error) is counted in
``failed`` -- the demo's rollout must cost no request -- except those sent when nobody listens
on the port any more (after Ctrl-C serving stops first), counted in ``refused``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mlharbor.demo")

# How far the drift goes once the ramp is over.
CHARGES_SHIFT = 25.0  # added to monthly_charges (the table's mean is about 65)
MONTHLY_WEIGHT = 6.0  # month-to-month rows become this many times likelier to be sampled
#: Once the ramp is over, this share of month-to-month DSL customers churns whatever the table
#: says (the concept shift; the segment churns at about 43 % in the training data).
SEGMENT_CHURN = 0.9


class DemoTraffic:
    """Sends ``rate`` requests per second of ``rows_per_request`` rows each to ``url`` and
    records each row's label ``feedback_delay_s`` later.

    A few hundred labelled rows a minute, so that by the time the drift trigger fires the
    labelled production rows are a real share of the retraining snapshot (beside the
    champion's 5000 training rows) and the challenger can learn the new segment.
    """

    def __init__(self, url: str, endpoint: str, key: str | None, frame: Any, *,
                 target: str = "churn", id_columns: tuple[str, ...] = ("customer_id",),
                 record: Callable[[str, list[dict[str, Any]]], Any],
                 rate: float = 6.0, rows_per_request: int = 4, ramp_s: float = 90.0,
                 feedback_delay_s: float = 8.0, seed: int = 7) -> None:
        import numpy as np

        self.url = url.rstrip("/")
        self.endpoint = endpoint
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.labels = frame[target].to_numpy()
        self.frame = frame.drop(columns=[target, *id_columns]).reset_index(drop=True)
        self.monthly = (frame["contract"] == "month-to-month").to_numpy() \
            if "contract" in frame else np.zeros(len(frame), bool)
        self.record = record
        self.interval = 1.0 / rate
        self.ramp_s = ramp_s
        self.delay_s = feedback_delay_s
        self.rng = np.random.default_rng(seed)
        self.segment = ((frame["contract"] == "month-to-month")
                        & (frame["internet"] == "dsl")).to_numpy() \
            if {"contract", "internet"} <= set(frame.columns) else np.zeros(len(frame), bool)
        self.sent = 0
        self.failed = 0
        self.refused = 0
        self.labelled = 0
        self.rows_per_request = rows_per_request
        self._pending: deque[tuple[float, str, int, Any]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DemoTraffic:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def counts(self) -> str:
        """``N requests, F failed`` so far (after serving was ready), and the connections
        unanswered once nobody listened (after Ctrl-C serving stops before the traffic)."""
        refused = (f", {self.refused} unanswered once the server stopped listening"
                   if self.refused else "")
        return f"{self.sent} requests, {self.failed} failed{refused}"

    # -- one request -----------------------------------------------------------------------

    def progress(self, now: float | None = None) -> float:
        """How far the drift has gone: 0 at the first request, 1 after ``ramp_s``."""
        if self.ramp_s <= 0:
            return 1.0
        elapsed = (now if now is not None else time.monotonic()) - self._started_at
        return min(1.0, max(0.0, elapsed / self.ramp_s))

    def sample(self, progress: float) -> tuple[dict[str, Any], Any]:
        """One row (as JSON-ready values) and its true label, drifted by ``progress``."""
        import json

        weights = 1.0 + (MONTHLY_WEIGHT - 1.0) * progress * self.monthly
        index = int(self.rng.choice(len(self.frame), p=weights / weights.sum()))
        row = self.frame.iloc[[index]].copy()
        if "monthly_charges" in row:
            shift = CHARGES_SHIFT * progress + float(self.rng.normal(0.0, 2.0)) * progress
            row["monthly_charges"] = (row["monthly_charges"] + shift).round(2)
            if "total_charges" in row and "tenure_months" in row:
                row["total_charges"] = (row["monthly_charges"]
                                        * row["tenure_months"].clip(lower=1)).round(2)
        record = json.loads(row.to_json(orient="records"))[0]
        label = self.labels[index]
        label = label.item() if hasattr(label, "item") else label
        if self.segment[index] and float(self.rng.random()) < SEGMENT_CHURN * progress:
            label = type(label)(1)  # the segment's customers leave: the label follows
        return record, label

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            if not self._wait_ready(client):
                return
            self._started_at = time.monotonic()
            next_at = self._started_at
            while not self._stop.is_set():
                try:
                    self._send(client)
                except httpx.HTTPError as exc:
                    self._count_error(exc)
                self._flush_feedback()
                next_at += self.interval * float(self.rng.uniform(0.5, 1.5))
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        self._flush_feedback()

    def _wait_ready(self, client: Any) -> bool:
        """Until serving answers a prediction (it loads and warms the model first)."""
        import httpx

        row, _ = self.sample(0.0)
        while not self._stop.is_set():
            try:
                answer = client.post(f"/v1/endpoints/{self.endpoint}/predict", json=[row])
                if answer.status_code == 200:
                    return True
                if answer.status_code in (401, 403):
                    log.warning("demo traffic stopped: the server refused the demo key (%d)",
                                answer.status_code)
                    return False
            except httpx.HTTPError:
                pass
            self._stop.wait(0.5)
        return False

    def _count_error(self, exc: Exception) -> None:
        """A request without an answer: ``refused`` when nobody listens on the port any more
        (the connection refused, or reset and then refused: the server is stopping, as after
        Ctrl-C), else ``failed``."""
        if self._listening():
            self.failed += 1
            log.warning("demo traffic: request failed: %s", exc)
        else:
            self.refused += 1
            log.info("demo traffic: the server is no longer listening: %s", exc)

    def _listening(self) -> bool:
        import socket

        import httpx

        url = httpx.URL(self.url)
        try:
            with socket.create_connection((url.host, url.port or 80), timeout=2.0):
                return True
        except OSError:
            return False

    def _send(self, client: Any) -> None:
        progress = self.progress()
        batch = [self.sample(progress) for _ in range(self.rows_per_request)]
        self.sent += 1
        answer = client.post(f"/v1/endpoints/{self.endpoint}/predict",
                              json=[row for row, _ in batch])
        if answer.status_code != 200:  # counted: the demo's loop must cost no request
            self.failed += 1
            log.warning("demo traffic: request answered %d: %.200s", answer.status_code,
                        answer.text)
            return
        request_id = answer.headers.get("x-request-id")
        if request_id:
            due = time.monotonic() + self.delay_s
            self._pending.extend((due, request_id, row, label)
                                 for row, (_, label) in enumerate(batch))

    def _flush_feedback(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        due = []
        while self._pending and (everything or self._pending[0][0] <= now):
            _, request_id, row, label = self._pending.popleft()
            due.append({"request_id": request_id, "row": row, "label": label})
        if not due:
            return
        try:
            self.record(self.endpoint, due)
            self.labelled += len(due)
        except Exception as exc:  # the demo keeps sending; labels are best effort
            log.warning("demo feedback not recorded: %s", exc)
