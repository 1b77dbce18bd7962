"""Simple baselines a Transformer has to beat to be worth its compute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Split = tuple[Sequence[str], Sequence[int]]


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
