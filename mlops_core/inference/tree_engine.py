"""scikit-learn's tree ensembles and LightGBM's boosters run by LightGBM's C engine, a row at a time (private API
of LightGBM 4 and scikit-learn 1.4, behind :func:`.versions.untested` in the callers), and the helpers the
kernels share: the float32 features trees read, scikit-learn's softmax."""

from __future__ import annotations

import copy

import numpy as np

__all__ = ["SINGLE_ROWS"]

SINGLE_ROWS = 16  # batches up to this size are predicted row by row through LightGBM's fast API


def _float32(x: np.ndarray) -> np.ndarray:
    """Features as the trees read them (float32), refusing what their input check refuses."""
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise ValueError("non-finite features")
    return x32


def _softmax(z: np.ndarray) -> np.ndarray:
    """scikit-learn 1.4's ``utils.extmath.softmax`` in place (``z`` is the caller's own array)."""
    z -= z.max(axis=1).reshape((-1, 1))
    np.exp(z, out=z)
    z /= z.sum(axis=1).reshape((-1, 1))
    return z


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


def _samme_answer(pred: np.ndarray, total: float, classes: np.ndarray):
    """SAMME.R AdaBoost's labels and predict_proba from the sum of its trees' terms (``pred``, the caller's own
    array), as scikit-learn 1.4 makes them: the decision (the sum over the weights' ``total``), predict (two
    classes: decision > 0; more: its argmax) and predict_proba (the softmax of the decision, scaled)."""
    k = len(classes)
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
        return _samme_answer(table(x), total, classes)
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
