"""Cost of ``PredictionLog.emit`` per record (the prediction log's share of the hot path).

Run by hand, never in tests (tests assert that emit never blocks, not how fast it is):

    .venv/bin/python bench/predlog_emit.py --records 20000 --rounds 5

Prints the best and median nanoseconds per emit over the rounds, on a log that is not started
(nothing drains it, so only the append itself is measured). Expect about 0.1-2 us on a quiet
machine; a busy one preempts single rounds, which is why the best round is reported too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from mlharbor.core.records import PredictionRecord
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import LocalSegments

    records = [PredictionRecord(f"r{i}", "churn", "churn@champion", 1,
                                {"tenure": i % 70, "plan": "basic"}, [i % 2], 0.002,
                                datetime.now(UTC)) for i in range(args.records)]
    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(Path(tmp) / "journal", LocalSegments(Path(tmp) / "segments"),
                            max_pending=args.records * args.rounds)
        per_record = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for r in records:
                log.emit(r)
            per_record.append((time.perf_counter() - started) / len(records) * 1e9)
        assert log.dropped == 0
    print(f"emit: best {min(per_record):.0f} ns/record, median "
          f"{statistics.median(per_record):.0f} ns/record over {args.rounds} rounds of "
          f"{args.records} records")


if __name__ == "__main__":
    main()
