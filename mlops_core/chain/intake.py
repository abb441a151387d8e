"""The first stage: read the batch once, check the settings against it, validate it, skip known content."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..data import check_fits, infer_kinds, read_csv, validate_frame
from ..drift import ReferenceProfile
from ..errors import DataValidationError, SettingsError
from ..labels import task_labels
from ..registry import PRODUCTION, STAGING
from .context import OPEN, Context, Run, RunResult

__all__ = ["intake", "reference_profile", "check_features"]


def intake(ctx: Context, current: Path, *, source: str | None = None, digest: str | None = None,
           force: bool = False) -> Run:
    """Read ``current`` (named ``source`` in messages), validate it against the settings and Production's
    reference; a run over content already processed against the same Production version ends ``skipped``.

    ``digest`` is the SHA-256 of the file's bytes when the caller hashed them already (the watcher hashes the
    private copy it hands over); the bytes are hashed here otherwise.
    """
    settings, registry = ctx.settings, ctx.registry
    name = str(source or current)
    with ctx.timer("validate"):
        try:
            check_fits(name, Path(current).stat().st_size)
            content = Path(current).read_bytes()
        except OSError as err:
            raise DataValidationError(name, [f"cannot read file: {err.strerror or err}"]) from err
        digest = digest or hashlib.sha256(content).hexdigest()
        raw = read_csv(name, content=content)  # one clear error for an empty or garbled file
        del content
        production = registry.aliases().get(PRODUCTION)
        profile = reference_profile(ctx, production, batch_columns=list(raw.columns))
        check_features(settings, raw.columns, profile.features, where=_where(settings, production))
        new = [c for c in settings.features if c not in profile.features]
        kinds = {**infer_kinds(raw, new), **{c: profile.kinds[c] for c in settings.features if c in profile.features}}
        batch = validate_frame(raw, settings, kinds=kinds, require_target=False, source=name)
        if settings.target in batch.columns and settings.task != "regression":
            try:  # refused up front (exit 2): no positive class, AUC for more than two classes
                task_labels(batch[settings.target], settings)
            except SettingsError as err:
                raise SettingsError(f"{name}: {err}") from err
    run = Run(source=name, digest=digest, batch=batch, kinds=kinds, production=production, profile=profile,
              result=RunResult(OPEN, digest=digest, timings=ctx.timer.seconds))
    if not force and production is not None and (done := registry.processed_run(digest, production)):
        aliases = registry.aliases()
        run.result.status = "skipped"
        run.result.production, run.result.staging = aliases.get(PRODUCTION), aliases.get(STAGING)
        run.result.reason = (f"content {digest[:12]} was already processed against Production v{production} by "
                             f"run {done}; use --force")
    return run


def reference_profile(ctx: Context, production: str | None, *,
                      batch_columns: list[str] | None = None) -> ReferenceProfile:
    """Production's drift reference, or one fitted on ``train.csv`` when there is no Production yet."""
    settings = ctx.settings
    if production is not None:
        return ctx.registry.load_reference(production, with_data=False)[0]
    raw = read_csv(settings.train_csv)
    if batch_columns is not None:
        check_features(settings, batch_columns, list(raw.columns), where=_where(settings, None))
    frame = validate_frame(raw, settings, source=str(settings.train_csv))
    return ReferenceProfile.fit(frame, features=settings.features, kinds=infer_kinds(frame, settings.features),
                                bins=settings.bins)


def check_features(settings, columns, reference, *, where: str) -> None:
    """Every feature the settings name must be in the batch or the reference: one that is in neither is a
    mistake in the settings (a typo, a renamed column), named with the columns there are (exit 2).

    A feature in the batch only is new on purpose (the candidate learns it, the drift report marks it "no
    reference"); one in the reference only is a missing column of the batch (a validation error)."""
    known = set(columns) | set(reference)
    problems = []
    for var, names in (("MLOPS_FEATURES", settings.features), ("MLOPS_DRIFT_FEATURES", settings.drift_features)):
        wrong = [c for c in names if c not in known]
        if wrong:
            problems.append(f"{var} names {wrong}, in neither the batch nor {where}")
    if problems:
        batch = sorted(set(columns) - {settings.target})
        raise SettingsError("; ".join(problems) + f" (the batch has {_listing(batch)}; {where} has "
                            f"{_listing(sorted(set(reference) - {settings.target}))})")


def _where(settings, production: str | None) -> str:
    return f"Production v{production}'s reference" if production is not None else str(settings.train_csv)


def _listing(columns: list[str], limit: int = 40) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return f"columns {shown}" + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


