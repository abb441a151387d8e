"""Every use of a library's private API in serving, in one place, behind a version check.

The compiled path reads fitted objects the libraries do not document as API: PyCaret's ``TransformerWrapper``
columns and ``CleanColumnNames``, scikit-learn's tree arrays (decision trees, random and extra-trees forests,
SAMME.R AdaBoost), its fitted attributes and inner functions (logistic regression and LDA, QDA, Gaussian naive
Bayes, the training rows of k nearest neighbours, gradient boosting's stages, a multilayer perceptron's forward
pass, the prior DummyClassifier), LightGBM's inner predictor and its C single-row call, which also runs
scikit-learn's forests and boosted trees written as LightGBM models; for two classes or more. Each was checked
against the versions in :data:`TESTED`; with any other version installed, :func:`untested` names it and the
callers fall back cleanly (a step is not compiled, a hand kernel is not used: the pipeline, ONNX Runtime or
the estimator's own public ``predict_proba`` answers instead; with another LightGBM, scikit-learn's ensembles
get their tree-by-tree kernels). Verification against the pipeline still guards every version that is used.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import metadata

import numpy as np

from .predictors import generic_kernel, is_regressor

__all__ = ["TESTED", "untested", "pycaret_step", "pycaret_labels_only", "pycaret_renames", "hand_kernel",
           "SINGLE_ROWS"]

#: distribution -> the version prefix whose private API this module was written and verified against
TESTED = {"pycaret": "3.3.", "scikit-learn": "1.4.", "lightgbm": "4."}

SINGLE_ROWS = 16  # batches up to this size are predicted row by row through LightGBM's fast API


@cache
def untested(distribution: str) -> str | None:
    """None when the installed ``distribution`` is a version :data:`TESTED` names; else why not."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return f"{distribution} is not installed"
    if not version.startswith(TESTED[distribution]):
        return f"{distribution} {version} is not the tested {TESTED[distribution]}x"
    return None


def pycaret_step(step) -> tuple[list[str], object] | None:
    """``(columns, fitted transformer)`` of one of PyCaret's own pipeline steps, or None when ``step`` is not
    one (or PyCaret is not the tested version): the columns it transforms and what it wraps."""
    if untested("pycaret"):
        return None
    from pycaret.internal.preprocess.transformers import TransformerWrapper

    if type(step) is not TransformerWrapper or step._include is None or step._exclude:
        return None
    return list(step._include), step.transformer


def pycaret_labels_only(step) -> bool:
    """Whether ``step`` is PyCaret's encoder of the target (the ``label_encoding`` step setup adds when the labels
    are not ``0..k-1``: a ``TransformerWrapperWithInverse`` of a transformer reading ``y`` only), which passes
    the features through unchanged."""
    if untested("pycaret"):
        return False
    from inspect import signature

    from pycaret.internal.preprocess.transformers import TransformerWrapperWithInverse

    return type(step) is TransformerWrapperWithInverse and "X" not in signature(step.transformer.transform).parameters


def pycaret_renames(transformer) -> bool:
    """Whether ``transformer`` (what :func:`pycaret_step` found) is PyCaret's ``CleanColumnNames``, which
    only renames columns (setup adds it when a column name has a character outside ``[A-Za-z0-9_]``)."""
    from pycaret.internal.preprocess.transformers import CleanColumnNames

    return type(transformer) is CleanColumnNames


