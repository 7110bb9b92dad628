"""The held-out split every command makes the same way: a fixed share of the examples, chosen by seed."""
from __future__ import annotations

import numpy as np


def heldout_split(items: list, n_heldout: int, seed, keep_order: bool = False) -> tuple[list, list]:
    """(rest, heldout): `n_heldout` items chosen by `seed` (numpy's default_rng(seed).permutation, so a
    seed always holds out the same items). keep_order lists both in the items' own order, else in the
    permutation's (a shuffled training order)."""
    order = np.random.default_rng(seed).permutation(len(items))
    held, rest = order[:n_heldout].tolist(), order[n_heldout:].tolist()
    if keep_order:
        held, rest = sorted(held), sorted(rest)
    return [items[i] for i in rest], [items[i] for i in held]
