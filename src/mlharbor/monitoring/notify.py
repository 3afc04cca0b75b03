"""Alert notifications to webhooks: generic JSON, or Slack-compatible (``{"text": ...}``).

Each delivery is retried with exponential backoff on connection errors and 5xx/429 answers;
what happened to each target is returned and kept in the alert history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("mlharbor.monitoring.notify")


class Webhooks:
    def __init__(self, generic: Sequence[str] = (), slack: Sequence[str] = (), *,
                 attempts: int = 4, backoff_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.generic, self.slack = list(generic), list(slack)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s

    def __call__(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        body = {k: v for k, v in event.items() if k != "deliveries"}
        icon = ":red_circle:" if event["state"] == "firing" else ":large_green_circle:"
        slack_body = {"text": f"{icon} [{event['severity']}] {event['summary']}"}
        return ([self._deliver(url, body) for url in self.generic] +
                [self._deliver(url, slack_body) for url in self.slack])

    def _deliver(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        outcome: dict[str, Any] = {"url": _redact(url), "attempts": 0, "delivered": False}
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            outcome["attempts"] = attempt
            try:
                answer = httpx.post(url, json=body, timeout=self.timeout_s)
                outcome["status"] = answer.status_code
                if answer.status_code < 300:
                    outcome["delivered"] = True
                    return outcome
                if answer.status_code < 500 and answer.status_code != 429:
                    break  # the receiver refuses this body: retrying will not help
            except httpx.HTTPError as exc:
                outcome["error"] = type(exc).__name__
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        log.warning("alert %s not delivered to %s: %s", body.get("alert", ""),
                    outcome["url"], outcome)
        return outcome


def _redact(url: str) -> str:
    """Webhook URLs carry secrets in their path (Slack's do): keep scheme and host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."
