"""Simple baselines a Transformer has to beat to be worth its compute.

``composition_baseline`` is the baseline of every fine-tune's verdict (``verdict``): k-mer
(3..6) counts for DNA, amino-acid and dipeptide composition for protein (character n-grams,
L2-normalised per sequence), then a logistic regression (one per label for multilabel) or a
ridge regression, fitted on the training split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Split = tuple[Sequence[str], Sequence[int]]

# The n-gram range of the composition features by alphabet: k-mers of DNA, residues and
# residue pairs of protein.
COMPOSITION_NGRAMS = {"dna": (3, 6), "protein": (1, 2)}


def composition_name(alphabet: str, problem: str) -> str:
    """What ``composition_baseline`` fits, in words."""
    features = "k-mer (3-6) counts" if alphabet == "dna" else "amino-acid + dipeptide composition"
    model = "ridge regression" if problem == "regression" else "logistic regression"
    return f"{features} + {model}"


def composition_baseline(
    alphabet: str,
    problem: str,
    train_sequences: Sequence[str],
    train_targets: np.ndarray,
    test_sequences: Sequence[str],
) -> np.ndarray:
    """Scores of ``test_sequences`` in the layout of the model's: class probabilities (N, C)
    for binary and multi-class (``train_targets`` class indices 0..C-1, every class present),
    label probabilities (N, L) for multilabel (a 0/1 matrix), values (N, 1) for regression."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    features = [
        CountVectorizer(analyzer="char", ngram_range=COMPOSITION_NGRAMS[alphabet], lowercase=False),
        Normalizer(),
    ]
    train, test = [s.upper() for s in train_sequences], [s.upper() for s in test_sequences]
    if problem == "regression":
        pipeline = make_pipeline(*features, Ridge(alpha=1.0))
        pipeline.fit(train, np.asarray(train_targets, dtype=float))
        return pipeline.predict(test)[:, None]
    classifier = LogisticRegression(max_iter=2000, C=10.0)
    if problem == "multilabel":
        targets = np.asarray(train_targets, dtype=int)
        pipeline = make_pipeline(*features, OneVsRestClassifier(classifier))
        pipeline.fit(train, targets)
        return pipeline.predict_proba(test)
    pipeline = make_pipeline(*features, classifier)
    pipeline.fit(train, np.asarray(train_targets, dtype=int))
    return pipeline.predict_proba(test)


def kmer_baseline_scores(
    train: Split, test_sequences: Sequence[str], k: tuple[int, int] = (3, 6)
) -> np.ndarray:
    """Class probabilities (N, C) of ``test_sequences`` from k-mer counts (all k in the
    inclusive range ``k``, L2-normalised per sequence) and a logistic regression fitted on
    ``train`` = (sequences, labels)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    pipeline = make_pipeline(
        CountVectorizer(analyzer="char", ngram_range=k, lowercase=False),
        Normalizer(),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    pipeline.fit(list(train[0]), list(train[1]))
    return pipeline.predict_proba(list(test_sequences))


def kmer_baseline_metrics(train: Split, test: Split, k: tuple[int, int] = (3, 6)) -> dict:
    """Test ``mcc`` (arg-max decision) and, for two classes, ``auroc`` of the k-mer count +
    logistic-regression baseline (see ``kmer_baseline_scores``); ``train`` and ``test`` are
    (sequences, labels)."""
    from sklearn.metrics import matthews_corrcoef, roc_auc_score

    classes = np.unique(np.asarray(train[1]))
    scores = kmer_baseline_scores(train, test[0], k)
    metrics = {"mcc": float(matthews_corrcoef(list(test[1]), classes[scores.argmax(axis=1)]))}
    if len(classes) == 2:
        metrics["auroc"] = float(roc_auc_score(list(test[1]), scores[:, 1]))
    return metrics


def kmer_baseline(train: Split, test: Split, k: tuple[int, int] = (3, 6)) -> float:
    """Test MCC of the k-mer count + logistic-regression baseline (``kmer_baseline_metrics``)."""
    return kmer_baseline_metrics(train, test, k)["mcc"]
