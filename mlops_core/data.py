"""Titanic loading, train/current generation with optional drift, CSV validation."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Settings
from .errors import DataValidationError, first_line
from .files import atomic_write
from .labels import MAX_CLASSES_HINT, canonical, label_key, label_keys

__all__ = ["load_titanic", "load_diabetes", "DEMO_TABLES", "make_datasets", "read_csv", "validate_frame", "load_batch",
           "infer_kinds", "atomic_write_csv", "normalise", "apply_concept", "RowSet", "row_hashes", "check_fits"]

NUMERIC, CATEGORICAL = "numeric", "categorical"
_NA_VALUES = ["", "?", "NA", "NaN", "nan", "null", "None"]


def load_titanic() -> pd.DataFrame:
    """Return the 1309-passenger Titanic table shipped with the package."""
    with resources.files("mlops_core.datasets").joinpath("titanic.csv").open("rb") as fh:
        return pd.read_csv(fh, na_values="?", keep_default_na=True)


def load_diabetes() -> pd.DataFrame:
    """The 442-patient diabetes table bundled with scikit-learn (Efron et al., 2004): ten baseline measures and
    ``progression``, a number to predict (disease progression one year later): the regression demo."""
    from sklearn.datasets import load_diabetes as bundled

    return bundled(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})


DEMO_TABLES = {"titanic": load_titanic, "diabetes": load_diabetes}


def atomic_write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` next to ``path`` and rename it in place, so readers see whole files."""
    return atomic_write(path, lambda fh: frame.to_csv(fh, index=False))


def apply_drift(batch: pd.DataFrame, strength: float, *, columns: tuple[str, ...] = ("age", "fare"),
                seed: int = 0, scales: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Shift and stretch numeric ``columns`` by ``strength`` (0: unchanged, 1: strong drift).

    The shift is ``strength`` standard deviations of each column; ``scales``
    gives those deviations (so batches drawn from one population get the same
    shift); by default they are measured on ``batch`` itself.
    """
    if strength < 0:
        raise ValueError(f"drift strength must be >= 0, got {strength}")
    out = batch.copy()
    rng = np.random.default_rng(seed)
    for col in columns:
        values = pd.to_numeric(out[col], errors="coerce")
        scale = (scales or {}).get(col) or float(np.nanstd(values)) or 1.0
        noise = rng.normal(0.0, 0.1 * scale * strength, size=len(values))
        out[col] = (values * (1.0 + strength) + strength * scale + noise).round(4)
    return out


def apply_concept(batch: pd.DataFrame, strength: float, *, target: str, column: str,
                  task: str = "classification") -> pd.DataFrame:
    """Change the label rule: rows in the top ``strength`` share of ``column`` get the opposite label (with more
    than two classes, the next class in sorted order; for a number to predict, its mirror image about the
    median, so the relationship there is reversed).

    0 leaves the labels as they are; 0.5 inverts the rule for the upper half of
    ``column`` (a model of the old rule is then wrong there as often as it was
    right, while one retrained on the new batch can learn it); 1 inverts every label.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"concept strength must be in [0, 1], got {strength}")
    out = batch.copy()
    if strength == 0:
        return out
    values = pd.to_numeric(out[column], errors="coerce")
    changed = values.rank(pct=True, method="average") > 1.0 - strength  # missing values keep the old rule
    if task == "regression":
        values = pd.to_numeric(out[target], errors="coerce")
        out.loc[changed, target] = 2 * float(values.median()) - values[changed]
        return out
    classes = sorted(out[target].dropna().unique(), key=label_key)
    following = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    out.loc[changed, target] = out.loc[changed, target].map(following)
    return out


