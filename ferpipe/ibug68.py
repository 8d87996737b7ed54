"""The iBUG 300-W 68-point scheme's mirror partners (numpy only: the synthetic renderer, the
priors conventions and the trainer's fixtures share one table).

Point 36 is the outer corner of the image-left eye; after a horizontal flip the same facial
point is the mirror of point 45. ``FLIP[i]`` is the partner of point ``i`` (itself on the
midline: nose bridge, nose tip, chin, lip centres).
"""

from __future__ import annotations

import numpy as np

NUM_POINTS = 68

FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),  # jaw
    *((17 + i, 26 - i) for i in range(5)),  # brows
    (31, 35), (32, 34),  # nose base
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # eyes
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),  # outer lip
    (60, 64), (61, 63), (65, 67),  # inner lip
)


def _flip() -> np.ndarray:
    perm = np.arange(NUM_POINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    perm.setflags(write=False)
    return perm


#: ``flipped[i] = mirrored[FLIP[i]]``: the mirror partner of every point.
FLIP = _flip()
