"""One bootstrapped home shared by the test_reliability_* modules (built once per session, never changed)."""

from __future__ import annotations

from conftest import FAST

from mlops_core.config import Settings

_HOMES: dict[str, Settings] = {}


def shared_bootstrap(tmp_path_factory) -> Settings:
    """A home whose registry holds Production v1, like conftest's ``bootstrapped`` but built once per session."""
    if "home" not in _HOMES:
        from mlops_core.data import make_datasets
        from mlops_core.pipeline import run

        settings = Settings(home=tmp_path_factory.mktemp("reliability-boot"), **FAST)
        make_datasets(settings)
        result = run(settings)
        assert result.bootstrapped == "1" and result.status == "no_drift"
        _HOMES["home"] = settings
    return _HOMES["home"]