def hand_kernel(estimator):
    """A cheaper kernel doing what the estimator's own ``predict``/``predict_proba`` do (scikit-learn
    1.4, LightGBM 4), minus their per-call input validation, which costs more than the model on
    one row; None for other estimators, or when the library is not a tested version. Non-finite features,
    which that validation would reject, raise, so that the pipeline answers (or fails) as it would.
    """
    if untested("scikit-learn"):
        return None
    if is_regressor(estimator):
        return _regression(estimator)
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis, QuadraticDiscriminantAnalysis
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import AdaBoostClassifier, GradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    kind = type(estimator)
    if kind is DecisionTreeClassifier and estimator.n_outputs_ == 1:
        tree, n, classes = estimator.tree_, estimator.n_classes_, estimator.classes_

        def decision_tree(x):  # predict: classes_.take(argmax(tree_.predict)); predict_proba: its first n columns
            raw = tree.predict(_float32(x))
            return classes.take(np.argmax(raw, axis=1), axis=0), raw[:, :n]
        return decision_tree
    if isinstance(estimator, ForestClassifier) and estimator.n_outputs_ == 1 and all(
            type(e) in (DecisionTreeClassifier, ExtraTreeClassifier) for e in estimator.estimators_):
        trees = [(e.tree_, e.n_classes_) for e in estimator.estimators_]
        n, classes = estimator.n_classes_, estimator.classes_

        def forest(x):  # every tree's predict_proba added in order, then / n_estimators; predict: the argmax
            x32 = _float32(x)
            proba = np.zeros((x32.shape[0], n), dtype=np.float64)
            for tree, k in trees:
                proba += tree.predict(x32)[:, :k]
            proba /= len(trees)
            return classes.take(np.argmax(proba, axis=1), axis=0), proba
        return forest if untested("lightgbm") else _by_size(_forest_lightgbm(estimator), forest)
    if kind is DummyClassifier and estimator.strategy == "prior" and estimator.n_outputs_ == 1 and not (
            estimator.sparse_output_):
        label, prior = estimator.classes_[estimator.class_prior_.argmax()], estimator.class_prior_

        def prior_class(x):  # predict: the most likely class a priori; predict_proba: the priors (X not read)
            return np.tile([label], [len(x), 1]).ravel(), np.ones((len(x), 1)) * prior
        return prior_class
    if (kind is AdaBoostClassifier and estimator.algorithm == "SAMME.R" and estimator.n_classes_ >= 2
            and all(type(e) is DecisionTreeClassifier and e.n_outputs_ == 1 for e in estimator.estimators_)):
        return _adaboost(estimator) if untested("lightgbm") else _by_size(_adaboost_lightgbm(estimator),
                                                                          _adaboost(estimator))
    if kind is QuadraticDiscriminantAnalysis:
        return _qda(estimator)
    if kind is KNeighborsClassifier and estimator.weights == "uniform" and estimator.effective_metric_ == "euclidean" \
            and not estimator.outputs_2d_ and isinstance(estimator._fit_X, np.ndarray) \
            and estimator.n_neighbors < len(estimator._fit_X):
        return _knn(estimator)
    if kind in (LogisticRegression, LinearDiscriminantAnalysis) and np.ndim(estimator.coef_) == 2:
        return _linear(estimator)
    if kind is GaussianNB:
        return _naive_bayes(estimator)
    if kind is GradientBoostingClassifier:
        return _gradient_boosting(estimator) if untested("lightgbm") else _by_size(
            _gradient_boosting_lightgbm(estimator), _gradient_boosting(estimator))
    if kind is MLPClassifier and estimator._label_binarizer.y_type_ in ("binary", "multiclass"):
        return _mlp(estimator)
    if (type(estimator).__name__ == "LGBMClassifier" and estimator.n_classes_ >= 2
            and not callable(estimator.objective) and not untested("lightgbm")):
        return _lightgbm(estimator)
    return None


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
    fit_x, y = np.asarray(estimator._fit_X, dtype=np.float64), np.asarray(estimator._y)  # its mean in y's dtype
    k = estimator.n_neighbors
    norms = np.einsum("ij,ij->i", fit_x, fit_x)
    largest = float(norms.max()) + 1e-12
    own = generic_kernel(estimator)

    def knn_regression(x):
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        out = np.empty(len(x))
        for r in range(len(x)):
            row = x[r]
            d = norms - 2.0 * (fit_x @ row)
            nearest = np.argpartition(d, k - 1)[:k]
            kth = d[nearest].max()
            edge = np.abs(d - kth) <= 1e-9 * (float(row @ row) + largest)
            if np.count_nonzero(edge) > np.count_nonzero(edge[nearest]) and np.unique(y[edge]).size > 1:
                out[r] = own(x[r:r + 1])[0][0]
                continue
            ordered = nearest[np.argsort(d[nearest], kind="stable")]  # nearest first, as kneighbors answers
            out[r] = np.mean(y[ordered][np.newaxis, :], axis=1)[0]  # predict's mean, in y's dtype
        return out, None
    return knn_regression


