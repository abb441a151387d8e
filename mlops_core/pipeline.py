"""The chain: validate → drift → train → register → score → promote → sync, one run at a time."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from .config import Settings
from .data import infer_kinds, normalise, read_csv, unseen_rows, validate_frame
from .drift import PREDICTION, DriftReport, ReferenceProfile
from .errors import BusyError, DataValidationError, RegistryError, shorten
from .evidence import Comparison, compare
from .registry import COMPILED_TAG, LIFECYCLE, PRODUCTION, STAGING, LoadedModel, Registry, dumps

__all__ = ["RunResult", "run", "begin", "train_candidate", "register_candidate", "decide", "abort", "bootstrap",
           "check_drift", "pipeline_lock", "outputs"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one pass of the chain decided (the JSON of ``mlops run --json``)."""

    status: str  # no_drift | promoted | staged | archived | skipped | refused
    drift: dict | None = None
    version: str | None = None
    production: str | None = None
    staging: str | None = None
    reason: str = ""
    run_id: str | None = None
    bootstrapped: str | None = None
    scores: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # the paired tests behind a decision (see evidence.py)
    timings: dict = field(default_factory=dict)
    digest: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Steps:
    """Time each step of the chain and log one line per step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 4)
            log.info("step=%s seconds=%.3f", name, took)


@contextlib.contextmanager
def pipeline_lock(settings: Settings, timeout: float = 900.0) -> Iterator[None]:
    """Hold the home's file lock: one pipeline run at a time per registry home."""
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as err:
        raise BusyError(f"another pipeline run holds {settings.lock_path} (waited {timeout:.0f}s)") from err
    try:
        yield
    finally:
        lock.release()


