"""Retrieval metrics against independent references: scikit-learn's AP, hand-computed tables, DINO's kNN."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from probes.metrics import (average_precision_per_query, knn_classify, l2_normalize, retrieval_metrics,
                            topk_neighbours)


def tied_unit_features(n: int, seed: int) -> np.ndarray:
    """Unit vectors whose inner products are exact in float32 ({-1, -.5, 0, .5, 1}): many exact ties.

    Entries are +-0.5 in 4 dimensions (norm 1), or a single +-1; every dot product is a sum of
    multiples of 0.25, so any order of summation gives the same float -- the reference sees the very
    same tie groups as the code under test.
    """
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, 4)) < 0.5, -0.5, 0.5).astype(np.float32)
    single = rng.random(n) < 0.3
    x[single] = 0
    x[single, rng.integers(0, 4, single.sum())] = rng.choice([-1.0, 1.0], single.sum())
    return x


def sklearn_ap(features, labels, include_self: bool) -> np.ndarray:
    """The official code's loop: one sklearn call per query over its similarity row."""
    scores = features @ features.T
    out = []
    for i in range(len(labels)):
        keep = np.ones(len(labels), bool)
        if not include_self:
            keep[i] = False
        relevant = labels[keep] == labels[i]
        out.append(average_precision_score(relevant, scores[i][keep]) if relevant.any() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("engine", ["numpy", "torch"])     # the CPU engine, and the one used on GPUs
@pytest.mark.parametrize("include_self", [True, False])
def test_ap_equals_sklearn_per_query_with_ties(include_self, engine):
    features = tied_unit_features(90, seed=1)
    labels = np.random.default_rng(2).integers(0, 3, 90)
    scores = features @ features.T
    assert len(np.unique(scores)) <= 5            # the case is really about ties
    ours = average_precision_per_query(features, labels, include_self=include_self, chunk_size=7, engine=engine)
    reference = sklearn_ap(features, labels, include_self)
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("include_self", [True, False])
def test_ap_equals_sklearn_on_random_float_features(include_self, engine):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((120, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 120)
    normalized = l2_normalize(torch.from_numpy(features)).numpy()
    ours = average_precision_per_query(features, labels, include_self=include_self, engine=engine)
    np.testing.assert_allclose(ours, sklearn_ap(normalized, labels, include_self), atol=1e-6, rtol=0)


def test_ap_with_a_separate_gallery_equals_sklearn():
    rng = np.random.default_rng(4)
    query, gallery = tied_unit_features(30, 5), tied_unit_features(70, 6)
    q_labels, g_labels = rng.integers(0, 3, 30), rng.integers(0, 3, 70)
    ours = average_precision_per_query(query, q_labels, gallery, g_labels)
    scores = query @ gallery.T
    reference = [average_precision_score(g_labels == q_labels[i], scores[i]) for i in range(30)]
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)


def test_ap_hand_computed_ranking_with_a_tie():
    # Query 0 = (1, 0). Gallery similarities: self 1.0 (pos), item 1: 1.0 (pos, tie with self),
    # item 2: 0.0 (neg), item 3: 0.0 (pos, tie with item 2), item 4: -1.0 (neg).
    features = np.array([[1, 0], [1, 0], [0, 1], [0, -1], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    # Self included: positives {0, 1, 3}; thresholds 1.0 -> P=2/2, R=2/3; 0.0 -> P=3/4, R=3/3.
    # AP = 2/3 * 1 + 1/3 * 3/4 = 0.9166...
    assert average_precision_per_query(features, labels, include_self=True)[0] == pytest.approx(2 / 3 + 1 / 4)
    # Self excluded: positives {1, 3}; 1.0 -> P=1/1, R=1/2; 0.0 -> P=2/3, R=1. AP = 1/2 + 1/2 * 2/3.
    assert average_precision_per_query(features, labels, include_self=False)[0] == pytest.approx(1 / 2 + 1 / 3)


def test_chunking_does_not_change_results():
    features = tied_unit_features(64, 7)
    labels = np.random.default_rng(8).integers(0, 4, 64)
    whole = retrieval_metrics(features, labels, include_self=False, chunk_size=10_000)
    pieces = retrieval_metrics(features, labels, include_self=False, chunk_size=3)
    for key in ("AP", "mAP", "P@1", "P@5", "P@10"):
        assert whole[key] == pytest.approx(pieces[key], abs=1e-12)


def test_map_is_the_mean_of_per_class_means():
    rng = np.random.default_rng(9)
    features = rng.standard_normal((50, 8)).astype(np.float32)
    labels = np.array([0] * 5 + [1] * 15 + [2] * 30)          # unbalanced: AP and mAP differ
    result = retrieval_metrics(features, labels, include_self=True)
    reference = sklearn_ap(l2_normalize(torch.from_numpy(features)).numpy(), labels, True)
    class_means = [reference[labels == c].mean() for c in range(3)]
    assert result["AP"] == pytest.approx(reference.mean(), abs=1e-9)
    assert result["mAP"] == pytest.approx(np.mean(class_means), abs=1e-9)
    assert result["AP"] != pytest.approx(result["mAP"], abs=1e-3)
    assert result["per_class_count"] == {0: 5, 1: 15, 2: 30}


def test_precision_at_k_hand_computed_with_ties_at_the_cut():
    # Query (1, 0) against 5 gallery items; similarities 1, 0.5(x2, tie), 0, -1.
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    c = math.cos(math.pi / 3)
    gallery = np.array([[1, 0], [c, math.sin(math.pi / 3)], [c, -math.sin(math.pi / 3)], [0, 1], [-1, 0]],
                       dtype=np.float32)
    g_labels = np.array([0, 0, 1, 0, 1])
    result = retrieval_metrics(query, [0], gallery, g_labels, ks=(1, 2, 3, 4))
    assert result["P@1"] == pytest.approx(1.0)
    # k = 2: one slot left for the tied pair {pos, neg}: expected 1 + 0.5 relevant -> 1.5 / 2.
    assert result["P@2"] == pytest.approx(0.75)
    assert result["P@3"] == pytest.approx(2 / 3)
    assert result["P@4"] == pytest.approx(3 / 4)


def test_precision_at_k_with_a_tie_longer_than_the_top_list():
    # 30 gallery items tie at similarity 1 with the query; 6 of them relevant; then 5 relevant at -1.
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0]] * 30 + [[-1.0, 0.0]] * 5, dtype=np.float32)
    g_labels = np.array([0] * 6 + [1] * 24 + [0] * 5)
    result = retrieval_metrics(query, [0], gallery, g_labels, ks=(1, 5, 10))
    for k in (1, 5, 10):                    # any k inside the tie: the tie's share of relevant items
        assert result[f"P@{k}"] == pytest.approx(6 / 30)


