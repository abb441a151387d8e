"""mlops_core: the event-driven retraining loop as a library.

Nothing happens on import; build :class:`Settings` and pass it down::

    from mlops_core import Settings, make_datasets, run
    settings = Settings.from_env(home="/tmp/demo")
    make_datasets(settings)
    print(run(settings).status)
"""

from .config import Settings
from .data import load_titanic, make_datasets, read_csv, validate_frame
from .drift import DriftReport, FeatureProfile, ReferenceProfile, psi
from .errors import BusyError, DataValidationError, MlopsError, RegistryError, TrainingError
from .pipeline import RunResult, check_drift, run

__all__ = [
    "Settings", "load_titanic", "make_datasets", "read_csv", "validate_frame", "DriftReport", "FeatureProfile",
    "ReferenceProfile", "psi", "BusyError", "DataValidationError", "MlopsError", "RegistryError",
    "TrainingError", "RunResult", "check_drift", "run",
]

__version__ = "0.1.0"
