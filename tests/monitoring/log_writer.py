"""A process that logs predictions under load until it is killed (used by the SIGKILL test).

Prints ``<last accepted request number> <wall time>`` after every batch it has handed to the
log, so the parent knows which records were accepted before which moment.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mlharbor.core.records import PredictionRecord
from mlharbor.settings import Settings


def main() -> None:
    from mlharbor.monitoring.service import open_prediction_log

    settings = Settings(home=Path(sys.argv[1]))
    log = open_prediction_log(settings).start()
    seq = 0
    while True:
        for _ in range(50):
            seq += 1
            log.emit(PredictionRecord(
                request_id=str(seq), endpoint="churn", model_ref="churn@champion",
                served_version=1, inputs={"tenure": seq % 70, "plan": "basic"},
                outputs=[seq % 2], latency_s=0.001, at=datetime.now(UTC)))
        sys.stdout.write(f"{seq} {time.time()}\n")
        sys.stdout.flush()
        time.sleep(0.002)


if __name__ == "__main__":
    main()