def make_datasets(settings: Settings, *, drift: float = 0.0, concept: float = 0.0, seed: int = 0,
                  train_fraction: float = 0.6, batch_fraction: float = 1.0, resample: bool = False,
                  write_train: bool = True, table: str = "") -> tuple[Path | None, Path]:
    """Write ``train.csv`` (the initial reference) and ``current.csv`` (a new batch).

    The train/batch split of the Titanic table is fixed; ``seed`` draws which
    rows of the batch part (``batch_fraction`` of them; with ``resample``, drawn
    with replacement, so rows repeat as in real exports) form ``current.csv`` and
    in what order. ``drift`` shifts the drift features of the batch; ``concept``
    changes its label rule (see :func:`apply_concept`).
    """
    if not 0 < train_fraction < 1 or not 0 < batch_fraction <= 1:
        raise ValueError("train_fraction must be in (0, 1) and batch_fraction in (0, 1]")
    name = table or ("diabetes" if settings.task == "regression" else "titanic")
    if name not in DEMO_TABLES:
        raise ValueError(f"unknown demo table {name!r}; expected one of {sorted(DEMO_TABLES)}")
    full = DEMO_TABLES[name]()
    missing = [c for c in (*settings.features, settings.target) if c not in full.columns]
    if missing:
        raise ValueError(f"the {name} table has no column(s) {missing}; it has {list(full.columns)}")
    table = full[[*settings.features, settings.target]]
    order = np.random.default_rng(0).permutation(len(table))
    cut = int(len(table) * train_fraction)
    train = table.iloc[order[:cut]].reset_index(drop=True)
    rest = table.iloc[order[cut:]]
    batch = rest.sample(frac=batch_fraction, replace=resample, random_state=seed).reset_index(drop=True)
    numeric = tuple(c for c in settings.drift_features if pd.api.types.is_numeric_dtype(batch[c]))
    if drift:
        # the shift is measured on the batch population, not on the drawn rows: one regime, one shift
        scales = {c: float(np.nanstd(pd.to_numeric(rest[c], errors="coerce"))) for c in numeric}
        batch = apply_drift(batch, drift, columns=numeric, seed=seed, scales=scales)
    if concept:
        if not numeric:
            raise ValueError("--concept needs a numeric drift feature to define where the label rule changes")
        batch = apply_concept(batch, concept, target=settings.target, column=numeric[0], task=settings.task)
    train_path = atomic_write_csv(train, settings.train_csv) if write_train else None
    return train_path, atomic_write_csv(batch, settings.current_csv)


#: memory a run needs per byte of CSV, above the libraries' own (measured by bench/scale: the file's bytes, the
#: parsed frame, the training part and PyCaret's fitted copies of it, the holdout scored in chunks)
MEMORY_PER_CSV_BYTE = 22
BASE_MEMORY = 600 * 2 ** 20  # the libraries a run imports (PyCaret, MLflow, scikit-learn...)


def available_memory() -> int | None:
    """Bytes this process may still use: the machine's available memory, or less under a cgroup limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(path: str | os.PathLike, size: int, *, available: int | None = None) -> None:
    """Refuse a batch the machine cannot hold, before it is read: the error gives the size it would need."""
    available = available_memory() if available is None else available
    needed = BASE_MEMORY + MEMORY_PER_CSV_BYTE * size
    if available is not None and needed > available:
        raise DataValidationError(str(path), [
            f"the batch is {_size(size)}: processing it needs about {_size(needed)} of memory and "
            f"{_size(available)} is available; split it into smaller batches or run on a larger machine"])


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def read_csv(path: str | os.PathLike, *, content: bytes | None = None) -> pd.DataFrame:
    """Read a CSV with the fast pyarrow reader; any failure becomes one clear error.

    ``content`` parses bytes already read from ``path`` (so a hash and the
    parsed frame describe the same bytes).
    """
    name = str(path)
    if content is None:
        try:
            content = Path(path).read_bytes()
        except OSError as err:
            raise DataValidationError(name, [f"cannot read file: {err.strerror or err}"]) from err
    if not content.strip():
        raise DataValidationError(name, ["file is empty"])
    head = content[:65536]
    if b"\x00" in head:
        raise DataValidationError(name, ["not a CSV text file (binary content)"])
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataValidationError(name, [f"not UTF-8 text: byte 0x{content[err.start]:02x} at offset {err.start}"
                                         ]) from err
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    columns = [c.strip().strip('"') for c in header.split(",")]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise DataValidationError(name, [f"duplicated column(s) {dupes}"])
    try:
        frame = pd.read_csv(io.BytesIO(content), engine="pyarrow", na_values=_NA_VALUES, keep_default_na=False)
    except Exception as err:  # pyarrow raises several unrelated types for malformed text
        raise DataValidationError(name, [f"not a readable CSV: {first_line(err)}"]) from err
    finally:
        _release_arrow_memory()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _release_arrow_memory() -> None:
    """Give back what pyarrow's allocator (mimalloc or jemalloc) keeps of the memory the reader is done with: it
    serves only pyarrow, so the rest of the run could never reuse it (1M rows, 29 MB of CSV: 141 MB of 270)."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()


