"""Seeded choice of the k normal reference images of the few-shot setting.

``sample_references(train_records, shots, seed)`` with the default ``sampler="fade"`` picks exactly the images
FADE's reference loader picks (``utils/image_model.py`` of github.com/BMVC-FADE/BMVC-FADE; the book's Methods
chapter, book/methods.md, "Details the papers do not state"): FADE iterates a shuffled ``DataLoader(batch_size=1)`` over
the class's train list once, then calls ``torch.manual_seed(seed)`` and takes the first ``shots`` images of a
fresh iteration. Creating that iterator consumes one int64 draw of the global generator (its base seed) before
the ``RandomSampler`` draws the seed of its own generator and shuffles with ``randperm``. Replayed here on a
private ``torch.Generator`` seeded like the global one, so the caller's global RNG state is never touched:

    g = Generator().manual_seed(seed); discard one int64 draw; s2 = next int64 draw
    perm = randperm(n, generator=Generator().manual_seed(s2)); references = pool[perm[:shots]]

The pool is the class's train list in FADE's dataset order: sorted by path for the folder layouts (FADE sorts
its glob), and csv order for VisA (FADE keeps the rows of ``split_csv/1cls.csv`` in file order, which is not
sorted; ``ImageRecord.source_order`` carries it). The order of ``train_records`` as passed does not matter.

``sampler="numpy"``: ``np.random.default_rng(seed).choice(n, shots, replace=False)`` on the same pool.
Both are without replacement and return the references in the order drawn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .records import DatasetError, ImageRecord

__all__ = ["sample_references", "SAMPLERS", "reference_pool"]

SAMPLERS = ("fade", "numpy")


def _pool_key(r: ImageRecord):
    # records with a dataset listing order (VisA csv rows) come in that order; the others by path
    return (r.source_order is None, r.source_order if r.source_order is not None else 0, str(r.path))


def reference_pool(train_records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Return the list the samplers index into: FADE's dataset order (see the module docstring).

    Parameters
    ----------
    train_records : sequence of ImageRecord
        The class's train records, in any order.

    Returns
    -------
    list of ImageRecord
        Records with a ``source_order`` first, in that order, then the others sorted by path.
    """
    return sorted(train_records, key=_pool_key)


def _fade_permutation(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base seed
    s2 = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())  # RandomSampler's seed
    return torch.randperm(n, generator=torch.Generator().manual_seed(s2)).tolist()


def sample_references(
    train_records: Sequence[ImageRecord],
    shots: int,
    seed: int,
    *,
    sampler: str = "fade",
) -> list[ImageRecord]:
    """Pick ``shots`` distinct normal reference images of one class, deterministically from ``seed``.

    Parameters
    ----------
    train_records : sequence of ImageRecord
        The class's normal train records (order does not matter: see :func:`reference_pool`).
    shots : int
        Number of references, >= 1.
    seed : int
        Seed of the draw.
    sampler : {"fade", "numpy"}, default "fade"
        FADE's reference loader replayed, or ``numpy.random.default_rng(seed).choice`` (module docstring).

    Returns
    -------
    list of ImageRecord
        The references, in the order drawn.

    Raises
    ------
    DatasetError
        If the records are empty, of mixed classes, include anomalous images or duplicate paths, or if ``shots``
        exceeds their number.
    ValueError
        For ``shots < 1``, a non-int seed or an unknown sampler.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    records = list(train_records)
    if not records:
        raise DatasetError("no train records to sample references from")
    classes = sorted({r.cls for r in records})
    if len(classes) > 1:
        raise DatasetError(f"reference records must be of one class, got {len(classes)}: {', '.join(classes)}")
    anomalous = [r for r in records if r.label != 0]
    if anomalous:
        raise DatasetError(f"reference records must be normal; {anomalous[0].path} has label {anomalous[0].label}")
    if len({str(r.path) for r in records}) != len(records):
        raise DatasetError(f"duplicate records in the reference pool of class {classes[0]!r}")
    n = len(records)
    if shots > n:
        raise DatasetError(f"class {classes[0]!r}: {shots} shots requested but only {n} train images available")
    pool = reference_pool(records)
    if sampler == "fade":
        index = _fade_permutation(n, int(seed))[: int(shots)]
    else:
        index = np.random.default_rng(int(seed)).choice(n, int(shots), replace=False).tolist()
    return [pool[i] for i in index]
