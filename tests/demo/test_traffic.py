"""The demo's traffic: rows drift gradually, labels follow their predictions after a delay."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pandas as pd

from mlharbor.demo.job import dataset_path
from mlharbor.demo.traffic import SEGMENT_CHURN, DemoTraffic


def _traffic(record: Any = None, **kwargs: Any) -> DemoTraffic:
    return DemoTraffic("http://127.0.0.1:1", "churn", "mlh_x", pd.read_csv(dataset_path()),
                       record=record or (lambda endpoint, labels: len(labels)), **kwargs)


def test_rows_drift_toward_dearer_month_to_month_contracts() -> None:
    traffic = _traffic()
    before = pd.DataFrame([traffic.sample(0.0)[0] for _ in range(600)])
    after = pd.DataFrame([traffic.sample(1.0)[0] for _ in range(600)])
    assert set(before.columns) == set(after.columns)
    assert "churn" not in before.columns and "customer_id" not in before.columns
    assert after["monthly_charges"].mean() > before["monthly_charges"].mean() + 15
    share = (after["contract"] == "month-to-month").mean()
    assert share > (before["contract"] == "month-to-month").mean() + 0.15
    _, label = traffic.sample(0.5)
    assert label in (0, 1) and isinstance(label, int)


def test_drift_ramps_over_the_configured_time() -> None:
    traffic = _traffic(ramp_s=100)
    traffic._started_at = 1000.0
    assert traffic.progress(1000.0) == 0.0
    assert traffic.progress(1050.0) == 0.5
    assert traffic.progress(5000.0) == 1.0


def test_labels_are_recorded_once_due() -> None:
    recorded: list[tuple[str, list[dict[str, Any]]]] = []
    traffic = _traffic(lambda endpoint, labels: recorded.append((endpoint, labels)),
                       feedback_delay_s=5)
    traffic._pending.extend([(0.0, "a", 0, 1), (0.0, "a", 1, 0), (float("inf"), "c", 0, 1)])
    traffic._flush_feedback()
    assert recorded == [("churn", [{"request_id": "a", "row": 0, "label": 1},
                                   {"request_id": "a", "row": 1, "label": 0}])]
    assert traffic.labelled == 2 and len(traffic._pending) == 1


def test_the_segments_labels_follow_the_drift() -> None:
    """Month-to-month DSL customers start leaving: their churn rate climbs with the drift,
    while the other customers' labels stay those of the table."""
    frame = pd.read_csv(dataset_path())
    traffic = _traffic()

    def churn_rates(progress: float) -> tuple[float, float]:
        rows = [traffic.sample(progress) for _ in range(1500)]
        segment = [label for row, label in rows
                   if row["contract"] == "month-to-month" and row["internet"] == "dsl"]
        others = [label for row, label in rows
                  if not (row["contract"] == "month-to-month" and row["internet"] == "dsl")]
        return sum(segment) / len(segment), sum(others) / len(others)

    in_table = frame[(frame.contract == "month-to-month") & (frame.internet == "dsl")].churn.mean()
    before, others_before = churn_rates(0.0)
    after, others_after = churn_rates(1.0)
    assert abs(before - in_table) < 0.08
    expected = in_table + (1 - in_table) * SEGMENT_CHURN
    assert abs(after - expected) < 0.06 and after > before + 0.3
    # The others only change through who is sampled (more month-to-month), not by relabelling.
    assert abs(others_after - others_before) < 0.1


def test_requests_not_answered_200_are_counted_as_failed() -> None:
    """A real HTTP server on loopback answers 503 then 200; the traffic counts one failure and
    queues a label for each row of the answered batch."""
    answers = iter([503, 200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            status = next(answers)
            self.send_response(status)
            self.send_header("x-request-id", f"req-{status}")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        traffic = _traffic(rows_per_request=3)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as client:
            traffic._send(client)
            traffic._send(client)
    finally:
        server.shutdown()
        server.server_close()
    assert (traffic.sent, traffic.failed) == (2, 1)
    assert traffic.counts() == "2 requests, 1 failed"
    assert [(rid, row) for _, rid, row, _ in traffic._pending] == [
        ("req-200", 0), ("req-200", 1), ("req-200", 2)]


def test_a_request_without_answer_is_failed_while_the_server_listens() -> None:
    """No answer while something listens on the port is a failure; once nothing listens any
    more (serving stopped after Ctrl-C) it is counted apart."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    traffic = DemoTraffic(f"http://127.0.0.1:{port}", "churn", "mlh_x",
                          pd.read_csv(dataset_path()), record=lambda endpoint, labels: 0)
    traffic._count_error(httpx.ReadError("connection reset by peer"))
    assert (traffic.failed, traffic.refused) == (1, 0)
    listener.close()
    traffic._count_error(httpx.ConnectError("connection refused"))
    assert (traffic.failed, traffic.refused) == (1, 1)
    assert traffic.counts() == "0 requests, 1 failed, 1 unanswered once the server stopped " \
        "listening"
