"""Retrieval and kNN metrics over frozen features: exact AP, mAP, precision@k, DINO kNN
(docs/protocols.md#part-retrieval-metric, docs/protocols.md#knn).

Everything here takes feature matrices and labels and returns plain numbers in [0, 1] (fractions; the
scripts turn them into percentages for the result records). Similarities are cosine similarities: the
features are L2-normalised once and compared by inner product.

Average precision (AP) is the step-function definition of ``sklearn.metrics.average_precision_score``,
ties included. With distinct thresholds t (the distinct scores, descending), sklearn computes
``AP = sum_t (R(t) - R(t_prev)) * P(t)`` where P(t) and R(t) count every item scored >= t. Recall only
moves at thresholds that hold positives, so this equals

    AP = 1/|pos| * sum over positives j of  #{positives with score >= s_j} / #{items with score >= s_j}

which needs, per query, one sort of the gallery scores and two binary searches -- no per-position
cumulative arrays and no Python loop over queries. Work is done in chunks of queries against the whole
gallery (on the GPU when the features are there), so no N x N matrix is ever held. Under torchrun the
chunks are shared out over the ranks and the per-query values exchanged (``probes.distributed``): every
rank gets the same numbers a single process computes.

Self-match: when the queries are the gallery (part retrieval), the official code ranks each query against
the whole database *including itself*, which counts as a positive (``include_self=True``). With
``include_self=False`` the query's own entry is removed from its ranking (score -inf, not a positive).
A query with no positive left (a class with one item, self excluded) has no AP; it is reported as NaN
and left out of the means (``retrieval_metrics`` counts such queries).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from probes import distributed

# A chunk of query rows holds about this many similarity values at once (float32 plus a few int64 temps).
DEFAULT_CHUNK_ELEMENTS = 1 << 23


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    features = torch.as_tensor(features).float()
    return torch.nn.functional.normalize(features, dim=1, eps=1e-12)


def _as_labels(labels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name} features must be a 2-D [N, D] matrix, got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name} labels must be 1-D with one label per feature row "
                         f"({features.shape[0]}), got shape {tuple(labels.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} features contain NaN or inf values")


def _chunk_rows(gallery_size: int, chunk_size: int | None) -> int:
    if chunk_size:
        return max(1, int(chunk_size))
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, gallery_size))


def _setup(query_features, query_labels, gallery_features, gallery_labels, include_self, device):
    """Normalised features on the work device; ``same`` is True when the gallery is the query set."""
    same = gallery_features is None
    if same != (gallery_labels is None):
        raise ValueError("pass both gallery_features and gallery_labels, or neither (gallery = queries)")
    if not same and not include_self:
        raise ValueError("include_self=False needs the gallery to be the query set (gallery_features=None)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    query = l2_normalize(query_features)
    q_labels = _as_labels(query_labels)
    _check(query, q_labels, "query")
    if same:
        gallery, g_labels = query, q_labels
    else:
        gallery, g_labels = l2_normalize(gallery_features), _as_labels(gallery_labels)
        _check(gallery, g_labels, "gallery")
        if gallery.shape[1] != query.shape[1]:
            raise ValueError(f"query features are {query.shape[1]}-d but gallery features are {gallery.shape[1]}-d")
    return query.to(device), q_labels.to(device), gallery.to(device), g_labels.to(device), same


def _similarity_chunks(query, q_labels, gallery, g_labels, same, include_self, chunk_size):
    """Yield (query row indices, similarity rows [c, N], gallery indices of the positives) per chunk.

    Queries are processed class by class, so that every row of a chunk has the same positives (the
    gallery items of that class). With the self-match excluded, the query's own column gets score -inf.
    Under torchrun each rank takes the chunks in turn (chunk i on rank i mod world size), each against
    the whole gallery; ``_merge_ranks`` then gives every rank every query's values.
    """
    rank, size = distributed.world()
    rows = _chunk_rows(gallery.shape[0], chunk_size)
    chunk = -1
    for label in torch.unique(q_labels).tolist():
        members = torch.nonzero(q_labels == label).flatten()
        positives = torch.nonzero(g_labels == label).flatten()
        for start in range(0, members.shape[0], rows):
            chunk += 1
            if chunk % size != rank:
                continue
            idx = members[start:start + rows]
            sims = query[idx] @ gallery.T
            if same and not include_self:
                sims[torch.arange(idx.shape[0], device=idx.device), idx] = -math.inf
            yield idx, sims, positives


def _merge_ranks(*per_query: torch.Tensor) -> list[torch.Tensor]:
    """Per-query values each rank filled for its own chunks (zeros elsewhere), summed over ranks: every
    value is one rank's, exactly. Outside torchrun: the tensors as they are."""
    if distributed.world()[1] == 1:
        return list(per_query)
    return [distributed.sum_rows(values) for values in per_query]


