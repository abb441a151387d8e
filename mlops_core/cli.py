"""The ``mlops`` command: make-data, drift, run, status, promote, sync, rollback, ab-report, ab-promote, ab-decide."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import click

from .config import Settings
from .errors import MlopsError, SettingsError
from .runtime import prepare_process

__all__ = ["main"]

_STDOUT = "mlops.stdout"


def _emit(obj: dict, as_json: bool, text: str) -> None:
    out = click.get_current_context().meta.get(_STDOUT)
    click.echo(json.dumps(obj, default=str) if as_json else text, file=out)


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Map the loop's own failures to exit 1 with the reason on stderr."""

    def invoke(self, ctx):
        # stdout carries our answer only: MLflow writes "View run ..." lines there, so they go to stderr
        ctx.meta[_STDOUT] = sys.stdout
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return super().invoke(ctx)
        except SettingsError as err:  # settings that do not fit the data: bad usage
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (MlopsError, ValueError, OSError) as err:
            _fail(err)


@click.group(cls=_Group)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="MLOPS_HOME",
              help="Project home (default: MLOPS_HOME or the working directory).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking/registry URI.")
@click.option("-v", "--verbose", is_flag=True, help="Log each step of the chain to stderr.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, tracking_uri: str | None, verbose: bool) -> None:
    """Event-driven retraining loop: drift check, AutoML, MLflow registry, promotion."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        ctx.obj = Settings.from_env(home=home, tracking_uri=tracking_uri)
    except ValueError as err:  # a bad MLOPS_* value or flag is bad usage: exit 2
        raise click.UsageError(str(err)) from err
    prepare_process(ctx.obj)


def _registry(settings: Settings):
    from .registry import Registry

    return Registry(settings)


@main.command("make-data")
@click.option("--drift", "strength", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Drift strength injected into the batch's drift features (0: none).")
@click.option("--concept", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the first drift feature's range (its top values) where the label rule is inverted.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which rows form the batch, and their order.")
@click.option("--batch-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--resample", is_flag=True, help="Draw the batch's rows with replacement (rows repeat, as in exports).")
@click.option("--no-train", is_flag=True, help="Write current.csv only.")
@click.option("--table", type=click.Choice(["titanic", "diabetes"]), default=None,
              help="The bundled table (default: titanic; diabetes with MLOPS_TASK=regression).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def make_data(settings: Settings, strength: float, concept: float, seed: int, batch_fraction: float, resample: bool,
              no_train: bool, table: str | None, as_json: bool) -> None:
    """Write data/train.csv and data/current.csv from a bundled table (Titanic; diabetes for a regression)."""
    from .data import make_datasets

    try:
        train, current = make_datasets(settings, drift=strength, concept=concept, seed=seed, table=table or "",
                                       batch_fraction=batch_fraction, resample=resample, write_train=not no_train)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    obj = {"train": str(train) if train else None, "current": str(current), "drift": strength, "concept": concept,
           "seed": seed}
    _emit(obj, as_json, f"wrote {current}" + (f" and {train}" if train else ""))


@main.command()
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Reference CSV (default: Production's reference, else data/train.csv).")
@click.option("--current", type=click.Path(dir_okay=False, path_type=Path),
              help="Batch CSV (default: data/current.csv).")
@click.option("--features", help="Comma-separated columns to score (default: the drift features).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def drift(settings: Settings, reference: Path | None, current: Path | None, features: str | None,
          as_json: bool) -> None:
    """Score a batch's PSI against the reference and save the drift report."""
    from .pipeline import check_drift

    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    report = check_drift(settings, current=current, reference=reference, features=names)
    lines = [f"{k:>12}  PSI {v:.4f}" for k, v in report.psi.items()]
    lines.append(f"{'mean':>12}  PSI {report.mean_psi:.4f} (threshold {report.threshold}): "
                 f"{'DRIFT' if report.drift else 'no drift'}")
    if report.no_reference:
        lines.append(f"{'no reference':>12}  {', '.join(report.no_reference)} (new: not scored)")
    if report.info:
        lines.append("information only (not in the trigger):")
        lines += [f"{k:>12}  PSI {v:.4f}" for k, v in sorted(report.info.items(), key=lambda kv: -kv[1])]
    _emit({**report.summary(), "info": report.information()}, as_json, "\n".join(lines))


@main.command("run")
@click.option("--force", is_flag=True, help="Process the batch even if its content was processed before.")
@click.option("--current", type=click.Path(dir_okay=False, path_type=Path),
              help="Batch CSV (default: data/current.csv).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=None,
              help="A progress bar on stderr (default: on a terminal, without --json).")
@click.pass_obj
def run_cmd(settings: Settings, force: bool, current: Path | None, as_json: bool, progress: bool | None) -> None:
    """Run the chain once on the current batch."""
    from .pipeline import run
    from .progress import Bar, Progress

    if progress is None:
        progress = sys.stderr.isatty() and not as_json
    bar = Bar(sys.stderr) if progress else Progress()
    try:
        result = run(settings, force=force, current=current, progress=bar)
    finally:
        bar.close()
    obj = result.to_dict()
    text = (f"{result.status}: {result.reason}\nproduction={result.production} staging={result.staging}"
            + (f" (bootstrapped version {result.bootstrapped})" if result.bootstrapped else ""))
    _emit(obj, as_json, text)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Show which versions hold the production and staging aliases."""
    obj = _registry(settings).status()

    def line(alias):
        d = obj[alias]
        return f"{alias:>10}: " + (f"version {d['version']} (run {d['run_id']})" if d else "none")

    _emit(obj, as_json, f"model {obj['model']}\n{line('production')}\n{line('staging')}")


@main.command()
@click.argument("version")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def promote(settings: Settings, version: str, as_json: bool) -> None:
    """Make VERSION Production (the old one is archived, Staging synced)."""
    from .pipeline import pipeline_lock

    with pipeline_lock(settings):
        obj = _registry(settings).promote(version)
    _emit(obj, as_json, f"production={obj['production']} staging={obj['staging']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync(settings: Settings, as_json: bool) -> None:
    """Point Staging at the Production version."""
    from .pipeline import pipeline_lock

    with pipeline_lock(settings):
        obj = _registry(settings).sync()
    _emit(obj, as_json, f"production={obj['production']} staging={obj['staging']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback(settings: Settings, as_json: bool) -> None:
    """Restore the previous Production version."""
    from .pipeline import pipeline_lock

    with pipeline_lock(settings):
        obj = _registry(settings).rollback()
    _emit(obj, as_json, f"production={obj['production']} staging={obj['staging']} archived={obj['archived']}")


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Prediction server port (127.0.0.1).")
@click.option("--ui-port", type=int, default=5000, show_default=True, help="MLflow UI port (127.0.0.1).")
@click.option("--no-ui", is_flag=True, help="Do not start the MLflow UI.")
@click.pass_obj
def up(settings: Settings, port: int, ui_port: int, no_ui: bool) -> None:
    """Bootstrap, then run the watcher, the server and the MLflow UI in the foreground."""
    from .stack import up as run_stack

    sys.exit(run_stack(settings, port=port, ui_port=ui_port, ui=not no_ui))


def _ab_text(report: dict) -> str:
    regression = any(g.get("task") == "regression" for g in report["groups"])
    score, key = ("MAE", "mae") if regression else ("accuracy", "accuracy")
    lines = [f"{'arm':<10} {'version':>7} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'labelled':>8} {score:>8}  95% interval" + ("  RMSE  95% interval" if regression else "")]
    for g in report["groups"]:
        acc = f"{g[key]:.4f}" if g.get(key) is not None else "-"
        ci = "[{:.4f}, {:.4f}]".format(*g[f"{key}_ci95"]) if g.get(f"{key}_ci95") else "-"
        if regression:
            rmse = f"{g['rmse']:.4f}" if g.get("rmse") is not None else "-"
            ci += f"  {rmse}  " + ("[{:.4f}, {:.4f}]".format(*g["rmse_ci95"]) if g.get("rmse_ci95") else "-")
        lat = g["latency_ms"]
        p50, p99 = (f"{lat[k]:.1f}" if lat[k] is not None else "-" for k in ("p50", "p99"))
        lines.append(f"{g['arm']:<10} {g['version'] or '-':>7} {g['requests']:>8} {g['errors']:>6} {p50:>7} "
                     f"{p99:>7} {g['labelled']:>8} {acc:>8}  {ci}")
    c = report["comparison"]
    if c["difference"] is not None:
        lines.append(f"since staging v{c['staging_version']} first served: {c['staging_requests']} and "
                     f"{c['production_requests']} labelled requests (staging, production)")
        lines.append(f"difference staging - production per request: {c['difference']:+.4f}, "
                     f"{1 - c['alpha']:.0%} confidence sequence [{c['cs_low']:+.4f}, {c['cs_high']:+.4f}], "
                     f"always-valid p={c['p_value']:.3g}")
        if c["fixed_horizon"]:
            test = "Welch t-test" if c.get("metric") == "mae" else "z-test"
            lines.append(f"(fixed-horizon {test} p={c['fixed_horizon']['p_value']:.3g}: valid at one pre-planned "
                         f"look only)")
    still = c["samples_still_needed"]
    if c["samples_needed_per_arm"] is not None:
        lines.append(f"labelled requests per arm to detect {c['min_effect']}: {c['samples_needed_per_arm']} "
                     f"(still needed: production {still['production']}, staging {still['staging']})")
    lines.append(f"verdict: {c['verdict']}: {c['reason']}")
    lines.append(f"decision allowed now: {'yes, ' + c['action'] if c['decision_allowed'] else 'no'}")
    return "\n".join(lines)


@main.command("ab-report")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ab_report(settings: Settings, as_json: bool) -> None:
    """Live A/B: per arm and version traffic, latency, labelled accuracy, and the arms compared."""
    from . import ab
    from .predictions import PredictionStore

    try:
        aliases = _registry(settings).aliases()
    except MlopsError as err:  # the report stands without the registry: compare the latest versions seen
        click.echo(f"warning: {err}; comparing the latest versions seen", err=True)
        aliases = {}
    report = ab.report(PredictionStore(settings), production=aliases.get("production"),
                       staging=aliases.get("staging"))
    _emit(report, as_json, _ab_text(report))


@main.command("ab-promote")
@click.option("--dry-run", is_flag=True, help="Show the decision without promoting.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ab_promote(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Promote Staging if the live sequential test shows it better than Production (higher accuracy; a regression:
    lower MAE), whatever the setting."""
    from .live import decide_live

    obj = decide_live(settings, promote=True, retire=False, dry_run=dry_run)
    _emit(obj, as_json, f"{obj['status']}: {obj['reason']}\nproduction={obj.get('production')} "
                        f"staging={obj.get('staging')}")


@main.command("ab-decide")
@click.option("--dry-run", is_flag=True, help="Show the decision without acting.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ab_decide(settings: Settings, dry_run: bool, as_json: bool) -> None:
    """Act on the live sequential test as the watcher does: promote (MLOPS_AB_PROMOTE), retire (MLOPS_AB_RETIRE)."""
    from .live import decide_live

    obj = decide_live(settings, dry_run=dry_run)
    _emit(obj, as_json, f"{obj['status']}: {obj['reason']}\nproduction={obj.get('production')} "
                        f"staging={obj.get('staging')}")


if __name__ == "__main__":  # pragma: no cover
    main()
