"""The real watcher daemon under bad input and SIGKILL: it keeps running, the registry stays consistent.

- the malformed-batch corpus of tests/test_bad_data.py dropped one file after another into one running
  daemon; prints ``watcher bad-data corpus: tried N, rejected R, processed P, crashed 0``;
- the daemon SIGKILLed mid-training (its run child then stops itself), restarted, SIGKILLed again
  together with its run child (nothing gets to unwind), restarted: the batch is processed exactly once
  and no version registered by a killed run carries an alias.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pandas as pd
import pytest
from _corpus import corpus
from _watching import Daemon, assert_registry_consistent, registry_state, seed_state, sha

from mlops_core.config import Settings
from mlops_core.data import make_datasets
from mlops_core.registry import PRODUCTION, STAGING, Registry

pytestmark = pytest.mark.slow


def drop(target, content: bytes) -> None:
    """How a careful producer delivers a batch: temp file in the same folder, then rename over the target."""
    tmp = target.with_name(".current.csv.part")
    tmp.write_bytes(content)
    os.replace(tmp, target)


def test_corpus_through_the_watcher_rejects_cleanly_and_never_crashes(fresh, tmp_path, capsys):
    make_datasets(fresh.replace(data_dir=tmp_path / "scratch"), seed=21, write_train=False)
    base = pd.read_csv(tmp_path / "scratch" / "current.csv")
    cases = corpus(base, million_rows=False)  # 40 MB through the daemon: covered by the library test (test_bad_data)
    seed_state(fresh)
    daemon = Daemon(fresh, tmp_path / "watcher.log").start()
    counts = {"tried": 0, "rejected": 0, "processed": 0, "crashed": 0}
    failures: list[str] = []
    try:
        for name, (content, expected) in cases.items():
            before = registry_state(fresh)
            mark = daemon.mark()
            drop(fresh.current_csv, content)
            counts["tried"] += 1
            if not content:  # the daemon does not start a run on an empty file
                daemon.wait_for(lambda r: r.get("reason") == "empty-file", after=mark)
                counts["rejected"] += 1
                continue
            end = daemon.ended(sha(content), after=mark)
            if end["run"] == "failed" or daemon.proc.poll() is not None:
                counts["crashed"] += 1
                failures.append(f"{name}: run failed: {end.get('error')} {end.get('reason', '')[:300]}")
            elif end["run"] == "rejected":
                counts["rejected"] += 1
                if expected == "processed" or expected not in end["reason"]:
                    failures.append(f"{name}: rejected with {end['reason'][:300]}")
                if str(fresh.current_csv) not in end["reason"]:
                    failures.append(f"{name}: the reason does not name the target: {end['reason'][:200]}")
                if registry_state(fresh) != before:
                    failures.append(f"{name}: registry or aliases changed by a rejected file")
            else:
                counts["processed"] += 1
                if expected != "processed":
                    failures.append(f"{name}: processed ({end['status']}) but expected rejection '{expected}'")
                if registry_state(fresh)[0] != before[0]:
                    failures.append(f"{name}: aliases moved by a batch without drift")

        # a batch that disappears before it settles: skipped, nothing run
        mark = daemon.mark()
        fresh.current_csv.write_bytes(b"pclass,sex\n1,male\n")
        fresh.current_csv.unlink()
        daemon.wait_for(lambda r: r.get("reason") == "missing" or r.get("event") == "deleted", after=mark)
        counts["tried"] += 1
        counts["rejected"] += 1
        daemon.barrier() if fresh.current_csv.exists() else time.sleep(1.0)
        assert daemon.runs(after=mark) == []
        assert daemon.proc.poll() is None, daemon.tail()
    finally:
        code = daemon.stop()
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    with capsys.disabled():
        print(f"\nwatcher bad-data corpus: {summary}")
    assert code == 0, "the daemon did not stop cleanly on SIGTERM"
    assert counts["crashed"] == 0 and not failures, "\n".join(failures)
    assert counts["tried"] >= 25 and counts["processed"] >= 5
    assert_registry_consistent(fresh)
    assert registry_state(fresh)[0] == {PRODUCTION: "1", STAGING: "1"}


def _child_pid(daemon: Daemon, after: int) -> int:
    return int(daemon.wait_for(lambda r: r.get("run") == "child", after=after)["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie still answers kill(0): look at its state
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    return False


def _done_runs(settings: Settings, digest: str) -> list:
    reg = Registry(settings)
    return reg.client.search_runs([reg.experiment_id()], filter_string=f"tags.`mlops.batch_sha256` = '{digest}' "
                                                                       "and tags.`mlops.done` = 'true'")


def test_sigkill_mid_training_then_restart_processes_the_batch_exactly_once(fresh, tmp_path):
    scratch = fresh.replace(data_dir=tmp_path / "scratch")
    make_datasets(scratch, seed=601, drift=0.5, write_train=False)
    drifted = scratch.current_csv.read_bytes()
    digest = sha(drifted)
    seed_state(fresh)
    daemon = Daemon(fresh, tmp_path / "watcher.log")
    try:
        # 1. SIGKILL the daemon alone while its child trains: the orphaned child stops itself
        mark = daemon.start().mark()
        drop(fresh.current_csv, drifted)
        child = _child_pid(daemon, mark)
        daemon.wait_for(lambda r: r.get("step") == "drift", after=mark)  # logged as training begins
        time.sleep(1.5)
        assert not any(r.get("run") in ("done", "failed") for r in daemon.records()[mark:]), daemon.tail()
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the run child outlived its SIGKILLed daemon by 10 s"
        assert_registry_consistent(fresh)
        assert registry_state(fresh)[0] == {PRODUCTION: "1", STAGING: "1"}

        # 2. restart: the batch runs again; SIGKILL daemon and child together once training is done
        #    (registration under way): nothing unwinds, like a power cut or an OOM kill of the unit
        mark = daemon.start().mark()
        child = _child_pid(daemon, mark)
        daemon.wait_for(lambda r: r.get("step") == "train" or r.get("run") in ("done", "failed"), after=mark,
                        timeout=120)
        for pid in (daemon.proc.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemon.proc.wait(10)
        second_run_finished = any(r.get("run") == "done" for r in daemon.records()[mark:])
        assert_registry_consistent(fresh)

        # 3. restart: the batch is processed (once in all) and the daemon stays up
        mark = daemon.start().mark()
        if not second_run_finished:
            end = daemon.ended(digest, after=mark, timeout=150)
            assert end["run"] == "done" and end["status"] in ("promoted", "staged"), end
        daemon.barrier()
        records = daemon.records()
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    done = [r for r in records if r.get("run") == "done" and r.get("sha256") == digest]
    assert len(done) == 1, [r for r in records if r.get("run")]
    assert len(_done_runs(fresh, digest)) == 1
    aliases = assert_registry_consistent(fresh)
    winner = done[0]["version"]
    reg = Registry(fresh)
    for v in reg.versions():
        described = reg.describe(v["version"])
        if described["tags"].get("mlops.batch_sha256") == digest and v["version"] != winner:
            # registered by a killed run: never live
            assert not described["aliases"] and v["version"] not in aliases.values(), described
            assert v["lifecycle"] not in (PRODUCTION, STAGING), described
    assert winner in aliases.values()