def _ap_rows(sims: torch.Tensor, positives: torch.Tensor, engine: str = "auto") -> torch.Tensor:
    """Exact sklearn AP of each row (float64), all rows sharing the positive columns; NaN without positives.

    For positive j: n_ge = #items with score >= s_j and tp_ge = #positives with score >= s_j (ties count
    fully, as sklearn's thresholds do); AP = mean over positives of tp_ge / n_ge. An excluded self entry
    has score -inf: it is neither counted (every real score is above it) nor averaged over.
    ``engine``: "torch" (any device; used on the GPU), "numpy" (CPU: numpy's sort is about twice as fast
    as torch's there, and rows are split over threads), "auto" picks by device.
    """
    if positives.numel() == 0:
        return torch.full((sims.shape[0],), float("nan"), dtype=torch.float64, device=sims.device)
    if engine == "numpy" or (engine == "auto" and sims.device.type == "cpu"):
        return torch.from_numpy(_ap_rows_numpy(sims.numpy(), positives.numpy()))
    n = sims.shape[1]
    sorted_all = torch.sort(sims, dim=1).values                        # ascending
    pos_scores = sims[:, positives].contiguous()                        # [c, P]
    pos_sorted = torch.sort(pos_scores, dim=1).values
    n_ge = n - torch.searchsorted(sorted_all, pos_scores, side="left")
    tp_ge = positives.numel() - torch.searchsorted(pos_sorted, pos_scores, side="left")
    real = torch.isfinite(pos_scores)
    ratio = torch.where(real, tp_ge.double() / n_ge.clamp(min=1).double(), torch.zeros((), dtype=torch.float64,
                                                                                        device=sims.device))
    num_pos = real.sum(1)
    ap = ratio.sum(1) / num_pos.clamp(min=1).double()
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))


