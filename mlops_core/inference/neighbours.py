"""The k nearest training rows of a fitted k-nearest-neighbours estimator (uniform weights, euclidean metric), as
its hand kernels find them (:func:`.libraries._knn`, :func:`.regression_kernels._knn_regression`; private API:
``_fit_X`` and ``_y``, scikit-learn 1.4)."""

from __future__ import annotations

import numpy as np

__all__ = ["Neighbours"]


class Neighbours:
    """Distances by one matrix-vector product a row, not as scikit-learn computes them (a tree, or blocks of dot
    products): a row whose k-th and next nearest training rows are as far (within the rounding of either way)
    and hold different targets, where which of them counts is the library's choice, has no answer here
    (:meth:`nearest` gives None) and is answered by the estimator itself."""

    def __init__(self, estimator):
        self.fit_x = np.asarray(estimator._fit_X, dtype=np.float64)
        self.targets = np.asarray(estimator._y)  # class codes, or a regression's values in their own dtype
        self.k = estimator.n_neighbors
        self.norms = np.einsum("ij,ij->i", self.fit_x, self.fit_x)
        self.largest = float(self.norms.max()) + 1e-12

    @staticmethod
    def rows(x) -> np.ndarray:
        """The request's features as float64, refusing what the estimator's input check refuses."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        return x

    def nearest(self, row: np.ndarray) -> np.ndarray | None:
        """The indices of the k training rows nearest ``row``, nearest first (ties in training order, as
        ``kneighbors`` answers); None when the k-th is tied with a row outside them that holds another target."""
        d = self.norms - 2.0 * (self.fit_x @ row)  # squared distances less |row|^2 (the same for every training row)
        nearest = np.argpartition(d, self.k - 1)[:self.k]
        kth = d[nearest].max()
        # rows as far as the k-th, within the rounding of either way of computing distances
        edge = np.abs(d - kth) <= 1e-9 * (float(row @ row) + self.largest)
        if np.count_nonzero(edge) > np.count_nonzero(edge[nearest]) and np.unique(self.targets[edge]).size > 1:
            return None
        return nearest[np.argsort(d[nearest], kind="stable")]