def _by_size(few, many):
    """``few`` (scikit-learn's trees run by LightGBM, a row at a time) for requests of up to :data:`SINGLE_ROWS`
    rows, ``many`` (scikit-learn's own tree arrays, one call a tree for all the rows: cheaper on a large batch)
    above; both answer bit for bit as the estimator, and verification checks both sizes (``single_rows``)."""
    if few is None or many is None:
        return few or many

    def kernel(x):
        return few(x) if len(x) <= SINGLE_ROWS else many(x)
    kernel.__name__, kernel.single_rows, kernel.trees = few.__name__, SINGLE_ROWS, few.trees
    return kernel


def _adaboost(estimator):
    """SAMME.R AdaBoost over decision trees, two classes or more: AdaBoostClassifier's decision_function,
    predict and predict_proba in scikit-learn 1.4's order of operations, one ``tree_.predict`` a tree (its own
    predict_proba validates the input once for each of them, which is most of its cost)."""
    trees = [(e.tree_, e.n_classes_) for e in estimator.estimators_]
    classes, total, k = estimator.classes_, estimator.estimator_weights_.sum(), estimator.n_classes_
    eps = np.finfo(np.float64).eps

    def adaboost(x):
        x32 = _float32(x)
        proba = np.stack([tree.predict(x32)[:, :n] for tree, n in trees])  # each tree's predict_proba
        np.clip(proba, eps, None, out=proba)  # _samme_proba of each tree, all at once
        log_proba = np.log(proba)
        terms = (k - 1) * (log_proba - (1.0 / k) * log_proba.sum(axis=2)[:, :, np.newaxis])
        pred = np.add.reduce(terms, axis=0)  # their sum(), tree after tree (an outer axis: no pairwise sum)
        pred /= total
        if k == 2:
            pred[:, 0] *= -1
            decision = pred.sum(axis=1)
            labels = classes.take(decision > 0, axis=0)
            proba = np.vstack([-decision, decision]).T / 2  # _compute_proba_from_decision: softmax of that
        else:
            labels = classes.take(np.argmax(pred, axis=1), axis=0)  # predict: the argmax of the decision
            proba = pred / (k - 1)
        return labels, _softmax(proba)
    return adaboost


def _softmax(z: np.ndarray) -> np.ndarray:
    """scikit-learn 1.4's ``utils.extmath.softmax`` in place (``z`` is the caller's own array)."""
    z -= z.max(axis=1).reshape((-1, 1))
    np.exp(z, out=z)
    z /= z.sum(axis=1).reshape((-1, 1))
    return z


def _linear(estimator):
    """LogisticRegression and LinearDiscriminantAnalysis, two classes or more: LinearClassifierMixin's
    decision_function (``x @ coef_.T + intercept_``) and predict (two classes: decision > 0; more: its argmax),
    and predict_proba as each estimator makes it in scikit-learn 1.4: the expit of the decision (two classes:
    logistic regression one-vs-rest and LDA), the expit of each class's decision normalised over the classes
    (logistic regression one-vs-rest, more classes), or the softmax of the decisions (LDA with more classes;
    multinomial logistic regression, on ``[-decision, decision]`` with two)."""
    from scipy.special import expit

    coef, intercept, classes = estimator.coef_.T, estimator.intercept_, estimator.classes_
    one = coef.shape[1] == 1  # one decision column: two classes
    if type(estimator).__name__ == "LogisticRegression":
        ovr = estimator.multi_class in ("ovr", "warn") or (estimator.multi_class == "auto" and (
            classes.size <= 2 or estimator.solver in ("liblinear", "newton-cholesky")))
        mode = ("logistic" if one else "logistic_ovr") if ovr else "softmax"
    else:
        mode = "logistic" if classes.size == 2 else "softmax"

    def decide(x):
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        decision = x @ coef + intercept
        if one:
            decision = decision.reshape(-1)
            return decision, classes.take((decision > 0).astype(int), axis=0)
        return decision, classes.take(decision.argmax(axis=1), axis=0)

    def logistic(x):
        decision, labels = decide(x)
        prob = expit(decision)
        return labels, np.vstack([1 - prob, prob]).T

    def logistic_ovr(x):
        decision, labels = decide(x)
        prob = expit(decision)
        prob /= prob.sum(axis=1).reshape((prob.shape[0], -1))
        return labels, prob

    def softmax(x):
        decision, labels = decide(x)
        return labels, _softmax(np.c_[-decision, decision] if one else decision.copy())

    return {"logistic": logistic, "logistic_ovr": logistic_ovr, "softmax": softmax}[mode]


