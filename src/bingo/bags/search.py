"""Nearest neighbours of L2-normalised features: exact (faiss, chunked) or approximate (any faiss index).

Features are an in-memory array or a memory-mapped `.npy` file (float32 or float16, one row per
image). Rows are read in chunks, so a data set's features never need to be in memory as float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import faiss
import numpy as np
from tqdm import tqdm

EXACT_LIMIT = 200_000  # bags.index=auto searches exactly up to this many images
QUERY_CHUNK = 16384
BASE_CHUNK = 131072
QUANTIZER_EF = 128  # efSearch of an HNSW coarse quantizer


def read_rows(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a contiguous float32 array.

    A memory-mapped file is read with plain file reads, so the pages read do not stay resident in
    this process (its memory stays that of one chunk, not of the whole file).
    """
    if isinstance(features, np.memmap) and features.filename:
        row_bytes = features.dtype.itemsize * features.shape[1]
        with open(features.filename, "rb") as f:
            raw = os.pread(f.fileno(), (stop - start) * row_bytes, features.offset + start * row_bytes)
        rows = np.frombuffer(raw, features.dtype).reshape(stop - start, features.shape[1])
    else:
        rows = features[start:stop]
    return np.ascontiguousarray(rows, dtype=np.float32)


def gpu_count() -> int:
    """GPUs faiss can search on (0 with the faiss-cpu package)."""
    return faiss.get_num_gpus() if hasattr(faiss, "knn_gpu") else 0


def auto_index(count: int, dim: int) -> str:
    """The index `bags.index=auto` picks: exact search on a GPU or when affordable, else `approximate_index`."""
    return "exact" if count <= EXACT_LIMIT or gpu_count() else approximate_index(count, dim)


def approximate_index(count: int, dim: int) -> str:
    """An inverted file sized for `count` images of `dim` dimensions (faiss factory string).

    Images go to their nearest list exactly (a flat quantizer: matrix products, fast on CPU). Above
    256 dimensions, it shortlists candidates by 4-bit product quantisation, then re-ranks the
    shortlist with the full features kept as float16; below, it compares full features directly.
    """
    lists = 2 ** round(math.log2(4 * math.sqrt(count)))
    if dim <= 256:
        return f"IVF{lists},Flat"
    codes = next(m for m in range(dim // 8, 0, -1) if dim % m == 0)
    return f"IVF{lists},PQ{codes}x4fs,Refine(SQfp16)"


def exact_search(features: np.ndarray, queries: np.ndarray, k: int, progress: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of `queries` (Q, D) against all rows of `features` (N, D).

    Returns (similarities (Q, k) float32, ids (Q, k) int64), best first; scans the base in chunks.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    count = len(features)
    knn = _gpu_knn() if gpu_count() else _cpu_knn
    for start in tqdm(range(0, count, BASE_CHUNK), desc="exact search", leave=False, disable=not progress):
        base = read_rows(features, start, min(count, start + BASE_CHUNK))
        sims, ids = knn(queries, base, min(k, len(base)))
        heap.add_result(sims, np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.D, heap.I


def _cpu_knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)


def _gpu_knn() -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """Exact inner-product top-k on the first GPU (faiss tiles queries and base to the GPU's memory)."""
    resources = faiss.StandardGpuResources()

    def knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn_gpu(resources, queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)

    return knn


def build_index(features: np.ndarray, factory: str, train_size: int, seed: int, nprobe: int = 16,
                refine_factor: float = 10.0, progress: bool = False) -> faiss.Index:
    """A trained faiss index (inner product) holding every row of `features`, its search effort set.

    The effort is set before adding, because an HNSW coarse quantizer also routes added vectors.
    """
    count, dim = features.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"faiss cannot build index '{factory}': {str(err).splitlines()[-1]}") from None
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).permutation(count)[:train_size])
        ivf = _inverted_file(index)
        if ivf is not None:  # faiss warns below 39 training images per list; bags.train_size says how many
            ivf.cp.min_points_per_centroid = 1
        index.train(np.ascontiguousarray(features[sample], dtype=np.float32))
    set_search_effort(index, nprobe, refine_factor)
    for start in tqdm(range(0, count, BASE_CHUNK), desc="index", leave=False, disable=not progress):
        index.add(read_rows(features, start, min(count, start + BASE_CHUNK)))
    return index


def set_search_effort(index: faiss.Index, nprobe: int, refine_factor: float) -> None:
    """How many inverted lists an IVF index probes and how large a shortlist Refine re-ranks."""
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = refine_factor
    ivf = _inverted_file(index)
    if ivf is not None:
        ivf.nprobe = nprobe
        _set_quantizer_effort(ivf, nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(nprobe, 16)


def _inverted_file(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index inside a Refine / PCA wrapper, or None."""
    while True:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexIVF):
            return index
        if isinstance(index, faiss.IndexRefine):
            index = index.base_index
        elif isinstance(index, faiss.IndexPreTransform):
            index = index.index
        else:
            return None


def _set_quantizer_effort(ivf: faiss.IndexIVF, nprobe: int) -> None:
    """An HNSW coarse quantizer must search wide enough to find the right lists (at add and at search).

    With faiss's default (efSearch 16), vectors land in the wrong list often enough to cost several
    points of recall at ImageNet scale.
    """
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(QUANTIZER_EF, 2 * nprobe)
