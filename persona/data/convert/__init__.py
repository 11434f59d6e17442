"""Benchmark converters: X-Humans and NeuMan into subject folders (docs/BENCHMARKS.md).

`persona convert xhumans SRC --out DIR` and `persona convert neuman SRC --out DIR` write the
input image (frame 0 of ``captured``) and the test split with the dataset's cameras, SMPL-X
parameters and masks, in the layout of docs/SUBJECT_FORMAT.md; `persona prep` adds the rest.
"""

from persona.data.convert.common import ConvertedSubject, Frame, write_subject
from persona.data.convert.neuman import convert_neuman
from persona.data.convert.xhumans import convert_xhumans

__all__ = ["ConvertedSubject", "Frame", "convert_neuman", "convert_xhumans", "write_subject"]
