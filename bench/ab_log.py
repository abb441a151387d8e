#!/usr/bin/env python
"""The prediction log writer's CPU per row as the table grows: time-ordered request ids vs random ones.

    .venv/bin/python bench/ab_log.py                  # about a minute
    .venv/bin/python bench/ab_log.py --rows 1000000

Two fresh SQLite prediction stores in a temporary folder are filled the way a
serving worker fills them (batches of 1,000 single-row predictions), one with the
server's ids (UUIDv7, ``server.ab.new_request_id``) and one with random UUIDv4 ids,
the baseline, in the same run. Each time a store passes a size mark, the CPU time
of the next ten batches is measured; the table prints microseconds per row and the
ratio of the baseline to ours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from mlops_core.ab import PredictionStore
    from mlops_core.config import Settings
    from server.ab import new_request_id

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000, help="the table size to grow to")
    args = parser.parse_args()
    batch = 1000
    marks = [m for m in (10_000, 100_000, 300_000, 1_000_000, 3_000_000) if m <= args.rows]
    ids = {"v7 (ours)": new_request_id, "v4 (random)": lambda: uuid.uuid4().hex}
    results: dict[str, dict[int, float]] = {name: {} for name in ids}
    with tempfile.TemporaryDirectory(prefix="bench-ab-log-") as folder:
        for name, make_id in ids.items():
            store = PredictionStore(Settings(home=Path(folder) / name.split()[0], ab_max_rows=0))
            written = 0
            for mark in marks:
                while written < mark:
                    store.write(_items(make_id, batch))
                    written += batch
                items = [_items(make_id, batch) for _ in range(10)]
                started = time.process_time()
                for chunk in items:
                    store.write(chunk)
                written += 10 * batch
                results[name][mark] = (time.process_time() - started) / (10 * batch) * 1e6
                print(f"  {name:>12} at {mark:>9,} rows: {results[name][mark]:6.1f} us CPU a row", flush=True)
            store.dispose()
    print(f"\n{'rows in table':>14} {'v7 us/row':>10} {'v4 us/row':>10} {'v4 / v7':>8}")
    for mark in marks:
        ours, base = results["v7 (ours)"][mark], results["v4 (random)"][mark]
        print(f"{mark:>14,} {ours:>10.1f} {base:>10.1f} {base / ours:>7.1f}x")


def _items(make_id, n: int) -> list:
    from mlops_core.ab import Prediction

    now = time.time()
    out = []
    for _ in range(n):
        request_id = make_id()
        out.append(Prediction(request_id, [request_id], 2, "Production", "1", [0], [0.5], 200, 1.0, now))
    return out


if __name__ == "__main__":
    main()
