"""mlops_core.forks: a per-process value is rebuilt in a forked child, never shared with the parent."""

from __future__ import annotations

import os

from mlops_core.forks import PerProcess


def test_a_forked_child_builds_its_own_value_and_the_parent_keeps_its_own():
    builds: list[int] = []
    value = PerProcess(lambda: builds.append(os.getpid()) or object())
    assert value.here() is None and builds == []  # nothing is built before first use
    parent_value = value.get()
    assert value.get() is parent_value and value.here() is parent_value and builds == [os.getpid()]

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the inherited value is not its own
        try:
            ok = value.here() is None and value.get() is not parent_value and builds[-1] == os.getpid()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert value.get() is parent_value and builds == [os.getpid()]  # the parent's is untouched
    value.clear()
    assert value.here() is None and value.get() is not parent_value
