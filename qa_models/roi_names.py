"""The ROI-name vocabulary: how a structure's free-text name maps to an organ, in one place.

The volume screen takes its plausible range from here and the SR its coded finding site, so a name
the screens recognise is also one the SR codes, and a new organ is added once. (Codes are named by
their keyword: the node's configuration reads this module without importing pydicom.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass



@dataclass(frozen=True)
class Organ:
    pattern: str      # regular expression searched in the normalised name
    site: str         # keyword of the finding site's SNOMED CT code in pydicom's `codes.SCT`
    min_ml: float     # plausible volume range of an adult's organ
    max_ml: float
    placement: str = ""  # MIDLINE or LATERAL across the body, for the position screen; "": not checked


MIDLINE, LATERAL = "midline", "lateral"

ORGANS = (
    Organ(r"prostate", "Prostate", 8, 200, MIDLINE),
    Organ(r"bladder", "Bladder", 20, 1200, MIDLINE),
    Organ(r"rectum", "Rectum", 5, 300, MIDLINE),
    Organ(r"femo|femur", "FemoralHead", 10, 600, LATERAL),
)

_LEFT, _RIGHT = re.compile(r"(^|_)(l|left|lt)($|_)"), re.compile(r"(^|_)(r|right|rt)($|_)")


def normalised_name(name: str) -> str:
    """Lower case, every run of other characters one underscore: 'Femur (L)' -> 'femur_l'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def organ_of(roi_name: str) -> Organ | None:
    """The organ a ROI name names, or None when the vocabulary does not know it."""
    name = normalised_name(roi_name)
    return next((organ for organ in ORGANS if re.search(organ.pattern, name)), None)


def laterality_of(roi_name: str) -> str | None:
    """"Left" or "Right" when the name says so ('_l', 'left', 'rt' ...), else None."""
    name = normalised_name(roi_name)
    return "Left" if _LEFT.search(name) else "Right" if _RIGHT.search(name) else None
