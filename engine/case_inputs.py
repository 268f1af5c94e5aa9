"""Which image goes to which input of a multi-input model: by DICOM View Position where the
bundle names the positions an input takes, by the reader's hand otherwise.

The viewer proposes an assignment when a multi-input model meets a set of open images; the
reader sees and can change every choice, and each proposal says how it was made, so that an
image placed only by its order in the list is never mistaken for one matched by its tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.bundle import ModelBundle

BY_VIEW_POSITION = "view position"
BY_ORDER = "order"  # the next image not yet used: a guess for the reader to check


@dataclass(frozen=True)
class Assignment:
    input_name: str
    image: int | None  # index into the images offered; None = nothing left to propose
    how: str  # BY_VIEW_POSITION or BY_ORDER ("" when unassigned)


def propose_inputs(bundle: ModelBundle, view_positions: Sequence[str]) -> list[Assignment]:
    """One proposal per input of ``bundle``, in its input order. ``view_positions``: each
    offered image's View Position ("" for a non-DICOM image or a file without it). An image is
    used at most once; an input matched by no position takes the first unused image, if any."""
    used: set[int] = set()
    chosen: dict[str, Assignment] = {}
    for named in bundle.inputs:
        wanted = set(named.view_positions)
        for index, position in enumerate(view_positions):
            if index not in used and position and position.strip().upper() in wanted:
                chosen[named.name] = Assignment(named.name, index, BY_VIEW_POSITION)
                used.add(index)
                break
    for named in bundle.inputs:
        if named.name in chosen:
            continue
        free = next((i for i in range(len(view_positions)) if i not in used), None)
        if free is not None:
            used.add(free)
        chosen[named.name] = Assignment(named.name, free, BY_ORDER if free is not None else "")
    return [chosen[named.name] for named in bundle.inputs]