def _naive_bayes(estimator):
    """GaussianNB: its joint log likelihood (scikit-learn 1.4's ``_joint_log_likelihood``, every class at once: the
    same operations on each class's row, its constant part computed once), normalised by its logsumexp
    (predict_log_proba) and exponentiated (predict_proba); predict: the argmax of the joint log likelihood."""
    from scipy.special import logsumexp

    classes, theta, var = estimator.classes_, estimator.theta_, estimator.var_
    constant = np.array([-0.5 * np.sum(np.log(2.0 * np.pi * var[i, :])) for i in range(np.size(classes))])
    prior = np.log(estimator.class_prior_)

    def naive_bayes(x):
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        x = np.asarray(x, dtype=np.float64)
        spread = np.sum(((x[:, np.newaxis, :] - theta) ** 2) / var, axis=2)  # (rows, classes)
        jll = prior + (constant - 0.5 * spread)
        log_prob_x = logsumexp(jll, axis=1)
        return classes[np.argmax(jll, axis=1)], np.exp(jll - np.atleast_2d(log_prob_x).T)
    return naive_bayes


def _gradient_boosting(estimator):
    """GradientBoostingClassifier with the prior (or no) initial estimator: the initial raw prediction (the same
    for every row: the prior does not read the features), every stage's trees added by scikit-learn's own
    ``predict_stages`` on float32 features, then its loss's predict_proba; predict: raw >= 0 (two classes) or
    the argmax (more)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble._gradient_boosting import predict_stages

    init = estimator.init_
    if not (init == "zero" or (type(init) is DummyClassifier and init.strategy == "prior")) or not hasattr(
            estimator, "_loss"):
        return None
    start = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_), dtype=np.float32))
    stages, rate, loss, classes = estimator.estimators_, estimator.learning_rate, estimator._loss, estimator.classes_

    def gradient_boosting(x):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x32).all():
            raise ValueError("non-finite features")
        raw = np.repeat(start, len(x32), axis=0)
        predict_stages(stages, x32, rate, raw)
        if raw.shape[1] == 1:
            raw = raw.ravel()
            return classes[(raw >= 0).astype(int)], loss.predict_proba(raw)
        return classes[np.argmax(raw, axis=1)], loss.predict_proba(raw)
    return gradient_boosting


def _mlp(estimator):
    """MLPClassifier (one label a row): its forward pass once for both answers; predict_proba stacks
    ``(1 - p, p)`` for two classes; predict is its label binarizer's inverse of the output."""
    binarizer, single = estimator._label_binarizer, estimator.n_outputs_ == 1

    def mlp(x):
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        out = estimator._forward_pass_fast(x, check_input=False)
        if single:
            out = out.ravel()
        labels = binarizer.inverse_transform(out)
        return labels, (np.vstack([1 - out, out]).T if out.ndim == 1 else out)
    return mlp


def _qda(estimator):
    """QuadraticDiscriminantAnalysis's predict and predict_proba, in scikit-learn 1.4's order of operations, one
    row at a time. With near-singular covariances (one-hot columns summing to one, a constant column in a class)
    its answer on a row moves with the other rows of the call (by up to 0.6 on a probability): row by row, a
    request gets what the estimator answers on that row alone, whatever is batched with it (``row_wise``: it is
    verified against the pipeline's answers on each row alone)."""
    classes, means, log_priors = estimator.classes_, estimator.means_, np.log(estimator.priors_)
    weights = [rotation * (scaling ** (-0.5)) for rotation, scaling in zip(estimator.rotations_,
                                                                          estimator.scalings_, strict=True)]
    u = np.asarray([np.sum(np.log(scaling)) for scaling in estimator.scalings_])

    def qda(x):
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        values = np.empty((len(x), len(classes)))
        for r in range(len(x)):  # _decision_function on the row alone
            row = x[r:r + 1]
            norm2 = np.array([np.sum(np.dot(row - means[i], weights[i]) ** 2, axis=1) for i in range(len(classes))]).T
            values[r] = (-0.5 * (norm2 + u) + log_priors)[0]
        likelihood = np.exp(values - values.max(axis=1)[:, np.newaxis])  # predict_proba
        return classes.take(values.argmax(1)), likelihood / likelihood.sum(axis=1)[:, np.newaxis]
    qda.row_wise = True
    return qda