def outputs(model, frame: pd.DataFrame, settings: Settings, kinds: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted labels (and P(class 1) when the promotion metric needs it) of ``model`` on normalised rows."""
    if not len(frame):
        return np.empty(0, dtype=int), np.empty(0) if settings.promotion_metric == "auc" else None
    # a fresh index: PyCaret's transformers re-join columns on the index, so a repeated label (rows gathered
    # from several frames) would multiply rows instead of scoring each once
    X = normalise(frame[list(settings.features)], kinds).reset_index(drop=True)
    pred = np.asarray(model.predict(X)).astype(int)
    proba = model.predict_proba(X)[:, 1] if settings.promotion_metric == "auc" else None
    if len(pred) != len(X):
        raise RuntimeError(f"the model gave {len(pred)} predictions for {len(X)} rows")
    return pred, proba


def _predicted(settings: Settings, registry: Registry, production: str | None, profile: ReferenceProfile,
               batch: pd.DataFrame, kinds: dict) -> dict:
    """Production's predicted classes on ``batch``, for the drift report's information (never fails the run)."""
    if production is None or PREDICTION not in profile.outputs or not len(batch):
        return {}
    try:
        labels = _compiled_labels(registry, production, batch, settings, kinds)
        if labels is None:  # a version without a compiled form: its pipeline (which imports the AutoML library)
            labels = outputs(registry.load_model(production).model, batch, settings, kinds)[0]
        return {PREDICTION: labels}
    except Exception as err:  # information only: a model that cannot score the batch fails later, in context
        log.warning("drift report without the predicted-class shift: %s", shorten(err))
        return {}


def _compiled_labels(registry: Registry, version: str, batch: pd.DataFrame, settings: Settings,
                     kinds: dict) -> np.ndarray | None:
    """``version``'s predicted classes on ``batch`` through its compiled form (no AutoML library needed, the
    answers verified equal to its pipeline's); None when it has none that can be served."""
    from .inference import artifact
    from .inference.compile import rows_of

    data, manifest, _ = registry.load_compiled(version)
    if data is None:
        return None
    try:
        predictor = artifact.load(data, manifest)
    except artifact.ArtifactError as err:
        log.info("version %s: compiled form not used (%s): scoring with its pipeline", version, err)
        return None
    rows = rows_of(normalise(batch[list(settings.features)], kinds), predictor)
    return np.asarray(predictor.raw(rows)[0]).astype(int)


def _metric_name(name: str) -> str:
    """A column name as MLflow accepts it in a metric key."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _drift_metrics(report: DriftReport) -> dict[str, float]:
    return {"mean_psi": report.mean_psi, **{f"psi_{_metric_name(k)}": v for k, v in report.psi.items()},
            **{f"info_psi_{_metric_name(k)}": v for k, v in report.info.items()}}


def _reference(settings: Settings, registry: Registry, production: str | None, *, with_data: bool = True):
    """The Production version's reference, or ``train.csv`` when there is no Production yet."""
    if production is not None:
        return registry.load_reference(production, with_data=with_data)
    frame = validate_frame(read_csv(settings.train_csv), settings, source=str(settings.train_csv))
    kinds = infer_kinds(frame, settings.features)
    return ReferenceProfile.fit(frame, features=settings.features, kinds=kinds, bins=settings.bins), frame


def check_drift(settings: Settings, *, current: Path | None = None, reference: Path | None = None,
                features: list[str] | None = None, registry: Registry | None = None,
                save: bool = True) -> DriftReport:
    """Score a batch against a reference (default: Production's, else ``train.csv``).

    The other profiled features, and Production's predicted classes, are scored as information.
    """
    features = list(features or settings.drift_features)
    current = Path(current or settings.current_csv)
    production = None
    if reference is not None:
        ref_frame = read_csv(reference)
        profile = ReferenceProfile.fit(ref_frame, features=[c for c in features if c in ref_frame.columns],
                                       bins=settings.bins)
    else:
        registry = registry or Registry(settings)
        production = registry.aliases().get(PRODUCTION)
        profile, ref_frame = _reference(settings, registry, production, with_data=False)
        if not set(features) <= set(profile.features):
            if ref_frame is None:
                _, ref_frame = registry.load_reference(production)
            profile = ReferenceProfile.fit(ref_frame, features=[c for c in features if c in ref_frame.columns],
                                           bins=settings.bins)
    batch = read_csv(current)
    kinds = {c: k for c, k in profile.kinds.items() if c in settings.features}
    batch = normalise(batch, kinds)
    predicted = (_predicted(settings, registry, production, profile, batch, kinds)
                 if set(settings.features) <= set(batch.columns) else {})
    report = profile.report(batch, features, threshold=settings.psi_threshold, outputs=predicted)
    if save:
        report.save(settings.data_dir)
    return report


def bootstrap(settings: Settings, registry: Registry, steps: _Steps | None = None) -> str:
    """Train on ``train.csv``, register version 1 and point both aliases at it."""
    steps = steps or _Steps()
    with steps("bootstrap_validate"):
        frame = validate_frame(read_csv(settings.train_csv), settings, source=str(settings.train_csv))
        kinds = infer_kinds(frame, settings.features)
    run_id = registry.create_run("bootstrap", tags={"mlops.kind": "bootstrap"})
    ok = False
    try:
        version = _train_and_register(settings, registry, run_id, frame, kinds, steps, prefix="bootstrap_",
                                      tags={"mlops.source": "bootstrap"})
        registry.promote(version)
        registry.log_run(run_id, tags={"mlops.status": "bootstrapped", "mlops.version": version})
        ok = True
    finally:
        with contextlib.suppress(Exception):
            registry.finish_run(run_id, ok=ok)
    log.info("bootstrapped %s version %s from %s", settings.model_name, version, settings.train_csv)
    return version


def _train_and_register(settings, registry, run_id, frame, kinds, steps, *, prefix="", tags) -> str:
    """Train on ``frame``, log everything to ``run_id`` and register a version (no alias yet)."""
    from .training import train

    with steps(f"{prefix}train"):
        result = train(frame, settings, kinds=kinds)
    with steps(f"{prefix}register"):
        return _register(settings, registry, run_id, result, frame, kinds, tags=tags)


def _register(settings, registry, run_id, result, frame, kinds, *, tags, regime: pd.DataFrame | None = None) -> str:
    """Log the trained pipeline, its comparison and reference to ``run_id``; create a version.

    The drift reference is fitted on ``regime`` (the batch the version was trained for; default: ``frame``),
    so later batches of the same regime do not score as drift against a mix of old and new rows.
    """
    regime = frame if regime is None else regime
    profile = ReferenceProfile.fit(normalise(regime, kinds), features=settings.features, kinds=kinds,
                                   bins=settings.bins)
    profile = profile.with_output(PREDICTION, outputs(result.model, regime, settings, kinds)[0])
    registry.log_run(run_id, params={"models": ",".join(settings.models) or "all", "fold": settings.fold,
                                     "n_jobs": settings.n_jobs, "seed": settings.seed, "n_train": len(frame),
                                     "best_model": result.model_name, "features": ",".join(settings.features),
                                     "target": settings.target, "history_rows": settings.history_rows,
                                     "n_regime": len(regime)},
                     metrics={f"cv_{k}": v for k, v in result.cv_metrics.items()},
                     artifacts={"": result.comparison_path})
    registry.log_reference(run_id, profile, frame)
    example = frame[list(settings.features)].head(5).reset_index(drop=True)
    uri = registry.log_model(run_id, result.model, example)
    compiled = _log_compiled(settings, registry, run_id, result.model, example, regime)
    return registry.register(uri, {"mlops.model": result.model_name,
                                   "cv_accuracy": round(result.cv_metrics.get("accuracy", 0.0), 6),
                                   COMPILED_TAG: compiled, **tags})


def _log_compiled(settings, registry, run_id, model, example, rows) -> str:
    """Compile the new version, verify it on ``rows`` (its own data), store it with the run; the version tag."""
    from mlflow.models import infer_signature

    from .inference import artifact

    schema = infer_signature(example).inputs
    loaded = LoadedModel(version="new", run_id=run_id, model=model, columns=list(schema.input_names()),
                         dtypes={c.name: c.type.name for c in schema.inputs})
    data, manifest = artifact.export(loaded, rows[list(settings.features)])
    registry.log_compiled(run_id, data, manifest)
    if data is None:
        log.info("not compiled (served through its pipeline): %s", manifest["reason"])
        return shorten(f"no: {manifest['reason']}", 250)
    log.info("compiled (%s kernel), verified on %d rows: %s", manifest["kernel"], manifest["probe_rows"],
             manifest["kernel_reason"])
    return "true"


def _holdout_split(batch: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    y = batch[settings.target]
    stratify = y if y.value_counts().min() >= 2 else None
    fit, hold = train_test_split(batch, test_size=settings.holdout_fraction, random_state=settings.seed,
                                 stratify=stratify)
    return fit.reset_index(drop=True), hold.reset_index(drop=True)


# -- the steps, callable one by one (the Airflow DAG) or chained by run() --------------------------

def begin(settings: Settings, *, current: Path | None = None, force: bool = False,
          registry: Registry | None = None, steps: _Steps | None = None, source: Path | None = None) -> RunResult:
    """Validate the batch, bootstrap an empty registry, skip known content, score drift.

    ``source`` names the batch in messages and records when ``current`` is a private copy of it.
    Returns ``status`` ``drift`` (the chain run stays open for :func:`train_candidate`),
    or a final ``no_drift``, ``refused`` or ``skipped``.
    """
    current = Path(current or settings.current_csv)
    name = str(source or current)
    registry = registry or Registry(settings)
    steps = steps or _Steps()
    with steps("validate"):
        try:
            content = current.read_bytes()
        except OSError as err:
            raise DataValidationError(name, [f"cannot read file: {err.strerror or err}"]) from err
        digest = hashlib.sha256(content).hexdigest()
        raw = read_csv(name, content=content)  # one clear error for an empty or garbled file
        production = registry.aliases().get(PRODUCTION)
        profile, _ = _reference(settings, registry, production, with_data=False)
        kinds = {c: profile.kinds[c] for c in settings.features}
        batch = validate_frame(raw, settings, kinds=kinds, require_target=False, source=name)
    if not force and production is not None and (done := registry.processed_run(digest, production)):
        aliases = registry.aliases()
        return RunResult("skipped", production=aliases.get(PRODUCTION), staging=aliases.get(STAGING), digest=digest,
                         reason=f"content {digest[:12]} was already processed against Production v{production} by run "
                                f"{done}; use --force", timings=steps.seconds)
    bootstrapped = None
    if production is None:
        production = bootstrapped = bootstrap(settings, registry, steps)
    run_id = registry.create_run("chain", tags={"mlops.kind": "chain", "mlops.batch_sha256": digest,
                                               "mlops.production_before": production, "mlops.current": name})
    out = RunResult("drift", run_id=run_id, digest=digest, bootstrapped=bootstrapped, timings=steps.seconds)
    try:
        with steps("drift"):
            if bootstrapped:  # the reference is now version 1's (train.csv): fitted alike, but load what it stored
                profile, _ = registry.load_reference(production, with_data=False)
            predicted = _predicted(settings, registry, production, profile, batch, kinds)
            report = profile.report(batch, settings.drift_features, threshold=settings.psi_threshold,
                                    outputs=predicted)
            paths = report.save(settings.data_dir)
            registry.log_run(run_id, artifacts={"drift": list(paths.values())}, metrics=_drift_metrics(report),
                             tags={"mlops.drift": str(report.drift).lower(),
                                   "mlops.drift_summary": json.dumps(report.summary())})
        out.drift = report.summary()
        if not report.drift:
            out.status, out.reason = "no_drift", f"mean PSI {report.mean_psi:.4f} <= threshold {settings.psi_threshold}"
        elif settings.target not in batch.columns:
            out.status = "refused"
            out.reason = (f"drift detected (mean PSI {report.mean_psi:.4f}) but the batch has no "
                          f"{settings.target!r} labels: retraining refused")
        elif (counts := batch[settings.target].value_counts()).size < 2 or counts.min() < 2:
            out.status = "refused"
            out.reason = (f"drift detected (mean PSI {report.mean_psi:.4f}) but the batch's labels hold "
                          f"{dict(sorted(counts.to_dict().items()))}: a classifier needs at least 2 rows of each "
                          f"class to be trained and judged; retraining refused")
        else:
            fit_rows, holdout = _holdout_split(batch, settings)
            _save_candidate_inputs(settings, run_id, fit_rows, holdout, kinds)
            return out
        return _finish(settings, registry, out)
    except BaseException:
        with contextlib.suppress(Exception):
            registry.finish_run(run_id, ok=False)
        raise


def train_candidate(settings: Settings, run_id: str, *, registry: Registry | None = None,
                    steps: _Steps | None = None):
    """Train on the batch's training rows (holdout kept out), after ``history_rows`` of Production's training data.

    A drifted batch is the new regime: by default the candidate learns it alone, so a changed label rule is not
    outvoted by the old rows; ``history_rows`` adds that many of the most recent rows the Production version
    was trained on (useful when batches are small and only the covariates move).
    """
    from .training import train

    registry = registry or Registry(settings)
    steps = steps or _Steps()
    production = registry.run_tags(run_id)["mlops.production_before"]
    fit_rows, _, kinds = _load_candidate_inputs(settings, run_id)
    training = fit_rows
    if settings.history_rows:
        _, ref_frame = registry.load_reference(production)
        history = normalise(ref_frame.tail(settings.history_rows), kinds)
        training = pd.concat([history, fit_rows[history.columns.intersection(fit_rows.columns)]], ignore_index=True)
    folder = _candidate_dir(settings, run_id)
    training.to_parquet(folder / "training.parquet", index=False)
    with steps("train"):
        result = train(training, settings, kinds=kinds)
    for path in (result.model_path, result.comparison_path):  # this run's copy, for a separate register step
        shutil.copy2(path, folder / path.name)
    return result


def register_candidate(settings: Settings, run_id: str, result=None, *, registry: Registry | None = None,
                       steps: _Steps | None = None) -> str:
    """Log the trained candidate to ``run_id`` and register it as a new version (no alias yet)."""
    from .training import TrainResult

    registry = registry or Registry(settings)
    steps = steps or _Steps()
    folder = _candidate_dir(settings, run_id)
    fit_rows, holdout, kinds = _load_candidate_inputs(settings, run_id)
    training = normalise(pd.read_parquet(folder / "training.parquet"), kinds)
    result = result or TrainResult.load(folder, n_train=len(training))
    digest = registry.run_tags(run_id).get("mlops.batch_sha256", "")
    with steps("register"):
        regime = pd.concat([fit_rows, holdout], ignore_index=True)
        return _register(settings, registry, run_id, result, training, kinds, regime=regime,
                         tags={"mlops.source": "drift", "mlops.batch_sha256": digest})


def decide(settings: Settings, run_id: str, version: str, *, registry: Registry | None = None,
           steps: _Steps | None = None) -> RunResult:
    """Judge the candidate on held-out rows no compared model has seen, with a paired test; act on the verdict.

    Promoted when it beats Production (by more than ``min_improvement``, one-sided p < ``promotion_alpha``);
    otherwise staged as the live challenger, unless a different challenger is already staged and the
    candidate does not beat it too: then the candidate is archived and the challenger keeps its live evidence.
    """
    registry = registry or Registry(settings)
    steps = steps or _Steps()
    tags = registry.run_tags(run_id)
    production = tags["mlops.production_before"]
    out = RunResult("staged", version=version, run_id=run_id, digest=tags.get("mlops.batch_sha256", ""),
                    drift=json.loads(tags.get("mlops.drift_summary", "null")), timings=steps.seconds)
    _, holdout, kinds = _load_candidate_inputs(settings, run_id)
    aliases = registry.aliases()
    now = aliases.get(PRODUCTION)
    if now != production:  # another trainer promoted meanwhile: the comparison would be against the wrong model
        raise RegistryError(f"Production moved from version {production} to {now} while this chain ran; "
                            f"version {version} stays undecided (run the batch again)")
    challenger = aliases.get(STAGING) if aliases.get(STAGING) not in (None, production, version) else None
    rivals = {PRODUCTION: production, **({STAGING: challenger} if challenger else {})}
    decided = False
    try:
        with steps("score"):
            training = pd.read_parquet(_candidate_dir(settings, run_id) / "training.parquet")
            seen = [training, *(registry.load_reference(v)[1] for v in rivals.values())]
            scored, dropped = _unseen(holdout, seen, settings, kinds)
            mine = outputs(registry.load_model(version).model, scored, settings, kinds)
            verdicts = {role: _compare(mine, outputs(registry.load_model(v).model, scored, settings, kinds),
                                       scored, settings) for role, v in rivals.items()}
        rule = {"alpha": settings.promotion_alpha, "min_improvement": settings.min_improvement}
        vs_prod = verdicts[PRODUCTION]
        if vs_prod.better(**rule):
            out.status = "promoted"
        elif challenger is None or verdicts[STAGING].better(**rule):
            out.status = "staged"
        else:
            out.status = "archived"
        test = (f"one-sided p < {settings.promotion_alpha}" if settings.promotion_alpha < 1
                else "no test (alpha 1)")
        out.evidence = {"rule": f"difference > {settings.min_improvement} and {test}",
                        "alpha": settings.promotion_alpha, "min_improvement": settings.min_improvement,
                        "holdout_rows": len(holdout), "rows_scored": len(scored), "rows_dropped_seen": dropped,
                        **{f"vs_{role}": {"version": rivals[role], **c.to_dict()} for role, c in verdicts.items()}}
        out.reason = _reason(out.status, version, rivals, verdicts, len(scored), dropped)
        metric = settings.promotion_metric
        out.scores = {f"candidate_{metric}": vs_prod.candidate, f"production_{metric}": vs_prod.baseline,
                      "holdout_rows": len(holdout), "rows_scored": len(scored), "rows_dropped_seen": dropped,
                      "production_version": production, "difference": vs_prod.difference,
                      "ci_low": vs_prod.ci_low, "ci_high": vs_prod.ci_high, "p_value": vs_prod.p_value}
        registry.log_run(run_id, metrics={k: v for k, v in {
            f"holdout_{metric}_candidate": vs_prod.candidate, f"holdout_{metric}_production": vs_prod.baseline,
            "holdout_difference": vs_prod.difference, "holdout_p_value": vs_prod.p_value,
            "holdout_rows_scored": len(scored), "holdout_rows_dropped_seen": dropped}.items() if np.isfinite(v)})
        registry.tag_version(version, {f"holdout_{metric}_candidate": round(vs_prod.candidate, 6),
                                       f"holdout_{metric}_production": round(vs_prod.baseline, 6),
                                       "holdout_difference": round(vs_prod.difference, 6),
                                       "holdout_ci95": f"[{vs_prod.ci_low:.4f}, {vs_prod.ci_high:.4f}]",
                                       "holdout_p_value": f"{vs_prod.p_value:.4g}", "holdout_test": vs_prod.test,
                                       "holdout_rows": len(holdout), "holdout_rows_scored": len(scored),
                                       "holdout_rows_dropped_seen": dropped, "compared_with": production,
                                       **({"compared_with_staging": challenger,
                                           "staging_p_value": f"{verdicts[STAGING].p_value:.4g}"}
                                          if challenger else {}),
                                       "decision_reason": out.reason[:5000], "decision": out.status})  # decision last
        # the aliases move and the decision record is written as one step: a SIGTERM waits until both are done
        with steps("promote"), _uninterrupted():
            if out.status == "promoted":
                registry.promote(version)
            elif out.status == "staged":
                registry.make_challenger(version)
            else:
                registry.tag_version(version, {LIFECYCLE: "archived"})
            out = _finish(settings, registry, out)
            decided = True
    except BaseException:
        # never leave a half-registered version looking live: one that holds no alias says it failed
        if not decided:
            with contextlib.suppress(Exception):
                if version not in registry.aliases().values():
                    registry.tag_version(version, {LIFECYCLE: "failed"})
        raise
    shutil.rmtree(_candidate_dir(settings, run_id), ignore_errors=True)
    return out


def _unseen(holdout: pd.DataFrame, seen: list, settings: Settings, kinds: dict) -> tuple[pd.DataFrame, int]:
    """The holdout rows (features and label) that none of the compared models was trained on, and how many not."""
    columns = [*settings.features, settings.target]
    every = {**kinds, settings.target: "numeric"}
    rows = normalise(holdout, every)
    known = pd.concat([normalise(f[f.columns.intersection(columns)], every) for f in seen if f is not None],
                      ignore_index=True)
    keep = (unseen_rows(rows, known, columns) if set(columns) <= set(known.columns)
            else pd.Series(True, index=rows.index))
    return holdout[keep.to_numpy()].reset_index(drop=True), int((~keep).sum())


def _compare(mine, theirs, rows: pd.DataFrame, settings: Settings) -> Comparison:
    return compare(settings.promotion_metric, rows[settings.target].to_numpy(), mine[0], theirs[0], mine[1],
                   theirs[1], seed=settings.seed)


def _reason(status: str, version: str, rivals: dict, verdicts: dict, scored: int, dropped: int) -> str:
    head = (f"v{version} vs Production v{rivals[PRODUCTION]} on {scored} unseen holdout rows "
            f"({dropped} dropped as seen in training): {verdicts[PRODUCTION].summary()}")
    if status == "promoted":
        return f"{head} -> promoted"
    if STAGING not in rivals:
        return f"{head} -> not enough evidence to promote: staged as the live challenger"
    vs = f"vs Staging v{rivals[STAGING]}: {verdicts[STAGING].summary()}"
    if status == "staged":
        return f"{head}; {vs} -> replaces the challenger as Staging"
    return f"{head}; {vs} -> does not beat the challenger: archived, Staging keeps v{rivals[STAGING]}"


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends (moving aliases is all or nothing), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in held:
            if callable(previous[sig]):
                previous[sig](sig, None)
            elif previous[sig] == signal.SIG_DFL:
                signal.raise_signal(sig)


def _finish(settings: Settings, registry: Registry, out: RunResult) -> RunResult:
    """Record the decision on the chain run and close it; the batch now counts as processed."""
    aliases = registry.aliases()
    out.production, out.staging = aliases.get(PRODUCTION), aliases.get(STAGING)
    registry.log_run(out.run_id, tags={"mlops.status": out.status, "mlops.reason": out.reason,
                                       "mlops.version": out.version or "",
                                       "mlops.production_after": out.production or "", "mlops.done": "true"},
                     text={"decision.json": dumps(out.to_dict())})
    registry.finish_run(out.run_id, ok=True)
    log.info("decision status=%s version=%s production=%s staging=%s reason=%r", out.status, out.version,
             out.production, out.staging, out.reason)
    return out


def _candidate_dir(settings: Settings, run_id: str) -> Path:
    """What the steps of one chain run hand each other (own folder: runs of other trainers cannot mix in)."""
    return settings.models_dir / "candidate" / run_id


def _save_candidate_inputs(settings: Settings, run_id: str, fit_rows: pd.DataFrame, holdout: pd.DataFrame,
                           kinds: dict) -> None:
    folder = _candidate_dir(settings, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    fit_rows.to_parquet(folder / "train_rows.parquet", index=False)
    holdout.to_parquet(folder / "holdout.parquet", index=False)
    (folder / "kinds.json").write_text(json.dumps(kinds))


def _load_candidate_inputs(settings: Settings, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = _candidate_dir(settings, run_id)
    return (pd.read_parquet(folder / "train_rows.parquet"), pd.read_parquet(folder / "holdout.parquet"),
            json.loads((folder / "kinds.json").read_text()))


def abort(settings: Settings, run_id: str, *, registry: Registry | None = None) -> None:
    """Mark an open chain run failed (its batch is then processed again next time); a decided run stays as it is."""
    with contextlib.suppress(Exception):
        registry = registry or Registry(settings)
        if registry.run_tags(run_id).get("mlops.done") != "true":
            registry.finish_run(run_id, ok=False)
    shutil.rmtree(_candidate_dir(settings, run_id), ignore_errors=True)


def run(settings: Settings, *, force: bool = False, current: Path | None = None,
        registry: Registry | None = None, lock_timeout: float = 900.0, source: Path | None = None) -> RunResult:
    """Process one batch through the whole chain under the lock and return the decision."""
    steps = _Steps()
    with pipeline_lock(settings, timeout=lock_timeout):
        registry = registry or Registry(settings)
        out = begin(settings, current=current, force=force, registry=registry, steps=steps, source=source)
        if out.status != "drift":
            return out
        try:
            result = train_candidate(settings, out.run_id, registry=registry, steps=steps)
            version = register_candidate(settings, out.run_id, result, registry=registry, steps=steps)
            result = decide(settings, out.run_id, version, registry=registry, steps=steps)
        except BaseException:
            abort(settings, out.run_id, registry=registry)
            raise
        result.bootstrapped = out.bootstrapped
        return result
