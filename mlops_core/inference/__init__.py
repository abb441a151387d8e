"""Inference of a registered version: how it answers rows, fast and exactly as its pipeline.

Shared by the chain (which compiles and verifies a version when it registers it) and the server (which
loads what the chain stored and serves it):

- :mod:`.predictors`: the two predictors (the pipeline itself; compiled preprocessing + a kernel) and
  :class:`~.predictors.ServedModel`, a version with the predictor chosen for it at load;
- :mod:`.compile`: the compiler of a pipeline's preprocessing, its verification against the pipeline, and
  :func:`~.compile.build_predictor`, which picks the predictor;
- :mod:`.kernels`: the final estimator's kernels (its ONNX graph run by ONNX Runtime, a hand kernel, its own
  methods) and :func:`~.kernels.choose_kernel`, which keeps the fastest that verifies, at registration and load;
- :mod:`.libraries`: every use of a library's private API (PyCaret's wrappers, scikit-learn's trees,
  LightGBM's C calls), behind a check of the versions it was written for.
"""
