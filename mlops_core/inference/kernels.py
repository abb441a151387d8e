"""Kernels: the final estimator on a feature matrix, and the choice of the one that serves a version.

A kernel is a function ``x -> (predicted labels, predict_proba matrix)``; a regressor's ``x -> (predicted
numbers, None)``, verified within a relative tolerance (1e-9; ONNX Runtime's 1e-6). Three kinds compete for each
version:

- ``onnx``: the estimator converted by skl2onnx at registration (:func:`convert_onnx`) and run by ONNX Runtime
  (:func:`onnx_kernel`, which needs neither skl2onnx nor onnx: a serving worker stays light);
- ``hand``: the hand-written kernel of :mod:`.libraries` (``hand_kernel``), which reads private attributes;
- ``generic``: the estimator's own ``predict`` and ``predict_proba``.

No converted graph and no hand kernel is trusted: each must reproduce the pipeline's outputs on the probe rows
(labels equal, probabilities within the kernel's ``tolerance``). :func:`choose_kernel` does that for the
registration (the candidates verified, the verified ones timed, the best kept: the fastest, but ONNX Runtime,
which costs every worker ~40 MB, only when it is much faster than the best kernel without it) and for the server
(the registration's ranking tried in order, the first that reproduces the stored outputs kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import first_line
from .libraries import hand_kernel
from .predictors import generic_kernel, is_regressor

__all__ = ["KINDS", "ONNX_TOLERANCE", "HAND_PENALTY", "ONNX_WORKER_MB", "ONNX_FACTOR", "ONNX_SAVING_US", "Choice",
           "candidates", "choose_kernel", "convert_onnx", "onnx_kernel", "onnx_pays", "rank"]

#: the candidates, in the order preferred when they are as fast
KINDS = ("onnx", "hand", "generic")
#: ONNX Runtime computes in its own order (and trees in float32): equal to the pipeline within this, not bit for bit
ONNX_TOLERANCE = 1e-6
#: a hand kernel (private attributes) is chosen over the estimator's own methods only when this many times faster
HAND_PENALTY = 1.5
#: what importing ONNX Runtime and holding a session adds to a serving worker (measured by bench/memory)
ONNX_WORKER_MB = 40
#: ONNX Runtime serves only when the best kernel without it is this many times slower on one row ...
ONNX_FACTOR = 3.0
#: ... and slower by this many microseconds a call (a request costs a worker about a millisecond)
ONNX_SAVING_US = 100.0
_ONNX_RULE = (f"ONNX Runtime, ~{ONNX_WORKER_MB} MB more in every worker, serves only when the best kernel without "
              f"it is {ONNX_FACTOR:g}x slower and {ONNX_SAVING_US:g} us slower a call")
_BATCH = 32  # the batch size timed beside one row


def convert_onnx(estimator, *, width: int, dtype) -> tuple[bytes, str]:
    """``estimator`` as an ONNX graph reading a matrix of ``width`` columns (its bytes), and the dtype it reads:
    float32 for scikit-learn's trees (which compare float32 features), else ``dtype``. Needs skl2onnx;
    raises what it raises when it has no converter."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    reads = np.dtype(np.float32) if _tree_based(estimator) else np.dtype(dtype)
    tensor = {np.dtype(np.float32): FloatTensorType, np.dtype(np.float64): DoubleTensorType}.get(reads)
    if tensor is None:
        raise TypeError(f"expected float32 or float64 features, got {reads}")
    options = None if is_regressor(estimator) else {id(estimator): {"zipmap": False}}  # probabilities as a matrix
    graph = convert_sklearn(estimator, initial_types=[("x", tensor([None, width]))], options=options)
    return graph.SerializeToString(), reads.str


def _tree_based(estimator) -> bool:
    from sklearn.tree import BaseDecisionTree

    if isinstance(estimator, BaseDecisionTree):
        return True
    members = getattr(estimator, "estimators_", None)
    if members is None or len(members) == 0:
        return False
    return all(isinstance(m, BaseDecisionTree) for m in np.asarray(members, dtype=object).ravel())


