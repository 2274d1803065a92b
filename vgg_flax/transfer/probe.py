"""Linear probes on image descriptors: the paper's linear SVM (Appendix B), or logistic regression.

C is chosen on a held-out 20% of the training descriptors (stratified), as the paper chose it,
unless given; the classifier is then refit on every training descriptor with that C. Single-label
data report top-1 accuracy and mean class recall (the paper's Caltech measure; C is chosen by
it); multi-label data (labels N x K of 0/1, as VOC) report mean average precision (mAP, by which
C is chosen), one-vs-rest. scikit-learn is imported only when a probe is fitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASSIFIERS = ("svm", "logistic")
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """A fitted probe's test metrics, its C, and each candidate C's held-out score."""

    classifier: str
    C: float
    metrics: dict[str, float]
    train_examples: int
    test_examples: int
    validation: dict[float, float]  # C -> held-out score (empty when C was given)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        out["validation"] = {str(c): score for c, score in self.validation.items()}
        return out


def _estimator(classifier: str, C: float, multi_label: bool, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    if classifier == "svm":
        model = LinearSVC(C=C, max_iter=20_000, random_state=seed)
    else:
        model = LogisticRegression(C=C, max_iter=2_000)
    return OneVsRestClassifier(model) if multi_label else model


def metrics(estimator: Any, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 and mean_class_recall (single-label), or mAP (multi-label), of a fitted probe."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    if labels.ndim == 2:
        scores = estimator.decision_function(features)
        present = labels.sum(axis=0) > 0  # AP is undefined for a class with no positives
        return {"mAP": float(average_precision_score(labels[:, present], scores[:, present]))}
    predicted = estimator.predict(features)
    return {
        "top1": float(np.mean(predicted == labels)),
        "mean_class_recall": float(balanced_accuracy_score(labels, predicted)),
    }


def _score(found: dict[str, float]) -> float:
    return found.get("mAP", found.get("mean_class_recall", 0.0))


def check_data(
    features: np.ndarray, labels: Any, name: str = "features", dim: int | None = None
) -> np.ndarray:
    """`labels` as an array after checking them against `features`; raises ValueError."""
    if features.ndim != 2:
        raise ValueError(f"{name}: expected descriptors of shape (N, D), got {features.shape}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"{name} has {features.shape[1]}-D descriptors, the training ones are {dim}-D: "
            "extract both with the same weights, layer and --aggregate"
        )
    if labels is None:
        raise ValueError(
            f"{name} has no labels: extract descriptors of a folder with class subfolders "
            "(root/<class>/<image>)"
        )
    labels = np.asarray(labels)
    if len(labels) != len(features):
        raise ValueError(f"{name}: {len(labels)} labels for {len(features)} descriptors")
    classes = labels.shape[1] if labels.ndim == 2 else len(np.unique(labels))
    if classes < 2:
        raise ValueError(f"{name}: the labels hold {classes} class; a probe needs at least two")
    return labels


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    classifier: str = "svm",
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.2,
    seed: int = 0,
) -> tuple[Any, float, dict[float, float]]:
    """(fitted estimator, C, {C: held-out score}); C chosen on `holdout` of the data if None."""
    from sklearn.model_selection import train_test_split

    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    labels = check_data(features, labels)
    multi = labels.ndim == 2
    validation: dict[float, float] = {}
    if C is None:
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must lie between 0 and 1, got {holdout}")
        counts = np.unique(labels, return_counts=True)[1] if not multi else None
        stratify = None if multi or counts.min() < 2 else labels
        fit_x, val_x, fit_y, val_y = train_test_split(
            features, labels, test_size=holdout, random_state=seed, stratify=stratify
        )
        for candidate in Cs:
            model = _estimator(classifier, float(candidate), multi, seed).fit(fit_x, fit_y)
            validation[float(candidate)] = _score(metrics(model, val_x, val_y))
        C = max(validation, key=lambda c: (validation[c], -c))  # ties: the smaller C
    model = _estimator(classifier, float(C), multi, seed).fit(features, labels)
    return model, float(C), validation


def probe(
    train_features: np.ndarray,
    train_labels: Any,
    test_features: np.ndarray | None = None,
    test_labels: Any = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    **options: Any,
) -> ProbeResult:
    """Fit a probe on the training descriptors and measure it on the test ones.

    Without test descriptors, a stratified `test_fraction` of the training ones is held out for
    testing first. `options` are `fit`'s: classifier ("svm", "logistic"), C, Cs, holdout.
    """
    from sklearn.model_selection import train_test_split

    train_labels = check_data(train_features, train_labels, "training descriptors")
    if test_features is None:
        stratify = train_labels if train_labels.ndim == 1 else None
        train_features, test_features, train_labels, test_labels = train_test_split(
            train_features,
            train_labels,
            test_size=test_fraction,
            random_state=seed,
            stratify=stratify,
        )
    test_labels = check_data(
        test_features, test_labels, "test descriptors", dim=train_features.shape[1]
    )
    if (test_labels.ndim == 2) != (train_labels.ndim == 2):
        raise ValueError("training and test labels must both be single-label or multi-label")
    model, C, validation = fit(train_features, train_labels, seed=seed, **options)
    return ProbeResult(
        classifier=options.get("classifier", "svm"),
        C=C,
        metrics=metrics(model, test_features, test_labels),
        train_examples=len(train_features),
        test_examples=len(test_features),
        validation=validation,
    )


def format_table(result: ProbeResult) -> str:
    """The probe's result as a small plain-text table."""
    rows = [("classifier", result.classifier), ("C", f"{result.C:g}")]
    rows += [("train / test", f"{result.train_examples} / {result.test_examples}")]
    rows += [(name, f"{value:.2%}") for name, value in result.metrics.items()]
    rows += [(f"held-out score, C={c:g}", f"{s:.2%}") for c, s in result.validation.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
