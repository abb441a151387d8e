"""The chain's stages, one module each; :mod:`mlops_core.pipeline` only chains them.

Each stage takes the run's :class:`~.context.Run` (batch, digest, kinds, holdout, candidate, evidence …) and
returns it with what it made; nothing is written to disk to be read back within one run:

- :mod:`.intake`     read the batch once, check the settings against it, validate, skip known content
- :mod:`.bootstrap`  an empty registry: train on ``train.csv``, register version 1, both aliases on it
- :mod:`.detect`     PSI of the drift features against Production's reference: drift, no drift or refused
- :mod:`.train`      the candidate on the batch's training rows (the holdout kept out)
- :mod:`.register`   log the candidate to MLflow (pipeline, reference, compiled form) and create a version
- :mod:`.decide`     the paired test on unseen holdout rows; promote, stage or archive; record the decision

:mod:`.scoring` holds what several stages use to score a model; :mod:`.handoff` stores a run between the
separate tasks of the Airflow DAG (and only there).
"""
