"""Hand kernels of regressors (scikit-learn 1.4, LightGBM 4): each answers ``x -> (predictions, None)`` as the
estimator's ``predict`` does, verified against the pipeline before it serves."""

from __future__ import annotations

import numpy as np

from .neighbours import Neighbours
from .predictors import generic_kernel
from .tree_engine import (
    SINGLE_ROWS,
    _float32,
    _leaf_rows,
    _LeafTable,
    _LightGBMSingleRow,
    _predict_params,
    _Trees,
)
from .versions import untested

__all__ = ["_regression"]


def _regression(estimator):
    """A regressor's hand kernel, ``x -> (predictions, None)`` (scikit-learn 1.4, LightGBM 4): linear models
    (``x @ coef_ + intercept_``, their ``_decision_function``), a decision tree's leaf value, a forest's leaf values
    added in order and averaged, gradient boosting's stages, LightGBM's booster, k nearest neighbours' mean and the
    constant of a DummyRegressor; None for the others (served by their own ``predict``)."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import (
        ARDRegression,
        BayesianRidge,
        ElasticNet,
        HuberRegressor,
        Lars,
        Lasso,
        LassoLars,
        LinearRegression,
        OrthogonalMatchingPursuit,
        PassiveAggressiveRegressor,
        Ridge,
    )
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.tree import DecisionTreeRegressor, ExtraTreeRegressor

    kind = type(estimator)
    if kind in (LinearRegression, Ridge, Lasso, ElasticNet, Lars, LassoLars, OrthogonalMatchingPursuit, BayesianRidge,
                ARDRegression, HuberRegressor, PassiveAggressiveRegressor) and np.ndim(estimator.coef_) == 1:
        return _linear_regression(estimator)
    if kind is DecisionTreeRegressor and estimator.n_outputs_ == 1:
        tree = estimator.tree_

        def decision_tree_regression(x):  # predict: tree_.predict's only column
            return tree.predict(_float32(x))[:, 0], None
        return decision_tree_regression
    if kind in (RandomForestRegressor, ExtraTreesRegressor) and estimator.n_outputs_ == 1 and all(
            type(e) in (DecisionTreeRegressor, ExtraTreeRegressor) for e in estimator.estimators_):
        return None if untested("lightgbm") else _forest_regression(estimator)
    if kind is GradientBoostingRegressor and not untested("lightgbm"):
        return _gradient_boosting_regression(estimator)
    if type(estimator).__name__ == "LGBMRegressor" and not callable(estimator.objective) and not untested("lightgbm"):
        return _lightgbm_regression(estimator)
    if kind is KNeighborsRegressor and estimator.weights == "uniform" and estimator.effective_metric_ == "euclidean" \
            and np.ndim(estimator._y) == 1 and isinstance(estimator._fit_X, np.ndarray) \
            and estimator.n_neighbors < len(estimator._fit_X):
        return _knn_regression(estimator)
    if kind is DummyRegressor and estimator.n_outputs_ == 1:
        value = float(np.ravel(estimator.constant_)[0])

        def constant(x):  # predict: the constant learnt (X not read)
            return np.full(len(x), value), None
        return constant
    return None


def _linear_regression(estimator):
    """LinearModel._decision_function (and SGD's, for PassiveAggressiveRegressor): ``x @ coef_ + intercept_``."""
    coef, intercept = np.asarray(estimator.coef_, dtype=np.float64), estimator.intercept_
    intercept = float(np.ravel(intercept)[0]) if np.ndim(intercept) else float(intercept)

    def linear(x):
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        return x @ coef + intercept, None
    return linear


def _forest_regression(estimator):
    """RandomForestRegressor and ExtraTreesRegressor: every tree's leaf value added in order, then / n_estimators
    (scikit-learn adds them from its threads in the order they finish: within the relative tolerance)."""
    count = len(estimator.estimators_)
    table = _LeafTable([_leaf_rows(e.tree_) for e in estimator.estimators_], estimator.n_features_in_)

    def forest_regression(x):
        y = table(x)[:, 0]
        y /= count
        return y, None
    forest_regression.trees = table
    return forest_regression


def _gradient_boosting_regression(estimator):
    """GradientBoostingRegressor with a DummyRegressor (or no) initial estimator: its constant, then each stage's
    tree with its leaves holding ``learning_rate * value``, summed in stage order by LightGBM."""
    from sklearn.dummy import DummyRegressor

    init = estimator.init_
    if not (init == "zero" or type(init) is DummyRegressor) or estimator.estimators_.shape[1] != 1:
        return None
    start = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_), dtype=np.float32))[0]
    rate = estimator.learning_rate
    rounds = [[("", [float(start[0])])]]
    for stage in estimator.estimators_:
        structure, values = _leaf_rows(stage[0].tree_)
        rounds.append([(structure, (rate * values[:, 0]).tolist())])
    trees = _Trees(rounds, estimator.n_features_in_, leaves=False)

    def gradient_boosting_regression(x):
        return trees.sums(x)[:, 0], None
    gradient_boosting_regression.trees = trees
    return gradient_boosting_regression


def _lightgbm_regression(estimator):
    """LGBMRegressor.predict without its per-call cost: the booster's prediction (its objective's output) through
    a predictor built once, and batches up to :data:`SINGLE_ROWS` rows through LightGBM's single-row fast API."""
    from lightgbm.basic import _InnerPredictor, _param_dict_to_str

    params = _predict_params(estimator)
    booster = estimator.booster_
    if booster.num_model_per_iteration() != 1:
        return None
    predictor = _InnerPredictor.from_booster(booster, params)
    iterations = booster.best_iteration
    single = _LightGBMSingleRow(booster, iterations, _param_dict_to_str(params), 1)

    def lightgbm_regression(x, booster=booster):
        if len(x) <= SINGLE_ROWS and x.dtype == np.float64:
            x = np.ascontiguousarray(x)
            return single.many(x)[:, 0], None
        return predictor.predict(x, num_iteration=iterations).reshape(len(x)), None
    lightgbm_regression.single_rows = SINGLE_ROWS
    return lightgbm_regression


def _knn_regression(estimator):
    """KNeighborsRegressor with uniform weights and the euclidean metric: the mean target of the k training rows
    nearest each row; a row whose k-th and next nearest rows are as far and hold different targets is answered by
    the estimator itself (which of them count is the library's choice; see :func:`_knn`)."""
    neighbours = Neighbours(estimator)
    own = generic_kernel(estimator)

    def knn_regression(x):
        x = neighbours.rows(x)
        out = np.empty(len(x))
        for r in range(len(x)):
            nearest = neighbours.nearest(x[r])
            if nearest is None:
                out[r] = own(x[r:r + 1])[0][0]
                continue
            out[r] = np.mean(neighbours.targets[nearest][np.newaxis, :], axis=1)[0]  # predict's mean, in y's dtype
        return out, None
    return knn_regression