def _knn(estimator):
    """KNeighborsClassifier with uniform weights and the euclidean metric: the classes of the k training rows
    nearest each row, counted (predict_proba: the counts over k; predict: the first most frequent class, as
    scipy's mode gives). The distances are computed here, not as scikit-learn computes them (a tree, or blocks of
    dot products), so a row whose k-th and next nearest rows are as far (within the rounding of either
    computation) and of different classes, where the choice between them is the library's, is answered by the
    estimator's own methods."""
    fit_x, codes = np.asarray(estimator._fit_X, dtype=np.float64), np.asarray(estimator._y)
    classes, k = estimator.classes_, estimator.n_neighbors
    norms = np.einsum("ij,ij->i", fit_x, fit_x)
    largest = float(norms.max()) + 1e-12
    own = generic_kernel(estimator)

    def knn(x):
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        proba = np.empty((len(x), len(classes)))
        for r in range(len(x)):
            row = x[r]
            d = norms - 2.0 * (fit_x @ row)  # squared distances less |row|^2 (the same for every training row)
            nearest = np.argpartition(d, k - 1)[:k]
            kth = d[nearest].max()
            # rows as far as the k-th, within the rounding of either way of computing distances
            edge = np.abs(d - kth) <= 1e-9 * (float(row @ row) + largest)
            if np.count_nonzero(edge) > np.count_nonzero(edge[nearest]) and np.unique(codes[edge]).size > 1:
                proba[r] = own(x[r:r + 1])[1][0]
                continue
            proba[r] = np.bincount(codes[nearest], minlength=len(classes)) / k
        return classes.take(proba.argmax(axis=1)), proba
    return knn


def _float32(x: np.ndarray) -> np.ndarray:
    """Features as the trees read them (float32), refusing what their input check refuses."""
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise ValueError("non-finite features")
    return x32


# -- scikit-learn's tree ensembles run by LightGBM's engine ---------------------------------------------------------
class _Trees:
    """scikit-learn trees written as one LightGBM model (its text format) and run by LightGBM's C code.

    Each tree keeps its splits; LightGBM goes left when ``x <= threshold`` (no missing values: the features are
    checked finite first), which is what scikit-learn's trees do comparing float32 features with float64
    thresholds, so the features are given as float64 copies of their float32 values. Two uses:

    - ``leaves`` (:meth:`leaves`): one tree a round; LightGBM answers the leaf each tree sends a row to, and the
      caller looks up what scikit-learn adds for that leaf (one value a class) and sums the trees in their order;
    - ``sums`` (:meth:`sums`): rounds of ``per_round`` trees whose leaves hold the numbers scikit-learn adds,
      summed by LightGBM in round order from 0.0, one raw score a tree of the round.

    Rows go one by one through LightGBM's single-row API (a few microseconds a row; its matrix API cost more on
    small requests); the kernels hand larger requests to scikit-learn's own tree arrays (:func:`_by_size`)."""

    def __init__(self, rounds: list[list[tuple[str, list[float]]]], width: int, *, leaves: bool):
        from lightgbm import Booster

        self.per_round, self.width, self.count = len(rounds[0]), width, len(rounds) * len(rounds[0])
        blocks = [_model_header(self.per_round, width)]
        for i, trees in enumerate(rounds):
            for k, (structure, values) in enumerate(trees):
                blocks.append(_model_tree(i * self.per_round + k, structure, values))
        blocks.append("end of trees\n")
        self.booster = Booster(model_str="".join(blocks))  # one thread: the single-row calls' own parameters
        self._single = _LightGBMSingleRow(self.booster, 0, "num_threads=1", self.count if leaves else self.per_round,
                                          kind="leaves" if leaves else "raw")

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x64 = np.ascontiguousarray(x, dtype=np.float32).astype(np.float64)
        if x64.shape[1] != self.width or not np.isfinite(x64).all():
            raise ValueError(f"expected {self.width} finite features a row")
        return x64

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The leaf of each tree (a column) for each row of ``x``, as LightGBM numbers a tree's leaves."""
        return self._single.many(self._rows(x)).astype(np.int64)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """The raw scores of ``x``: one row a row, one column a tree of a round."""
        return self._single.many(self._rows(x))