def test_query_without_positive_is_nan_and_left_out():
    features = tied_unit_features(12, 10)
    labels = np.array([0] * 6 + [1] * 5 + [2])                 # class 2 has one item
    ap = average_precision_per_query(features, labels, include_self=False)
    assert np.isnan(ap[-1]) and not np.isnan(ap[:-1]).any()
    result = retrieval_metrics(features, labels, include_self=False)
    assert result["num_queries_without_positives"] == 1
    assert result["AP"] == pytest.approx(np.nanmean(ap))
    assert set(result["per_class_AP"]) == {0, 1}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one label per feature row"):
        retrieval_metrics(np.zeros((4, 3)), [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 2), np.nan), [0, 1, 0])
    with pytest.raises(ValueError, match="include_self=False needs"):
        average_precision_per_query(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], include_self=False)


# --- kNN: DINO's knn_classifier, transcribed from facebookresearch/dino eval_knn.py ------------------------------
@torch.no_grad()
def dino_knn_classifier(train_features, train_labels, test_features, test_labels, k, T, num_classes=1000):
    top1, top5, total = 0.0, 0.0, 0
    train_features = train_features.t()
    num_test_images, num_chunks = test_labels.shape[0], 100
    imgs_per_chunk = max(1, num_test_images // num_chunks)
    retrieval_one_hot = torch.zeros(k, num_classes).to(train_features.device)
    for idx in range(0, num_test_images, imgs_per_chunk):
        features = test_features[idx: min((idx + imgs_per_chunk), num_test_images), :]
        targets = test_labels[idx: min((idx + imgs_per_chunk), num_test_images)]
        batch_size = targets.shape[0]
        similarity = torch.mm(features, train_features)
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        candidates = train_labels.view(1, -1).expand(batch_size, -1)
        retrieved_neighbors = torch.gather(candidates, 1, indices)
        retrieval_one_hot.resize_(batch_size * k, num_classes).zero_()
        retrieval_one_hot.scatter_(1, retrieved_neighbors.view(-1, 1), 1)
        distances_transform = distances.clone().div_(T).exp_()
        probs = torch.sum(torch.mul(retrieval_one_hot.view(batch_size, -1, num_classes),
                                    distances_transform.view(batch_size, -1, 1)), 1)
        _, predictions = probs.sort(1, True)
        correct = predictions.eq(targets.data.view(-1, 1))
        top1 = top1 + correct.narrow(1, 0, 1).sum().item()
        top5 = top5 + correct.narrow(1, 0, min(5, k)).sum().item()
        total += targets.size(0)
    return top1 * 100.0 / total, top5 * 100.0 / total


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_equals_dino_knn_classifier(backend):
    rng = np.random.default_rng(11)
    num_classes = 7
    centres = rng.standard_normal((num_classes, 24))
    train_labels = rng.integers(0, num_classes, 300)
    test_labels = rng.integers(0, num_classes, 120)
    train = torch.from_numpy(centres[train_labels] + 1.5 * rng.standard_normal((300, 24))).float()
    test = torch.from_numpy(centres[test_labels] + 1.5 * rng.standard_normal((120, 24))).float()
    ks = (10, 20, 100, 200)
    ours = knn_classify(train, train_labels, test, test_labels, ks=ks, temperature=0.07, num_classes=num_classes,
                        backend=backend)
    train_n, test_n = torch.nn.functional.normalize(train, dim=1), torch.nn.functional.normalize(test, dim=1)
    results = []
    for k in ks:
        top1, top5 = dino_knn_classifier(train_n, torch.from_numpy(train_labels), test_n,
                                         torch.from_numpy(test_labels), k, 0.07, num_classes)
        assert 100 * ours[k]["top1"] == pytest.approx(top1, abs=1e-9)
        assert 100 * ours[k]["top5"] == pytest.approx(top5, abs=1e-9)
        results.append(top1)
    assert 20 < min(results) < 100                              # a case where kNN is neither trivial nor hopeless


def test_knn_leave_one_out_excludes_each_item_itself():
    # Two tight clusters with one mislabelled item: with itself excluded, its neighbours outvote its label.
    rng = np.random.default_rng(12)
    features = np.concatenate([rng.normal(0, 0.01, (10, 3)) + [1, 0, 0], rng.normal(0, 0.01, (10, 3)) + [0, 1, 0]])
    labels = np.array([0] * 10 + [1] * 10)
    labels[0] = 1
    result = knn_classify(features, labels, ks=(5,), num_classes=2)
    assert result[5]["top1"] == pytest.approx(19 / 20)


def test_topk_faiss_matches_torch_and_excludes_self():
    features = np.random.default_rng(13).standard_normal((40, 8)).astype(np.float32)
    s_f, i_f = topk_neighbours(features, None, 5, backend="faiss")
    s_t, i_t = topk_neighbours(features, None, 5, backend="torch")
    assert torch.equal(i_f, i_t)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)
    assert (i_f[:, 0] == torch.arange(40)).all()                # itself first when included
    _, i_x = topk_neighbours(features, None, 5, exclude_self=True)
    assert not (i_x == torch.arange(40)[:, None]).any()
    assert torch.equal(i_x[:, :4], i_f[:, 1:5])
