"""Balanced sampling of the input image against the generated frames (METHOD.md section 6).

The input image is drawn with share ``input_ratio`` of an epoch (the authors: 1:1, i.e. 0.5),
the generated frames share the rest uniformly. ``input_ratio = 0`` turns the oversampling off:
every training frame, the input image included, is then one frame among all.

One global sequence is drawn per epoch from (seed, epoch) and dealt out to the ranks
(``sequence[rank::num_replicas]``), so under DDP each rank gets its own share and the union over
ranks is exactly the single-process sequence (padded to a multiple of the number of ranks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

SEED_EPOCH_STRIDE = 1_000_003  # mixes (seed, epoch) into one generator seed


def _cycled_permutations(pool: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
    """``count`` draws from ``pool``: whole random permutations, the last one cut short.

    Each element appears floor(count/len) or ceil(count/len) times: uniform with no more
    repetition than the count forces.
    """
    out: list[int] = []
    while len(out) < count:
        order = torch.randperm(len(pool), generator=generator).tolist()
        out.extend(pool[i] for i in order[: count - len(out)])
    return out


def balanced_sequence(input_rows: Sequence[int], generated_rows: Sequence[int],
                      input_ratio: float, length: int, seed: int, epoch: int) -> list[int]:
    """One epoch's global sequence of dataset rows (pure function of its arguments).

    ``round(input_ratio * length)`` draws are input rows, the rest generated rows; with
    ``input_ratio == 0`` all rows form one uniform pool. The order is shuffled.
    """
    if not 0.0 <= input_ratio <= 1.0:
        raise ValueError(f"input_ratio must lie in [0, 1], got {input_ratio}")
    if length < 0:
        raise ValueError(f"epoch length must be >= 0, got {length}")
    generator = torch.Generator().manual_seed(seed * SEED_EPOCH_STRIDE + epoch)
    if input_ratio == 0.0:
        pool = list(input_rows) + list(generated_rows)
        if not pool:
            raise ValueError("no frames to sample")
        return _cycled_permutations(pool, length, generator)
    num_input = round(input_ratio * length)
    if num_input and not input_rows:
        raise ValueError("input_ratio > 0 but there is no input frame")
    if length - num_input and not generated_rows:
        raise ValueError("input_ratio < 1 but there are no generated frames")
    draws = _cycled_permutations(list(input_rows), num_input, generator) if num_input else []
    if length - num_input:
        draws += _cycled_permutations(list(generated_rows), length - num_input, generator)
    order = torch.randperm(len(draws), generator=generator).tolist()
    return [draws[i] for i in order]


class BalancedSampler(DistributedSampler):
    """Input image with probability ``input_ratio``, generated frames uniformly otherwise.

    Subclasses DistributedSampler only so that Lightning does not wrap it again under DDP; it
    deals its own global sequence to the ranks. Call ``set_epoch`` (Lightning does) for a new
    sequence each epoch; the same (seed, epoch) always gives the same sequence.
    """

    def __init__(
        self,
        input_rows: Sequence[int],
        generated_rows: Sequence[int],
        input_ratio: float = 0.5,  # share of draws that are the input image (METHOD.md: 1:1)
        epoch_length: int | None = None,  # draws per epoch over all ranks; None = 2 x generated
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and torch.distributed.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.input_rows = list(input_rows)
        self.generated_rows = list(generated_rows)
        self.input_ratio = float(input_ratio)
        self.epoch_length = (2 * len(self.generated_rows) if epoch_length is None
                             else int(epoch_length))
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self.num_samples = -(-self.epoch_length // num_replicas)  # ceil: every rank equal
        self.total_size = self.num_samples * num_replicas
        if self.input_ratio > 0 and not self.input_rows:
            raise ValueError("input_ratio > 0 but there is no input frame")
        if self.input_ratio < 1 and not self.generated_rows and self.input_ratio > 0:
            raise ValueError("input_ratio < 1 but there are no generated frames")
        balanced_sequence(self.input_rows, self.generated_rows, self.input_ratio, 0, seed, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_sequence(self) -> list[int]:
        """This epoch's sequence over all ranks (length ``total_size``)."""
        return balanced_sequence(self.input_rows, self.generated_rows, self.input_ratio,
                                 self.total_size, self.seed, self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_sequence()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