def normalise(frame: pd.DataFrame, kinds: Mapping[str, str]) -> pd.DataFrame:
    """The one form every frame has before it reaches a pipeline (training, holdout, drift, serving).

    Numeric columns become float64 (unparsable values missing); categorical ones
    become objects whose every kind of missing (``None`` from parquet, ``pd.NA``,
    NaN) is ``np.nan``, the one that scikit-learn's imputers treat as missing.
    Columns not in ``kinds`` are left as they are; the input is not changed.
    """
    out = frame.copy(deep=False)  # columns replaced, not written into: the input keeps its own
    for col, kind in kinds.items():
        if col not in out.columns:
            continue
        if kind == NUMERIC:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64", copy=False)
        else:
            values = out[col].astype("object")
            out[col] = values.where(values.notna(), np.nan)
    return out


@dataclass(frozen=True)
class RowSet:
    """Which rows a model was trained on, as one 64-bit hash a row (8 bytes a row, not the rows themselves): a
    row is in the set when it equals one of them on ``columns`` (features normalised, labels by their text)."""

    columns: tuple[str, ...]
    hashes: np.ndarray  # sorted, unique uint64

    @classmethod
    def of(cls, frame: pd.DataFrame, columns, kinds: Mapping[str, str], target: str) -> RowSet:
        columns = tuple(c for c in columns if c in frame.columns)
        return cls(columns, np.unique(row_hashes(frame, columns, kinds, target)))

    def contains(self, frame: pd.DataFrame, kinds: Mapping[str, str], target: str) -> np.ndarray:
        """True for each row of ``frame`` in the set; all False when ``frame`` lacks one of the set's columns
        (another feature set: its rows cannot be the same rows)."""
        if not len(frame) or not self.hashes.size or any(c not in frame.columns for c in self.columns):
            return np.zeros(len(frame), dtype=bool)
        keys = row_hashes(frame, self.columns, kinds, target)
        where = np.minimum(np.searchsorted(self.hashes, keys), self.hashes.size - 1)
        return self.hashes[where] == keys

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, hashes=self.hashes, columns=np.array(self.columns, dtype=object).astype(str))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RowSet:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return cls(tuple(str(c) for c in stored["columns"]), stored["hashes"])


def row_hashes(frame: pd.DataFrame, columns, kinds: Mapping[str, str], target: str) -> np.ndarray:
    """One uint64 a row over ``columns``: features in their normalised form, the label by its text, so the same
    row read from a CSV, a parquet file or a frame in memory hashes alike."""
    rows = normalise(frame[list(columns)], {c: k for c, k in kinds.items() if c != target})
    if target in rows.columns:
        keys = label_keys(rows[target])
        rows[target] = pd.Series(np.where(keys == None, np.nan, keys), index=rows.index, dtype=object)  # noqa: E711
    return pd.util.hash_pandas_object(rows, index=False).to_numpy(dtype=np.uint64)


def infer_kinds(frame: pd.DataFrame, columns) -> dict[str, str]:
    """Map each column to ``numeric`` or ``categorical`` from its dtype."""
    return {c: NUMERIC if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
            else CATEGORICAL for c in columns}