class _LeafTable:
    """What each leaf of each tree adds (one value a class), and the trees' sum for rows: the leaves' values looked
    up tree after tree and added in the trees' order (an outer axis: no pairwise sum), as scikit-learn adds each
    tree's predict_proba (or each tree's term) to the ones before."""

    def __init__(self, trees: list[tuple[str, np.ndarray]], width: int):
        self.runner = _Trees([[(structure, [0.0] * len(values))] for structure, values in trees], width, leaves=True)
        sizes = [len(values) for _, values in trees]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.table = np.ascontiguousarray(np.concatenate([values for _, values in trees]), dtype=np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        leaves = self.runner.leaves(x)  # (rows, trees)
        values = self.table[leaves.T + self.offsets[:, np.newaxis]]  # (trees, rows, classes)
        return np.add.reduce(values, axis=0)


def _model_header(per_round: int, width: int) -> str:
    return (f"tree\nversion=v4\nnum_class={per_round}\nnum_tree_per_iteration={per_round}\nlabel_index=0\n"
            f"max_feature_idx={width - 1}\nfeature_names={' '.join(f'x{j}' for j in range(width))}\n"
            f"feature_infos={' '.join(['none'] * width)}\n\n")


def _model_tree(index: int, structure: str, leaves) -> str:
    values = " ".join(repr(v) for v in leaves)
    return (f"Tree={index}\nnum_leaves={len(leaves)}\nnum_cat=0\n{structure}leaf_value={values}\n"
            f"is_linear=0\nshrinkage=1\n\n\n")


def _structure(tree) -> tuple[str, np.ndarray]:
    """A scikit-learn tree's splits in LightGBM's text format, and its leaves' node ids in LightGBM's leaf order.

    Internal nodes keep scikit-learn's order (the root first); a child that is a leaf is written ``~leaf``."""
    left, right = tree.children_left, tree.children_right
    leaf = left == -1
    internal, leaves = np.flatnonzero(~leaf), np.flatnonzero(leaf)
    if not len(internal):
        return "", leaves
    index = np.empty(len(left), dtype=np.int64)
    index[internal] = np.arange(len(internal))
    index[leaves] = ~np.arange(len(leaves))

    def line(name, values):
        return f"{name}={' '.join(repr(v) for v in values.tolist())}\n"

    text = (line("split_feature", tree.feature[internal]) + line("threshold", tree.threshold[internal])
            + line("decision_type", np.zeros(len(internal), dtype=np.int64))
            + line("left_child", index[left[internal]]) + line("right_child", index[right[internal]]))
    return text, leaves


def _leaf_rows(tree) -> tuple[str, np.ndarray]:
    """``(structure, the leaves' values)``: one row a leaf of what ``tree_.value`` holds for it (a class's
    fraction a column, or a regression tree's value)."""
    structure, leaves = _structure(tree)
    return structure, tree.value[leaves, 0, :]


def _forest_lightgbm(estimator):
    """RandomForestClassifier and ExtraTreesClassifier: every tree's predict_proba (its leaf's class fractions)
    added in order, then / n_estimators; predict: the argmax."""
    n, classes, count = estimator.n_classes_, estimator.classes_, len(estimator.estimators_)
    table = _LeafTable([(lambda s, v: (s, v[:, :n]))(*_leaf_rows(e.tree_)) for e in estimator.estimators_],
                       estimator.n_features_in_)

    def forest(x):
        proba = table(x)
        proba /= count
        return classes.take(np.argmax(proba, axis=1), axis=0), proba
    forest.trees = table  # the booster lives with the kernel
    return forest


def _adaboost_lightgbm(estimator):
    """SAMME.R AdaBoost over decision trees, two classes or more: each tree's term of the decision
    (``(k - 1) * (log p - mean log p)`` of its clipped predict_proba, computed here on each leaf's fractions as
    scikit-learn computes it on each row's) looked up for the row's leaf, and added tree after tree as
    scikit-learn's ``sum()`` does; then its decision, predict and predict_proba as scikit-learn 1.4 makes them."""
    classes, total, k = estimator.classes_, estimator.estimator_weights_.sum(), estimator.n_classes_
    eps = np.finfo(np.float64).eps
    trees = []
    for e in estimator.estimators_:
        structure, values = _leaf_rows(e.tree_)
        proba = np.array(values[:, :e.n_classes_], dtype=np.float64)
        np.clip(proba, eps, None, out=proba)  # _samme_proba, on the leaves' rows
        log_proba = np.log(proba)
        trees.append((structure, (k - 1) * (log_proba - (1.0 / k) * log_proba.sum(axis=1)[:, np.newaxis])))
    table = _LeafTable(trees, estimator.n_features_in_)

    def adaboost(x):
        pred = table(x)
        pred /= total
        if k == 2:
            pred[:, 0] *= -1
            decision = pred.sum(axis=1)
            labels = classes.take(decision > 0, axis=0)
            proba = np.vstack([-decision, decision]).T / 2  # _compute_proba_from_decision: softmax of that
        else:
            labels = classes.take(np.argmax(pred, axis=1), axis=0)
            proba = pred / (k - 1)
        return labels, _softmax(proba)
    adaboost.trees = table
    return adaboost


def _gradient_boosting_lightgbm(estimator):
    """GradientBoostingClassifier with the prior (or no) initial estimator: the initial raw prediction as a first
    round of one-leaf trees, then each stage's trees with their leaves holding ``learning_rate * value`` (the
    number predict_stages adds), summed in stage order; then its loss's predict_proba, and predict: raw >= 0
    (two classes) or the argmax (more)."""
    from sklearn.dummy import DummyClassifier

    init = estimator.init_
    if not (init == "zero" or (type(init) is DummyClassifier and init.strategy == "prior")) or not hasattr(
            estimator, "_loss"):
        return None
    start = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_), dtype=np.float32))[0]
    rate, loss, classes = estimator.learning_rate, estimator._loss, estimator.classes_
    rounds = [[("", [float(v)]) for v in start]]
    for stage in estimator.estimators_:
        trees = []
        for e in stage:
            structure, values = _leaf_rows(e.tree_)
            trees.append((structure, (rate * values[:, 0]).tolist()))
        rounds.append(trees)
    trees = _Trees(rounds, estimator.n_features_in_, leaves=False)

    def gradient_boosting(x):
        raw = trees.sums(x)
        if raw.shape[1] == 1:
            raw = raw.ravel()
            return classes[(raw >= 0).astype(int)], loss.predict_proba(raw)
        return classes[np.argmax(raw, axis=1)], loss.predict_proba(raw)
    gradient_boosting.trees = trees
    return gradient_boosting


