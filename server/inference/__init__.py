"""Inference: how a loaded version answers rows, fast and exactly as its pipeline.

- :mod:`.predictors`: the two predictors (the pipeline itself; compiled preprocessing + a kernel) and
  :class:`~.predictors.ServedModel`, a version with the predictor chosen for it at load;
- :mod:`.compile`: the compiler of a pipeline's preprocessing, its verification against the pipeline, and
  :func:`~.compile.build_predictor`, which picks the predictor;
- :mod:`.libraries`: every use of a library's private API (PyCaret's wrappers, scikit-learn's trees,
  LightGBM's C calls), behind a check of the versions it was written for;
- :mod:`.batching`: micro-batching of one worker's concurrent requests;
- :mod:`.serving`: :class:`~.serving.Serving`, the one object the app calls.
"""

from .serving import Serving

__all__ = ["Serving"]
