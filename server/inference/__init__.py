"""Serving's side of inference (the predictors themselves are :mod:`mlops_core.inference`'s):

- :mod:`.batching`: micro-batching of one worker's concurrent requests;
- :mod:`.serving`: :class:`~.serving.Serving`, the one object the app calls.
"""

from .serving import Serving

__all__ = ["Serving"]