def validate_frame(frame: pd.DataFrame, settings: Settings, *, kinds: Mapping[str, str] | None = None,
                   require_target: bool = True, source: str = "batch") -> pd.DataFrame:
    """Check a batch against the settings and return it cleaned (numeric columns as float).

    ``kinds`` says which features must be numeric (default: inferred from the
    batch itself). Raises one :class:`DataValidationError` naming every problem.
    """
    problems: list[str] = []
    missing = [c for c in settings.features if c not in frame.columns]
    if missing:
        problems.append(f"missing column(s) {missing}")
    has_target = settings.target in frame.columns
    if require_target and not has_target:
        problems.append(f"missing target column {settings.target!r}")
    if len(frame) < settings.min_rows:
        problems.append(f"{len(frame)} row(s), expected at least {settings.min_rows}")
    present = [c for c in settings.features if c in frame.columns]
    kinds = {**infer_kinds(frame, present), **(kinds or {})}
    # the columns taken, not copied: each one checked is replaced by its clean form, none is written into
    out = pd.DataFrame({c: frame[c] for c in [*present, *([settings.target] if has_target else [])]}, copy=False)
    for col in present:
        if len(out) and out[col].isna().all():
            problems.append(f"column {col!r} has no values (all missing)")
            continue
        if kinds.get(col) != NUMERIC:
            continue
        values = pd.to_numeric(out[col], errors="coerce")
        bad = out[col].notna() & values.isna()
        if bad.any():
            examples = sorted({str(v) for v in out[col][bad].head(3)})
            problems.append(f"column {col!r}: {int(bad.sum())} non-numeric value(s) such as {examples}"
                            f"{_first_row(bad.to_numpy())}")
        infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if infinite.any():
            problems.append(f"column {col!r}: {int(infinite.sum())} infinite value(s){_first_row(infinite)}")
        out[col] = values.astype(float, copy=False)
    if has_target and len(out):
        problems += _check_labels(out, settings, require_target=require_target)
        if out[settings.target].isna().all():
            out = out.drop(columns=[settings.target])
    if problems:
        raise DataValidationError(source, problems)
    out = normalise(out, {c: kinds.get(c, CATEGORICAL) for c in present})
    out.index = pd.RangeIndex(len(out))  # not reset_index: that copies every column
    return out


def _first_row(mask: np.ndarray) -> str:
    """Where the first flagged row is: its number among the data rows and its line in the file (header line 1)."""
    first = int(np.flatnonzero(mask)[0])
    return f", the first at row {first + 1} (line {first + 2})"


def _check_labels(out: pd.DataFrame, settings: Settings, *, require_target: bool) -> list[str]:
    """Put the label column of ``out`` in its one form (:func:`labels.canonical`) and say what is wrong with it.

    Rows without a label stay (their features count for drift); training and the holdout leave them out.
    """
    if settings.task == "regression":
        return _check_numbers(out, settings, require_target=require_target)
    target = settings.target
    labels = canonical(out[target])
    out[target] = labels
    present = labels.dropna()
    if not len(present):
        return [f"target {target!r} has no values"] if require_target else []
    classes = present.unique()
    fractions = [v for v in classes if isinstance(v, float) and not float(v).is_integer()]
    if fractions:
        shown = sorted(fractions)[:5]
        return [f"target {target!r} holds numbers such as {shown} ({len(classes)} distinct values): classes are "
                f"needed, and this looks like a number to predict: set MLOPS_TASK=regression"]
    if len(classes) > settings.max_classes:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in classes)
        return [f"target {target!r} has {len(classes)} distinct values, more than MLOPS_MAX_CLASSES="
                f"{settings.max_classes}: " + ("numbers with this many values look like a number to predict: "
                                               "set MLOPS_TASK=regression (or check MLOPS_TARGET)" if numbers
                                               else MAX_CLASSES_HINT)]
    if len(classes) < 2:
        return [f"target {target!r} has a single class ({classes[0]!r}); two are needed to train"]
    return []


def _check_numbers(out: pd.DataFrame, settings: Settings, *, require_target: bool) -> list[str]:
    """A regression's target: numbers (text that reads as one is taken), finite, not all the same."""
    target = settings.target
    raw = out[target]
    values = pd.to_numeric(raw.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    values = values.astype(float)
    out[target] = values
    if raw.notna().sum() == 0:
        return [f"target {target!r} has no values"] if require_target else []
    problems = []
    text = (raw.notna() & values.isna()).to_numpy()
    if text.any():
        examples = sorted({str(v) for v in raw[text].head(3)})
        problems.append(f"target {target!r}: {int(text.sum())} non-numeric value(s) such as {examples}"
                        f"{_first_row(text)}: a regression needs numbers (MLOPS_TASK=regression)")
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        problems.append(f"target {target!r}: {int(infinite.sum())} infinite value(s){_first_row(infinite)}")
    finite = values[np.isfinite(values.to_numpy())]
    if not problems and finite.nunique() < 2:
        problems.append(f"target {target!r} is constant ({finite.iloc[0]:g}): there is nothing to learn")
    return problems


def load_batch(path: str | os.PathLike, settings: Settings, *, kinds: Mapping[str, str] | None = None,
               require_target: bool = False) -> pd.DataFrame:
    """Read and validate a CSV; the error names the file and every problem."""
    return validate_frame(read_csv(path), settings, kinds=kinds, require_target=require_target, source=str(path))