def _lightgbm(estimator):
    """LGBMClassifier.predict_proba without its per-call cost, two classes or more.

    Booster.predict builds an _InnerPredictor from the fitted params on every call (copied
    and formatted, about 20 us) and LightGBM parses that string again on every call (another
    20 us). Here the predictor is built once, with the prediction parameters only (LightGBM's
    "Predict Parameters" and num_threads: the others do not change a prediction, and
    verification proves it). Batches of up to :data:`SINGLE_ROWS` rows go through LightGBM's
    single-row fast API instead (3 us a row against 17 us a call). Two classes: the booster
    gives P(class 1), stacked as (1 - p, p); more: one probability a class (LightGBM's softmax
    of the class scores, ``num_class`` trees an iteration). Predict is their argmax through the
    classifier's label table (LabelEncoder.inverse_transform's).
    """
    from lightgbm.basic import _InnerPredictor, _param_dict_to_str

    params = _predict_params(estimator)
    booster, classes = estimator.booster_, estimator._le.classes_
    k = estimator.n_classes_
    outputs = 1 if k == 2 else k  # what the booster answers a row
    if booster.num_model_per_iteration() != outputs:
        return None
    predictor = _InnerPredictor.from_booster(booster, params)  # shares the booster's handle
    iterations = booster.best_iteration  # Booster.predict's default when num_iteration is None
    single = _LightGBMSingleRow(booster, iterations, _param_dict_to_str(params), outputs)

    def lightgbm(x, booster=booster):  # the booster is held here: the predictors do not own its handle
        if len(x) <= SINGLE_ROWS and x.dtype == np.float64:
            p = np.array([single(row) for row in x.tolist()]).reshape(len(x), outputs)
        else:
            p = predictor.predict(x, num_iteration=iterations).reshape(len(x), outputs)
        if outputs == 1:
            proba = np.empty((len(p), 2))
            proba[:, 0], proba[:, 1] = 1.0 - p[:, 0], p[:, 0]
        else:
            proba = p
        return classes[np.argmax(proba, axis=1)], proba
    lightgbm.single_rows = SINGLE_ROWS  # verify() checks that path row by row too
    return lightgbm


