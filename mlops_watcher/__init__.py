"""The watchdog daemon behind ``watcher.py``: one module per concern.

- :mod:`.daemon`: filesystem events → settle → hash → one run at a time, retries, the live A/B schedule;
- :mod:`.child`: a run of the chain in a child process a shutdown can stop, and that child's entry point;
- :mod:`.state`: the last outcome a restart reads back;
- :mod:`.logs`: key=value log lines, journald-aware.

Nothing happens on import; ``watcher.main()`` is the entry point.
"""
