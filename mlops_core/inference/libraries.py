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

import numpy as np

from .neighbours import Neighbours
from .predictors import generic_kernel, is_regressor
from .regression_kernels import _regression
from .tree_engine import (
    SINGLE_ROWS,
    _adaboost_lightgbm,
    _float32,
    _forest_lightgbm,
    _gradient_boosting_lightgbm,
    _lightgbm,
    _samme_answer,
    _softmax,
)
from .versions import TESTED, untested

__all__ = ["TESTED", "untested", "pycaret_step", "pycaret_labels_only", "pycaret_renames", "hand_kernel",
           "SINGLE_ROWS"]


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
        return _samme_answer(pred, total, classes)
    return adaboost


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
    neighbours, classes, k = Neighbours(estimator), estimator.classes_, estimator.n_neighbors
    own = generic_kernel(estimator)

    def knn(x):
        x = neighbours.rows(x)
        proba = np.empty((len(x), len(classes)))
        for r in range(len(x)):
            nearest = neighbours.nearest(x[r])
            if nearest is None:
                proba[r] = own(x[r:r + 1])[1][0]
                continue
            proba[r] = np.bincount(neighbours.targets[nearest], minlength=len(classes)) / k
        return classes.take(proba.argmax(axis=1)), proba
    return knn