def _predict_params(estimator) -> dict:
    """A LightGBM estimator's prediction parameters (LightGBM's "Predict Parameters" and num_threads)."""
    from lightgbm.basic import _ConfigAliases
    from lightgbm.sklearn import _choose_param_value

    params = estimator._process_params(stage="predict")
    params = _choose_param_value("num_threads", params, estimator.n_jobs)
    params["num_threads"] = estimator._process_n_jobs(params["num_threads"])
    wanted = _ConfigAliases.get("num_threads", "predict_disable_shape_check", "pred_early_stop",
                                "pred_early_stop_freq", "pred_early_stop_margin")
    return {k: copy.deepcopy(v) for k, v in params.items() if k in wanted}


def _free_fast_config(config, booster) -> None:
    from lightgbm.basic import _LIB

    _LIB.LGBM_FastConfigFree(config)


class _LightGBMSingleRow:
    """The booster's answer on one row of float64 features (``kind`` normal: P(class 1), or one probability a
    class; raw: the raw scores; leaves: each tree's leaf) by LGBM_BoosterPredictForMatSingleRowFast.

    The call is made through ``ctypes.PyDLL``, which keeps the GIL for its 2-3 us: no hand-off
    to another thread and back. The output buffers are the call's own: with shared ones a thread
    switch between the call and the read could hand a request another request's probability.
    """

    def __init__(self, booster, iterations: int, parameters: str, outputs: int = 1, *, kind: str = "normal"):
        import ctypes
        import weakref

        from lightgbm.basic import (
            _C_API_DTYPE_FLOAT64,
            _C_API_PREDICT_LEAF_INDEX,
            _C_API_PREDICT_NORMAL,
            _C_API_PREDICT_RAW_SCORE,
            _LIB,
            _c_str,
            _safe_call,
        )

        self._ctypes = ctypes
        self.ncol, self.outputs = booster.num_feature(), outputs
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int({"normal": _C_API_PREDICT_NORMAL, "raw": _C_API_PREDICT_RAW_SCORE,
                                           "leaves": _C_API_PREDICT_LEAF_INDEX}[kind]), ctypes.c_int(0),
            ctypes.c_int(iterations),
            ctypes.c_int(_C_API_DTYPE_FLOAT64), ctypes.c_int32(self.ncol), _c_str(parameters),
            ctypes.byref(self._config)))
        # freed with this object; the finalizer holds the booster, so its handle is freed after the config
        weakref.finalize(self, _free_fast_config, self._config, booster)
        self._predict = ctypes.PyDLL(_LIB._name).LGBM_BoosterPredictForMatSingleRowFast
        self._row_type, self._out_type = ctypes.c_double * self.ncol, ctypes.c_double * outputs
        self._pointer = ctypes.POINTER(ctypes.c_double)

    def __call__(self, row: list[float]):
        """P(class 1) (a float) with one output; the list of the class probabilities with more."""
        out, out_len = self._out_type(), self._ctypes.c_int64(0)
        if len(row) != self.ncol or self._predict(self._config, self._row_type(*row), self._ctypes.byref(out_len),
                                                 out) != 0 or out_len.value != self.outputs:
            self._failed()
        return out[0] if self.outputs == 1 else out[:]

    def many(self, x: np.ndarray) -> np.ndarray:
        """The answers on each row of ``x`` (float64, C order, ``ncol`` columns), one row of ``outputs`` a row."""
        out = np.empty((len(x), self.outputs))
        out_len, predict, config, pointer = self._ctypes.c_int64(0), self._predict, self._config, self._pointer
        byref, rows, outs = self._ctypes.byref, x.ctypes.data, out.ctypes.data
        step_in, step_out = x.strides[0], out.strides[0]
        cast = self._ctypes.cast
        for i in range(len(x)):
            if predict(config, cast(rows + i * step_in, pointer), byref(out_len),
                       cast(outs + i * step_out, pointer)) != 0 or out_len.value != self.outputs:
                self._failed()
        return out

    @staticmethod
    def _failed():
        from lightgbm.basic import _LIB

        raise RuntimeError(f"LightGBM single-row predict failed: {_LIB.LGBM_GetLastError().decode()}")
