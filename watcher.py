"""The watchdog daemon's entry point: ``mlops-watcher`` (or ``python watcher.py``).

Runs the retraining chain whenever a new, complete batch lands at ``<data>/current.csv``. The daemon
itself lives in :mod:`mlops_watcher`: ``daemon`` (events, settling, one run at a time, retries),
``child`` (a run in a child process a shutdown can stop), ``state`` (what a restart finds) and ``logs``
(key=value lines, journald-aware). This file only builds the settings, the log and the signal handlers.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from mlops_core.config import Settings
from mlops_core.runtime import prepare_process
from mlops_watcher.child import ChildRunner, Outcome
from mlops_watcher.daemon import TargetHandler, Watcher
from mlops_watcher.logs import STYLES, kv, setup_logging

__all__ = ["TargetHandler", "Watcher", "ChildRunner", "Outcome", "main"]

log = logging.getLogger("watcher")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlops-watcher", description="Run the retraining chain whenever a new, "
                                "complete batch lands at <data>/current.csv.")
    p.add_argument("--home", type=Path, help="project home (default: MLOPS_HOME or the working directory)")
    p.add_argument("--log-format", choices=STYLES,
                   help="text: key=value lines with a timestamp; journal: syslog priority prefix, no timestamp; "
                        "auto: journal when stderr is connected to journald (default: MLOPS_LOG_FORMAT or auto)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="default: MLOPS_LOG_LEVEL or INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Watch the drop folder until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(home=args.home, log_format=args.log_format, log_level=args.log_level)
    except ValueError as err:
        setup_logging(args.log_format or "auto", args.log_level or "INFO")
        log.error("watcher=config-error reason=%s", kv(err))
        return 2
    style = setup_logging(settings.log_format, settings.log_level)
    prepare_process(settings, http_timeout=10)  # the run children inherit it

    stop = threading.Event()

    def _on_signal(signum, frame):
        log.info("watcher=stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)

    watcher = Watcher(settings, runner=ChildRunner(log_style=style, max_seconds=settings.run_timeout_seconds))
    try:
        watcher.start()
        while not stop.wait(1.0):
            if not watcher.alive():
                log.error("watcher=dead reason=%s", kv("the observer or the worker thread stopped"))
                return 1
    except OSError as err:  # e.g. the drop folder cannot be created or watched (inotify limits)
        log.error("watcher=failed reason=%s", kv(err))
        return 1
    finally:
        watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