def _ap_rows_numpy(sims: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """CPU engine of ``_ap_rows``: positives and negatives sorted apart, then merged by binary search.

    With p = sorted positive scores and q = sorted negative scores (ascending), for the i-th positive
    tp_ge = P - (index of the first positive equal to p_i) and fp_ge = len(q) - searchsorted(q, p_i, left).
    """
    is_pos = np.zeros(sims.shape[1], dtype=bool)
    is_pos[positives] = True
    pos_all, neg_all = sims[:, is_pos], sims[:, ~is_pos]
    out = np.empty(sims.shape[0], dtype=np.float64)

    def rows(block: range) -> None:
        pos_sorted = np.sort(pos_all[block.start:block.stop], axis=1)
        neg_sorted = np.sort(neg_all[block.start:block.stop], axis=1)
        for r, (p, q) in enumerate(zip(pos_sorted, neg_sorted)):
            p = p[np.searchsorted(p, -np.inf, side="right"):]           # drop an excluded self entry (-inf)
            if len(p) == 0:
                out[block.start + r] = np.nan
                continue
            # tp_ge: positives from the first of p_i's tie run on (run starts carried forward, no search).
            starts = np.empty(len(p), dtype=bool)
            starts[0] = True
            np.not_equal(p[1:], p[:-1], out=starts[1:])
            first_of_run = np.maximum.accumulate(np.where(starts, np.arange(len(p)), 0))
            tp_ge = len(p) - first_of_run
            fp_ge = len(q) - np.searchsorted(q, p, side="left")
            out[block.start + r] = np.mean(tp_ge / (tp_ge + fp_ge))

    workers = max(1, min(torch.get_num_threads(), sims.shape[0]))
    step = -(-sims.shape[0] // workers)
    blocks = [range(i, min(i + step, sims.shape[0])) for i in range(0, sims.shape[0], step)]
    if len(blocks) == 1:
        rows(blocks[0])
    else:  # numpy's sort releases the GIL: one block of rows per thread
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(blocks)) as pool:
            list(pool.map(rows, blocks))
    return out


def average_precision_per_query(query_features, query_labels, gallery_features=None, gallery_labels=None, *,
                                include_self: bool = True, chunk_size: int | None = None,
                                device=None, engine: str = "auto") -> np.ndarray:
    """AP of every query's full ranking of the gallery (cosine similarity), as float64 [Q].

    Equal to ``sklearn.metrics.average_precision_score(gallery_labels == label_q, similarities_q)`` per
    query, ties included. Without a gallery, the queries are the gallery; ``include_self`` then decides
    whether each query's own entry takes part (official code: yes). NaN marks queries without positives.
    ``engine`` ("auto", "numpy", "torch") changes only the speed, never the values.
    """
    query, q_labels, gallery, g_labels, same = _setup(query_features, query_labels, gallery_features,
                                                      gallery_labels, include_self, device)
    out = torch.zeros(query.shape[0], dtype=torch.float64)
    for idx, sims, positives in _similarity_chunks(query, q_labels, gallery, g_labels, same, include_self,
                                                   chunk_size):
        out[idx.cpu()] = _ap_rows(sims, positives, engine).cpu()
    return _merge_ranks(out)[0].numpy()


def _precision_at_k_rows(sims: torch.Tensor, relevant_column: torch.Tensor, ks: Sequence[int],
                         available: int) -> dict[int, torch.Tensor]:
    """Precision among the k best-scored items for each k, with ties at the cut shared fairly.

    If the k-th best score t is tied, the expected precision over all orderings of the tie is used:
    (#relevant above t + #relevant at t * (k - #above) / #at) / k. Deterministic, order-free.
    ``relevant_column`` [N] marks the gallery items relevant to every row of this chunk (one class).
    Everything is read from one top-(max k + 1) list; only rows whose tie at the cut runs past that list
    look at the whole row.
    """
    width = min(max(ks) + 1, available)
    values, indices = torch.topk(sims, width, dim=1)                 # sorted, descending
    relevant_top = relevant_column[indices]
    out = {}
    for asked in ks:
        k = min(asked, available)
        kth = values[:, k - 1:k]
        above = values > kth                                          # every item above t is in the list
        at = values == kth
        rel_above = (above & relevant_top).sum(1).double()
        rel_at = (at & relevant_top).sum(1).double()
        n_at = at.sum(1).double()
        # A tie that reaches the end of the list may continue beyond it: count those rows on the full row.
        open_rows = torch.nonzero(at[:, -1]).flatten() if width < available else None
        if open_rows is not None and open_rows.numel():
            full_at = sims[open_rows] == kth[open_rows]
            n_at[open_rows] = full_at.sum(1).double()
            rel_at[open_rows] = (full_at & relevant_column[None]).sum(1).double()
        slots = k - above.sum(1).double()
        out[asked] = (rel_above + rel_at * slots / n_at) / k
    return out


def retrieval_metrics(query_features, query_labels, gallery_features=None, gallery_labels=None, *,
                      include_self: bool = True, ks: Sequence[int] = (1, 5, 10), num_classes: int | None = None,
                      chunk_size: int | None = None, device=None) -> dict:
    """AP (mean over queries), mAP (mean over classes of the per-class mean AP) and precision@k.

    Returns fractions in [0, 1]:
    ``{"AP", "mAP", "P@k"..., "per_class_AP": {label: AP}, "per_class_count": {label: n},
    "num_queries": Q, "num_queries_without_positives": n, "per_query_AP": float64 [Q] (NaN: no positive),
    "per_query_P@k": float64 [Q]...}``.
    Queries without any positive (NaN AP) are left out of every mean and counted.
    """
    query, q_labels, gallery, g_labels, same = _setup(query_features, query_labels, gallery_features,
                                                      gallery_labels, include_self, device)
    n_queries = query.shape[0]
    available = gallery.shape[0] - (1 if same and not include_self else 0)   # rankable items per query
    ap = torch.zeros(n_queries, dtype=torch.float64)
    precision = {k: torch.zeros(n_queries, dtype=torch.float64) for k in ks}
    for idx, sims, positives in _similarity_chunks(query, q_labels, gallery, g_labels, same, include_self,
                                                   chunk_size):
        cpu_idx = idx.cpu()
        ap[cpu_idx] = _ap_rows(sims, positives).cpu()
        # An excluded self entry scores -inf: it never fills a top-k slot (k <= available), and it is a
        # positive only in a tie at -inf, which cannot happen for finite features.
        relevant_column = torch.zeros(sims.shape[1], dtype=torch.bool, device=sims.device)
        relevant_column[positives] = True
        for k, values in _precision_at_k_rows(sims, relevant_column, ks, available).items():
            precision[k][cpu_idx] = values.cpu()
    ap, *merged = _merge_ranks(ap, *precision.values())
    precision = dict(zip(precision, merged))
    labels = q_labels.cpu().numpy()
    ap_np = ap.numpy()
    valid = ~np.isnan(ap_np)
    if not valid.any():
        raise ValueError("no query has a positive in the gallery: AP is undefined")
    classes = sorted(set(labels.tolist())) if num_classes is None else list(range(num_classes))
    per_class = {}
    per_class_count = {}
    for c in classes:
        members = (labels == c) & valid
        per_class_count[c] = int((labels == c).sum())
        if members.any():
            per_class[c] = float(ap_np[members].mean())
    result = {
        "AP": float(ap_np[valid].mean()),
        "mAP": float(np.mean(list(per_class.values()))),
        "per_class_AP": per_class,
        "per_class_count": per_class_count,
        "num_queries": int(n_queries),
        "num_queries_without_positives": int((~valid).sum()),
    }
    for k in ks:
        result[f"P@{k}"] = float(precision[k].numpy()[valid].mean())
        result[f"per_query_P@{k}"] = precision[k].numpy()
    result["per_query_AP"] = ap_np
    return result


def retrieval_record_metrics(scores: dict, ks: Sequence[int], class_names: Sequence[str] | None = None) -> dict:
    """A ``retrieval_metrics`` result as record metrics in percent: AP, mAP, P@k (and AP[<class>] with names)."""
    out = {"AP": 100 * scores["AP"], "mAP": 100 * scores["mAP"], **{f"P@{k}": 100 * scores[f"P@{k}"] for k in ks}}
    if class_names is not None:
        out.update({f"AP[{class_names[c]}]": 100 * v for c, v in scores["per_class_AP"].items()})
    return out


# --- nearest neighbours ---------------------------------------------------------------------------------------
def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        return None
    return faiss


def topk_neighbours(query_features, gallery_features=None, k: int = 10, *, exclude_self: bool = False,
                    backend: str = "faiss", chunk_size: int | None = None, device=None):
    """The k most similar gallery items of each query: (similarities [Q, k] float32, indices [Q, k] int64).

    Cosine similarity on L2-normalised features. ``backend="faiss"`` uses an exact ``IndexFlatIP`` (on the
    GPU with faiss-gpu when ``device`` is CUDA); ``"torch"`` uses chunked matrix products and ``topk``.
    Without a gallery the queries are the gallery, and ``exclude_self`` drops each query's own entry.
    """
    query = l2_normalize(query_features)
    same = gallery_features is None
    gallery = query if same else l2_normalize(gallery_features)
    if exclude_self and not same:
        raise ValueError("exclude_self needs the gallery to be the query set (gallery_features=None)")
    extra = 1 if exclude_self else 0
    k_search = min(k + extra, gallery.shape[0])
    faiss = _faiss() if backend == "faiss" else None
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    if faiss is not None:
        index = faiss.IndexFlatIP(gallery.shape[1])
        if device is not None and torch.device(device).type == "cuda" and hasattr(faiss, "StandardGpuResources"):
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(np.ascontiguousarray(gallery.numpy(), dtype=np.float32))
        sims, idx = index.search(np.ascontiguousarray(query.numpy(), dtype=np.float32), k_search)
        sims, idx = torch.from_numpy(sims), torch.from_numpy(idx).long()
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        g = gallery.to(dev)
        rows = _chunk_rows(g.shape[0], chunk_size)
        sims_list, idx_list = [], []
        for start in range(0, query.shape[0], rows):
            s = query[start:start + rows].to(dev) @ g.T
            values, indices = s.topk(k_search, dim=1, largest=True, sorted=True)
            sims_list.append(values.cpu())
            idx_list.append(indices.cpu())
        sims, idx = torch.cat(sims_list), torch.cat(idx_list)
    if exclude_self:
        own = torch.arange(query.shape[0])[:, None]
        keep = idx != own
        # Keep the first k non-self entries of each row (the self entry is at most once per row).
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
        sims, idx = sims.gather(1, order), idx.gather(1, order)
    return sims[:, :k], idx[:, :k]


def knn_classify(train_features, train_labels, test_features=None, test_labels=None, *,
                 ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07, num_classes: int | None = None,
                 backend: str = "torch", chunk_size: int | None = None, device=None) -> dict:
    """Weighted kNN classification, DINO protocol (facebookresearch/dino ``eval_knn.knn_classifier``).

    Features are L2-normalised; each of the k nearest training items votes for its label with weight
    exp(similarity / T); classes are ranked by total vote. Returns ``{k: {"top1": f, "top5": f}}`` as
    fractions. Without test features the training set is classified leave-one-out (each item's own entry
    is excluded from its neighbours).
    """
    train_labels = _as_labels(train_labels)
    leave_one_out = test_features is None
    if leave_one_out:
        test_labels = train_labels
    else:
        test_labels = _as_labels(test_labels)
    if num_classes is None:
        num_classes = int(max(train_labels.max().item(), test_labels.max().item())) + 1
    k_max = max(ks)
    sims, idx = topk_neighbours(test_features if not leave_one_out else train_features,
                                None if leave_one_out else train_features, k_max, exclude_self=leave_one_out,
                                backend=backend, chunk_size=chunk_size, device=device)
    neighbour_labels = train_labels[idx]                                         # [Q, k_max]
    # float32 throughout, as DINO computes it.
    weights = (sims.float() / temperature).exp()
    result = {}
    for k in ks:
        votes = torch.zeros(idx.shape[0], num_classes, dtype=torch.float32)
        votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
        # Class ranking as DINO: sort the summed votes, descending.
        predictions = votes.sort(1, descending=True).indices
        correct = predictions.eq(test_labels[:, None])
        top1 = correct[:, :1].sum().item() / len(test_labels)
        top5 = correct[:, :min(5, k)].sum().item() / len(test_labels)
        result[k] = {"top1": top1, "top5": top5}
    return result


def knn_metrics(train_features, train_labels, eval_features, eval_labels, options, num_classes: int,
                device=None) -> tuple[dict, list[str]]:
    """The kNN record of one feature (``options``: ``probes.options.KnnOptions``), in percent.

    ``top1``/``top5`` at the reported k, and ``top1_k<k>``/``top5_k<k>`` for every k evaluated. Without
    evaluation features the training set is classified leave-one-out. Returns (metrics, notes).
    """
    n_train = len(train_labels) - (1 if eval_features is None else 0)
    scores = knn_classify(train_features, train_labels, eval_features, eval_labels, ks=tuple(options.knn_ks),
                          temperature=options.knn_temperature, num_classes=num_classes, device=device)
    metrics = {"top1": 100 * scores[options.knn_k]["top1"], "top5": 100 * scores[options.knn_k]["top5"]}
    for k in options.knn_ks:
        metrics[f"top1_k{k}"] = 100 * scores[k]["top1"]
        metrics[f"top5_k{k}"] = 100 * scores[k]["top5"]
    notes = [f"k larger than the {n_train} training items uses all of them"] if max(options.knn_ks) > n_train else []
    return metrics, notes


def knn_protocol(options) -> dict:
    """The kNN settings as records carry them (one kNN protocol for every script)."""
    return {"knn_k": options.knn_k, "knn_ks": list(options.knn_ks), "knn_temperature": options.knn_temperature}