def onnx_kernel(graph: bytes, dtype: str):
    """The kernel of an ONNX graph made by :func:`convert_onnx`: one ONNX Runtime session on one thread (a
    serving worker is a process, one per core), run sequentially. Non-finite features raise, as the
    estimator's own input check would."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) == 1 and len(outputs) == 1:  # a regressor's graph: the predictions (relative tolerance)
        name, reads, run = inputs[0].name, np.dtype(dtype), session.run

        def onnx_regression(x):
            x = np.ascontiguousarray(x, dtype=reads)
            if not np.isfinite(x).all():
                raise ValueError("non-finite features")
            return run(outputs, {name: x})[0].astype(np.float64).reshape(len(x)), None
        onnx_regression.tolerance = ONNX_TOLERANCE
        onnx_regression.session = session
        return onnx_regression
    if len(inputs) != 1 or len(outputs) != 2:
        raise ValueError(f"expected one input and two outputs (label, probabilities), got {len(inputs)} and "
                         f"{outputs}")
    name, reads, run = inputs[0].name, np.dtype(dtype), session.run

    def onnx(x):
        x = np.ascontiguousarray(x, dtype=reads)
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        labels, proba = run(outputs, {name: x})
        return labels, proba.astype(np.float64)
    onnx.tolerance = ONNX_TOLERANCE
    onnx.session = session  # held with the kernel, for whoever inspects it
    return onnx


def candidates(estimator, graph: tuple[bytes, str] | None | Callable[[], tuple[bytes, str]],
               ) -> dict[str, Callable[[], Any]]:
    """The makers of each kind of kernel for ``estimator``: ``graph`` is the stored ONNX graph and its dtype,
    None (none was stored), or a function converting it (at registration). A maker returns None when its kind
    does not apply, and raises when it fails."""

    def make_onnx():
        stored = graph() if callable(graph) else graph
        return None if stored is None else onnx_kernel(*stored)

    return {"onnx": make_onnx, "hand": lambda: hand_kernel(estimator), "generic": lambda: generic_kernel(estimator)}


@dataclass
class Choice:
    """The outcome of :func:`choose_kernel`: the kind chosen (None: no candidate verified), why, and per kind
    what happened (``name``: the kernel's name, ``us_1``/``us_32``: its time a call, ``rejected``: why not,
    ``unchecked``: timed only, too slow to serve before the kernels that verified)."""

    kind: str | None
    reason: str
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        """The kinds that verified, best first: the order a server tries them in (then the generic kernel, when it
        is not among them)."""
        return [k for k, r in self.report.items() if "rejected" not in r and "unchecked" not in r]


def choose_kernel(compiled, check: Callable[[Any], str | None], makers: dict[str, Callable[[], Any]], *,
                  timing: list | None = None, order: list[str] | None = None, measure=None) -> Choice:
    """Set ``compiled.kernel`` to the best candidate that ``check(compiled)`` (None: reproduces the pipeline)
    accepts, and say which, and why.

    With ``timing`` (the feature matrices to time on: one row each, then a batch), at registration: the kernels
    that need nothing more in a worker (hand, generic) are built, checked and the verified ones timed
    (``measure(kernel, inputs)``: seconds a call, default the best of a few rounds); the fastest on one row (the
    common request) is the best of them, a hand kernel counted :data:`HAND_PENALTY` times slower than it is (the
    generic kernel, always the last resort at load, is only timed when it is slower than that: not checked). ONNX
    Runtime adds ~:data:`ONNX_WORKER_MB` MB to every worker that imports it: the estimator is converted and its
    graph checked only when it could pay for that, and serves only when the best kernel without it is
    :data:`ONNX_FACTOR` times slower and :data:`ONNX_SAVING_US` microseconds slower on one row (:func:`rank`).
    Without ``timing``, at load: the kinds in ``order`` (default :data:`KINDS`) are tried in that order, then the
    generic one if it was not among them, and the first that verifies serves.
    """
    measure = measure or _per_call
    report: dict[str, dict[str, Any]] = {}
    kernels = {}

    def attempt(kind: str, *, unless_slower_than: float | None = None) -> None:
        """Build, check and (at registration) time the ``kind`` kernel; with ``unless_slower_than``, timed first
        and left unchecked when it is that slow on one row (it could not serve before what is faster)."""
        entry = report[kind] = {}
        try:
            kernel = makers[kind]()
            if kernel is None:
                entry["rejected"] = "none for this estimator"
                return
            entry["name"] = kernel.__name__
            if unless_slower_than is not None:
                entry["us_1"] = round(measure(kernel, timing[0]) * 1e6, 1)
                if entry["us_1"] >= unless_slower_than:
                    entry["us_32"] = round(measure(kernel, [timing[1]]) * 1e6, 1)
                    entry["unchecked"] = "slower than the hand kernel (checked at load, when it is needed)"
                    return
            compiled.kernel = kernel
            problem = check(compiled)
        except Exception as err:  # e.g. no converter, a graph that does not load, a missing private API
            problem = f"failed: {type(err).__name__}: {first_line(err, 200)}"
        if problem is not None:
            entry.pop("us_1", None)
            entry["rejected"] = problem
            return
        kernels[kind] = kernel
        if timing is not None:
            singles, batch = timing
            if "us_1" not in entry:
                entry["us_1"] = round(measure(kernel, singles) * 1e6, 1)
            entry["us_32"] = round(measure(kernel, [batch]) * 1e6, 1)

    if timing is None:
        kinds = [k for k in (KINDS if order is None else order) if k in makers]
        if "generic" in makers and "generic" not in kinds:
            kinds.append("generic")  # the estimator's own methods: the last resort, always tried
        for kind in kinds:
            attempt(kind)
            if kind in kernels:
                break
    else:
        if "hand" in makers:
            attempt("hand")
        if "generic" in makers:  # the last resort at load in any case: checked here only when it could serve
            attempt("generic", unless_slower_than=HAND_PENALTY * report["hand"]["us_1"] if "hand" in kernels else None)
        if "onnx" in makers:
            best = min((report[k]["us_1"] for k in kernels), default=None)
            if best is not None and best < ONNX_SAVING_US:  # no graph can be ONNX_SAVING_US faster
                report["onnx"] = {"rejected": f"not converted: the fastest kernel without ONNX Runtime takes "
                                              f"{best:g} us a call, and {_ONNX_RULE}"}
            else:
                attempt("onnx")
    if not kernels:
        reasons = "; ".join(f"{k}: {r['rejected']}" for k, r in report.items())
        return Choice(None, f"no kernel reproduces the pipeline ({reasons})", report)
    if timing is None:
        kind = next(iter(kernels))
        rejected = [f"{k}: {r['rejected']}" for k, r in report.items() if k != kind]
        reason = f"{kind} verified" + (f" (rejected: {'; '.join(rejected)})" if rejected else "")
    else:
        ranked = rank({k: report[k]["us_1"] for k in kernels})
        kind = ranked[0]
        report = {k: report[k] for k in [*ranked, *(k for k in KINDS if k in report and k not in kernels)]}
        reason = _why(kind, report)
    compiled.kernel = kernels[kind]
    return Choice(kind, reason, report)


def onnx_pays(onnx_us: float, other_us: float) -> bool:
    """Whether a kernel taking ``onnx_us`` a call through ONNX Runtime is worth its memory against the best kernel
    without it, taking ``other_us``: :data:`ONNX_FACTOR` times faster and :data:`ONNX_SAVING_US` faster."""
    return other_us >= ONNX_FACTOR * onnx_us and other_us - onnx_us >= ONNX_SAVING_US


def rank(us_1: dict[str, float]) -> list[str]:
    """The verified kinds (each with its time a call on one row), best first: the order a server tries them in.

    Of the kernels needing nothing more in a worker, the fastest (a hand kernel counted :data:`HAND_PENALTY` times
    its time: it reads private attributes, the estimator's own methods do not) comes first; ONNX Runtime comes
    before it only when :func:`onnx_pays` against the fastest of them."""
    def score(kind: str) -> tuple[float, int]:
        return us_1[kind] * (HAND_PENALTY if kind == "hand" else 1.0), KINDS.index(kind)

    rest, ranked = dict(us_1), []
    while rest:
        others = sorted((k for k in rest if k != "onnx"), key=score)
        pick = "onnx" if "onnx" in rest and (
            not others or onnx_pays(rest["onnx"], min(rest[k] for k in others))) else others[0]
        ranked.append(pick)
        del rest[pick]
    return ranked


def _why(kind: str, report: dict[str, dict[str, Any]]) -> str:
    chosen = report[kind]
    timed = [k for k, r in report.items() if k != kind and "rejected" not in r]
    faster = [k for k in timed if report[k]["us_1"] < chosen["us_1"]]
    text = (f"{kind} ({chosen['name']}) fastest verified{' without ONNX Runtime' if 'onnx' in faster else ''}: "
            f"{chosen['us_1']:g} us a call on 1 row, {chosen['us_32']:g} us on {_BATCH}")
    if timed:
        text += "; then " + ", ".join(f"{k} ({report[k]['name']}) {report[k]['us_1']:g} us"
                                      + (f" ({report[k]['unchecked']})" if "unchecked" in report[k] else "")
                                      for k in timed)
    if "hand" in faster:
        text += f" (a hand kernel serves only when {HAND_PENALTY:g}x faster than the estimator's own methods)"
    if kind == "onnx" or "onnx" in timed:
        text += f" ({_ONNX_RULE})"
    rejected = [f"{k}: {r['rejected']}" for k, r in report.items() if "rejected" in r]
    if rejected:
        text += "; rejected: " + "; ".join(rejected)
    return text


def _per_call(kernel, inputs: list, *, budget: float = 0.02) -> float:
    """The best mean time (seconds) of one call of ``kernel`` over ``inputs``, in at least 3 rounds and about
    ``budget`` seconds; one round when a round takes longer than the budget (a slow kernel: its time is what
    counts, not its last percent), and at most about 10x the budget."""
    kernel(inputs[0])  # a first call may set things up
    best, spent, rounds = float("inf"), 0.0, 0
    while rounds < 3 or spent < budget:
        started = time.perf_counter()
        for x in inputs:
            kernel(x)
        elapsed = time.perf_counter() - started
        best, spent, rounds = min(best, elapsed / len(inputs)), spent + elapsed, rounds + 1
        if spent > 10 * budget or (elapsed > budget and spent >= budget):
            break
    return best
