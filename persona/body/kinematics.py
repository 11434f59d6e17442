"""Kinematic-tree neighbourhoods."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor


def tree_distances(parents: Tensor | list[int] | tuple[int, ...]) -> Tensor:
    """Number of tree edges between every pair of joints [J, J] (BFS from each joint)."""
    parent_list = [int(p) for p in parents]
    count = len(parent_list)
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for child, parent in enumerate(parent_list):
        if parent >= 0:
            neighbours[child].append(parent)
            neighbours[parent].append(child)
    distances = torch.full((count, count), -1, dtype=torch.long)
    for source in range(count):
        distances[source, source] = 0
        queue = deque([source])
        while queue:
            joint = queue.popleft()
            for other in neighbours[joint]:
                if distances[source, other] < 0:
                    distances[source, other] = distances[source, joint] + 1
                    queue.append(other)
    if (distances < 0).any():
        raise ValueError("parents: the joints do not form one tree")
    return distances


def ring_mask(parents: Tensor | list[int] | tuple[int, ...], k: int | None) -> Tensor:
    """[J, J] bool: joint j within k tree steps of joint i (k=None: every joint)."""
    distances = tree_distances(parents)
    if k is None:
        return torch.ones_like(distances, dtype=torch.bool)
    if k < 0:
        raise ValueError(f"ring_mask: k must be >= 0 or None, got {k}")
    return distances <= k
