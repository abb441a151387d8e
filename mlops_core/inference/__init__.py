"""Inference of a registered version: how it answers rows, fast and exactly as its pipeline.

Shared by the chain (which compiles and verifies a version when it registers it) and the server (which
loads what the chain stored and serves it):

- :mod:`.predictors`: the two predictors (the pipeline itself; compiled preprocessing + a kernel) and
  :class:`~.predictors.ServedModel`, a version with the predictor chosen for it at load;
- :mod:`.compile`: the compiler of a pipeline's preprocessing, its verification against the pipeline, and
  :func:`~.compile.build_predictor`, which picks the predictor;
- :mod:`.kernels`: the final estimator's kernels (a hand kernel, its own methods, its ONNX graph run by ONNX
  Runtime) and :func:`~.kernels.choose_kernel`, which keeps the fastest that verifies (ONNX Runtime, ~40 MB more in
  every worker, only when it is much faster than the best kernel without it), at registration and load;
- :mod:`.libraries`: every use of a library's private API (PyCaret's wrappers, scikit-learn's fitted estimators
  and trees, LightGBM's C calls, which also run scikit-learn's tree ensembles), behind a check of the versions it
  was written for.

Labels are the data's own (strings, booleans, integers), two classes or more: a kernel answers the estimator's
classes (codes when PyCaret label-encodes the target) and the compiled predictor decodes them to the pipeline's.
"""
