#!/usr/bin/env python
"""The prediction log writer's CPU per row as the table grows: time-ordered request ids vs random ones.

    .venv/bin/python bench/ab_log.py                  # about a minute
    .venv/bin/python bench/ab_log.py --rows 1000000

Two fresh SQLite prediction stores in a temporary folder are filled the way a
serving worker fills them (batches of 1,000 single-row predictions), one with the
server's ids (UUIDv7, ``server.ids.new_request_id``) and one with random UUIDv4 ids,
the baseline, in the same run. Each time a store passes a size mark, the CPU time
of the next ten batches is measured; the table prints microseconds per row and the
ratio of the baseline to ours.

Then the writer beside a busy request thread (a worker under load): for three
seconds a thread spins in Python while the store's writer is handed 800 rows every
0.2 s, once with the store's multi-row INSERTs and once with the driver's
``executemany`` (the baseline), which gives up the GIL around every row; the table
prints the rows written and the writer's CPU per row.
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
    from mlops_core.config import Settings
    from mlops_core.predictions import PredictionStore
    from server.ids import new_request_id

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
        busy_writer(Path(folder))


def busy_writer(folder: Path, seconds: float = 3.0) -> None:
    import threading

    from mlops_core import predictions as ab
    from mlops_core.config import Settings
    from mlops_core.predictions import PredictionStore
    from server.ids import new_request_id

    class ExecuteMany(PredictionStore):
        """The baseline: the driver's executemany, one row (and one GIL hand-off) at a time."""

        def write(self, items):
            rows = [(i.call_id, i.call_id, i.created, i.user_id, i.arm, i.version, 0, 0.5, 200, 1.0) for i in items]
            raw = self.engine.raw_connection()
            try:
                raw.cursor().executemany(ab._INSERT + ab._ROW, rows)
                raw.commit()
            finally:
                raw.close()
            return len(rows)

    print(f"\n{'writer':>22} {'rows written':>13} {'of':>7} {'CPU us/row':>11} {'busy loops/s':>13}")
    for name, kind in (("multi-row (ours)", PredictionStore), ("executemany", ExecuteMany)):
        store = kind(Settings(home=folder / name.split()[0], ab_max_rows=0))
        store.write(_items(new_request_id, 10))
        stop_at = time.monotonic() + seconds
        given, written, cpu = [0], [0], [0.0]

        def writer(store=store, stop_at=stop_at, given=given, written=written, cpu=cpu):
            while time.monotonic() < stop_at:
                items = _items(new_request_id, 800)
                given[0] += len(items)
                started = time.thread_time()
                written[0] += store.write(items)
                cpu[0] += time.thread_time() - started
                time.sleep(0.2)

        thread = threading.Thread(target=writer)
        thread.start()
        loops = 0
        while time.monotonic() < stop_at:
            sum(range(200))
            loops += 1
        thread.join()
        store.dispose()
        print(f"{name:>22} {written[0]:>13,} {given[0]:>7,} {cpu[0] / max(1, written[0]) * 1e6:>11.1f} "
              f"{loops / seconds:>13,.0f}")


def _items(make_id, n: int) -> list:
    from mlops_core.predictions import Prediction

    now = time.time()
    out = []
    for _ in range(n):
        request_id = make_id()
        out.append(Prediction(request_id, [request_id], 2, "Production", "1", [0], [0.5], 200, 1.0, now))
    return out


if __name__ == "__main__":
    main()
