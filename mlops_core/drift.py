"""PSI drift: reference profiles fitted once, scoring any batch, and the DriftReport."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .data import CATEGORICAL, NUMERIC, infer_kinds

__all__ = ["EMPTY_SHARE", "PREDICTION", "PREDICTED_VALUE", "psi", "FeatureProfile", "ReferenceProfile", "DriftReport"]

EMPTY_SHARE = 1e-4
_MISSING = "<missing>"
PREDICTION = "predicted_class"  # the output profile: the serving model's predicted labels on its reference
PREDICTED_VALUE = "predicted_value"  # ... a regression's predicted numbers


def psi(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    """``Σ (cur − ref) · ln(cur / ref)`` with empty bins counted as 1e-4."""
    ref = np.where(np.asarray(reference_shares, float) > 0, reference_shares, EMPTY_SHARE)
    cur = np.where(np.asarray(current_shares, float) > 0, current_shares, EMPTY_SHARE)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _as_float(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _numeric_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin: right-closed interior bins, open outer bins, then the missing bin."""
    missing = np.isnan(x)
    idx = np.searchsorted(edges, x[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return np.append(counts, float(missing.sum()))


def _categorical_counts(values) -> dict[str, int]:
    """Counts per category label (``str`` of the value), missing values under one label."""
    counts = pd.Series(values, copy=False).value_counts(dropna=False, sort=False)
    out: dict[str, int] = {}
    for key, n in counts.items():
        label = _MISSING if pd.isna(key) else str(key)
        out[label] = out.get(label, 0) + int(n)
    return out


@dataclass(frozen=True)
class FeatureProfile:
    """What the reference looks like for one feature: bins and their shares."""

    name: str
    kind: str
    n: int
    edges: tuple[float, ...] = ()  # numeric: interior edges
    shares: tuple[float, ...] = ()  # numeric: len(edges) + 2 bins (the last is missing)
    categories: Mapping[str, float] = field(default_factory=dict)  # categorical: share per label

    @classmethod
    def fit(cls, name: str, values, *, kind: str, bins: int = 10) -> FeatureProfile:
        """Learn the bins of ``values`` as the README's "PSI, exactly" pins them."""
        n = len(values)
        if n == 0:
            raise ValueError(f"cannot fit a profile of {name!r} on zero rows")
        if kind == NUMERIC:
            x = _as_float(values)
            present = x[~np.isnan(x)]
            edges = (np.unique(np.quantile(present, np.arange(1, bins) / bins)) if present.size
                     else np.array([], dtype=float))
            counts = _numeric_counts(x, edges)
            return cls(name, kind, n, tuple(map(float, edges)), tuple(map(float, counts / n)))
        counts = _categorical_counts(values)
        return cls(name, CATEGORICAL, n, categories={k: v / n for k, v in sorted(counts.items())})

    def bin_shares(self, values) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Labels, reference shares and current shares over the same bins."""
        n = len(values)
        if n == 0:
            raise ValueError(f"cannot score {self.name!r} on zero rows")
        if self.kind == NUMERIC:
            edges = np.asarray(self.edges, float)
            cur = _numeric_counts(_as_float(values), edges) / n
            bounds = ["-inf", *(f"{e:g}" for e in edges), "inf"]
            labels = [f"({lo}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:])] + [_MISSING]
            return labels, np.asarray(self.shares, float), cur
        current = {k: v / n for k, v in _categorical_counts(values).items()}
        labels = sorted(set(self.categories) | set(current))
        ref = np.array([self.categories.get(k, 0.0) for k in labels])
        cur = np.array([current.get(k, 0.0) for k in labels])
        return labels, ref, cur

    def score(self, values) -> float:
        _, ref, cur = self.bin_shares(values)
        return psi(ref, cur)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["categories"] = dict(self.categories)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> FeatureProfile:
        return cls(name=data["name"], kind=data["kind"], n=int(data["n"]), edges=tuple(data.get("edges", ())),
                   shares=tuple(data.get("shares", ())), categories=dict(data.get("categories", {})))


@dataclass(frozen=True)
class ReferenceProfile:
    """Profiles of the reference data, fitted once, scoring any number of batches."""

    features: Mapping[str, FeatureProfile]
    bins: int = 10
    outputs: Mapping[str, FeatureProfile] = field(default_factory=dict)  # e.g. PREDICTION

    @classmethod
    def fit(cls, frame: pd.DataFrame, *, features: Iterable[str] | None = None,
            kinds: Mapping[str, str] | None = None, bins: int = 10) -> ReferenceProfile:
        names = list(features if features is not None else frame.columns)
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise ValueError(f"reference has no column(s) {missing}")
        kinds = {**infer_kinds(frame, names), **(kinds or {})}
        return cls({c: FeatureProfile.fit(c, frame[c].to_numpy(), kind=kinds[c], bins=bins) for c in names}, bins)

    @property
    def kinds(self) -> dict[str, str]:
        return {name: p.kind for name, p in self.features.items()}

    def with_output(self, name: str, values, *, kind: str = CATEGORICAL) -> ReferenceProfile:
        """A copy that also profiles a model output on the reference rows: :data:`PREDICTION` (classes,
        categorical) or :data:`PREDICTED_VALUE` (a regression's numbers, in quantile bins)."""
        values = np.asarray(values, dtype=float) if kind == NUMERIC else np.asarray(values).astype(str)
        fitted = FeatureProfile.fit(name, values, kind=kind, bins=self.bins)
        return ReferenceProfile(self.features, self.bins, {**self.outputs, name: fitted})

    def report(self, frame: pd.DataFrame, features: Iterable[str], *, threshold: float,
               outputs: Mapping[str, Iterable] | None = None, new: Iterable[str] = ()) -> DriftReport:
        """Score ``features`` of ``frame`` and decide: drift when the mean PSI is above ``threshold``.

        Every other profiled feature present in ``frame``, and each of ``outputs`` (a model's outputs on
        ``frame``, by the name of an output profile), is scored as information only: not in the mean.
        A feature of ``features`` or ``new`` (the model's features) the reference does not profile is new: it is
        listed as having no reference, not scored; when no drift feature has a reference, the batch counts as
        drift (the features to watch changed: a model must learn them).
        """
        names = list(features)
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise ValueError(f"batch has no column(s) {absent}")
        no_reference = list(dict.fromkeys(c for c in [*names, *new] if c not in self.features))
        scored = [(c, self.features[c], frame[c].to_numpy()) for c in names if c in self.features]
        informative = [(c, p, frame[c].to_numpy()) for c, p in self.features.items()
                       if c not in names and c in frame.columns]
        informative += [(c, self.outputs[c], np.asarray(v, dtype=float) if self.outputs[c].kind == NUMERIC
                         else np.asarray(v).astype(str)) for c, v in (outputs or {}).items() if c in self.outputs]
        details, scores, info = {}, {}, {}
        for group, items in ((scores, scored), (info, informative)):
            for name, profile, values in items:
                labels, ref, cur = profile.bin_shares(values)
                group[name] = psi(ref, cur)
                details[name] = {"bins": labels, "reference": ref.round(6).tolist(),
                                 "current": cur.round(6).tolist()}
        mean = float(np.mean(list(scores.values()))) if scores else 0.0
        drift = mean > threshold or (bool(names) and not scores)
        return DriftReport(psi=scores, mean_psi=mean, threshold=float(threshold), drift=drift,
                           n_reference=int(next(iter(self.features.values())).n), n_current=len(frame),
                           details=details, info=info, no_reference=no_reference)

    def to_dict(self) -> dict:
        return {"bins": self.bins, "features": {k: v.to_dict() for k, v in self.features.items()},
                "outputs": {k: v.to_dict() for k, v in self.outputs.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> ReferenceProfile:
        return cls({k: FeatureProfile.from_dict(v) for k, v in data["features"].items()}, int(data.get("bins", 10)),
                   {k: FeatureProfile.from_dict(v) for k, v in data.get("outputs", {}).items()})

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class DriftReport:
    """Per-feature PSI, their mean, the threshold and the verdict; ``info``: PSI shown, not decided on."""

    psi: dict[str, float]
    mean_psi: float
    threshold: float
    drift: bool
    n_reference: int = 0
    n_current: int = 0
    details: dict = field(default_factory=dict, repr=False)
    info: dict[str, float] = field(default_factory=dict)
    no_reference: list[str] = field(default_factory=list)  # features new to the reference: not scored
    new_classes: list = field(default_factory=list)  # labels Production was not trained on: drift whatever the PSI

    def summary(self) -> dict:
        """The verdict as ``mlops drift --json`` prints it (and ``no_reference`` when a feature is new)."""
        return {"psi": {k: round(v, 6) for k, v in self.psi.items()}, "mean_psi": round(self.mean_psi, 6),
                "threshold": self.threshold, "drift": self.drift,
                **({"no_reference": list(self.no_reference)} if self.no_reference else {}),
                **({"new_classes": list(self.new_classes)} if self.new_classes else {})}

    def with_new_classes(self, classes: list) -> DriftReport:
        """The report with labels the reference model was not trained on: drift (a new class is learned)."""
        return replace(self, new_classes=list(classes), drift=True) if classes else self

    def information(self) -> dict:
        """PSI of the features the trigger does not watch and of the model's outputs: shown, not decided on."""
        return {"psi": {k: round(v, 6) for k, v in self.info.items()},
                "note": "information only: the trigger is the mean PSI of the drift features"}

    def to_dict(self) -> dict:
        return {**self.summary(), "info": self.information(), "n_reference": self.n_reference,
                "n_current": self.n_current, "details": self.details}

    def save(self, folder: Path, *, stem: str = "drift_report", picture: bool = True) -> dict[str, Path]:
        """Write ``drift_report.json``, ``drift_flag.txt`` and (with ``picture``) ``drift_report.svg`` into
        ``folder``; returns the paths written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{stem}.json", "flag": folder / "drift_flag.txt", "svg": folder / f"{stem}.svg"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
        paths["flag"].write_text(f"drift={str(self.drift).lower()}\nmean_psi={self.mean_psi:.6f}\n"
                                 f"threshold={self.threshold}\n")
        if not picture:
            del paths["svg"]
            return paths
        self.plot(paths["svg"])
        return paths

    def plot(self, path: Path) -> Path:
        """Draw reference vs current shares per bin as an SVG picture (the MLflow UI shows it): small
        multiples, worst PSI first, the trigger features' titles in bold.

        Written as text, not through a plotting library: a few milliseconds, where drawing a PNG with
        matplotlib took about a second of CPU on every run (two thirds of a run that finds no drift)."""
        scores = {**self.info, **self.psi}
        names = sorted(self.details, key=lambda n: -scores.get(n, 0.0)) or ["(none)"]
        cols = 1 if len(names) <= 2 else 2
        rows = -(-len(names) // cols)
        title = (f"mean PSI of the trigger features {self.mean_psi:.3f} (threshold {self.threshold}): "
                 f"{'drift' if self.drift else 'no drift'}")
        width, height = _PANEL_W * cols, _TOP + _PANEL_H * rows
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="11">',
               f'<rect width="{width}" height="{height}" fill="white"/>',
               f'<text x="{width / 2:g}" y="22" text-anchor="middle" font-size="14">{_esc(title)}</text>']
        for i, name in enumerate(names):
            d = self.details.get(name)
            if d:
                role = "trigger" if name in self.psi else "information"
                out += _panel(_PANEL_W * (i % cols), _TOP + _PANEL_H * (i // cols), name, d,
                              f"{name}: PSI {scores[name]:.3f} ({role})", bold=role == "trigger")
        out.append("</svg>\n")
        Path(path).write_text("\n".join(out), encoding="utf-8")
        return Path(path)


_PANEL_W, _PANEL_H, _TOP = 520, 250, 36  # pixels: one feature's panel, the picture's title band
_COLOURS = {"reference": "#1f77b4", "current": "#ff7f0e"}


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _panel(x0: float, y0: float, name: str, d: dict, title: str, *, bold: bool) -> list[str]:
    """One feature's bars (reference and current share of rows per bin) in the box at ``(x0, y0)``."""
    left, right, top, bottom = x0 + 56, x0 + _PANEL_W - 16, y0 + 30, y0 + _PANEL_H - 70
    bins, ref, cur = d["bins"], d["reference"], d["current"]
    peak = max([*ref, *cur, 1e-9])
    step = (right - left) / max(len(bins), 1)
    bar = step * 0.4

    def y(v: float) -> float:
        return bottom - (bottom - top) * v / peak

    weight = ' font-weight="bold"' if bold else ""
    out = [f'<text x="{(left + right) / 2:g}" y="{y0 + 18:g}" text-anchor="middle" font-size="12"{weight}>'
           f'{_esc(title)}</text>',
           f'<line x1="{left:g}" y1="{bottom:g}" x2="{right:g}" y2="{bottom:g}" stroke="black"/>',
           f'<line x1="{left:g}" y1="{top:g}" x2="{left:g}" y2="{bottom:g}" stroke="black"/>',
           f'<text x="{x0 + 14:g}" y="{(top + bottom) / 2:g}" text-anchor="middle" '
           f'transform="rotate(-90 {x0 + 14:g} {(top + bottom) / 2:g})">share of rows</text>']
    for tick in (0.0, peak / 2, peak):
        out.append(f'<text x="{left - 4:g}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="9">{tick:.2f}</text>')
    for i, label in enumerate(bins):
        centre = left + step * (i + 0.5)
        for series, values, shift in (("reference", ref, -bar), ("current", cur, 0.0)):
            top_y = y(values[i])
            out.append(f'<rect x="{centre + shift:.1f}" y="{top_y:.1f}" width="{bar:.1f}" '
                       f'height="{bottom - top_y:.1f}" fill="{_COLOURS[series]}"><title>{_esc(series)} '
                       f'{_esc(label)}: {values[i]:.3f}</title></rect>')
        out.append(f'<text x="{centre:.1f}" y="{bottom + 10:g}" text-anchor="end" font-size="8" '
                   f'transform="rotate(-45 {centre:.1f} {bottom + 10:g})">{_esc(str(label)[:24])}</text>')
    for j, series in enumerate(_COLOURS):
        ly = top + 4 + 14 * j
        out += [f'<rect x="{right - 78:g}" y="{ly:g}" width="10" height="10" fill="{_COLOURS[series]}"/>',
                f'<text x="{right - 64:g}" y="{ly + 9:g}" font-size="9">{series}</text>']
    return out
