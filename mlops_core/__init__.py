"""mlops_core: the event-driven retraining loop as a library.

Nothing happens on import; build :class:`Settings` and pass it down::

    from mlops_core import Settings, run
    settings = Settings.from_env(home="/tmp/demo")   # data/train.csv and data/current.csv under it
    print(run(settings).status)

The demo data (the bundled Titanic table, ``make_datasets``) lives in :mod:`mlops_core.data`.
"""

from .config import Settings
from .data import read_csv, validate_frame
from .drift import DriftReport, FeatureProfile, ReferenceProfile, psi
from .errors import BusyError, DataValidationError, MlopsError, RegistryError, SettingsError, TrainingError
from .evidence import Comparison, compare
from .pipeline import RunResult, check_drift, pipeline_lock, run
from .registry import Registry

__all__ = [
    "Settings", "read_csv", "validate_frame", "DriftReport", "FeatureProfile", "ReferenceProfile", "psi",
    "BusyError", "DataValidationError", "MlopsError", "RegistryError", "SettingsError", "TrainingError",
    "Comparison", "compare", "RunResult", "check_drift", "pipeline_lock", "run", "Registry",
]

__version__ = "0.1.0"
