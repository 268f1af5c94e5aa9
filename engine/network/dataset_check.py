"""Can Lantern read what it is sent? The transfer syntaxes it can decode, and whether a received
data set is well formed: pydicom reads leniently, an element whose declared length runs past
the end of the data is read short, and bytes after the last element become an odd private
element, with at most a warning. A listener that stored such a data set would only
learn it was broken when the batch failed on it later; this walk over the top-level elements
finds it while the sender is still waiting for the answer, so it can be told "cannot understand".
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pydicom.valuerep import VR
from pynetdicom import ALL_TRANSFER_SYNTAXES

_UNDEFINED_LENGTH = 0xFFFFFFFF
_KNOWN_VRS = frozenset(VR.__members__)
_READ_UP_TO = 4096  # larger values are skipped over (seek), not copied: the pixel data


def structure_problem(stream: bytes, transfer_syntax: str) -> str | None:
    """Plain words for what is wrong with the encoded data set ``stream`` (top level: a broken
    sequence shows as a top-level element whose length is wrong), None when it is well formed."""
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        try:
            stream = zlib.decompress(stream, -zlib.MAX_WBITS)
        except zlib.error as exc:
            return f"its deflated data cannot be inflated ({exc})"
    fp = BytesIO(stream)
    end = 0
    try:
        for element in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian,
                                              defer_size=_READ_UP_TO):
            if isinstance(element, RawDataElement):
                if not syntax.is_implicit_VR and element.VR is not None and element.VR not in _KNOWN_VRS:
                    return f"element {element.tag} has the unknown value representation {element.VR!r}"
                if (element.length != _UNDEFINED_LENGTH and element.value is not None
                        and len(element.value) != element.length):
                    return f"element {element.tag} says it holds {element.length} bytes but the data ends first"
            end = fp.tell()
    except Exception as exc:  # the generator raises on what it cannot step over
        return f"it cannot be read ({type(exc).__name__}: {exc})"
    if end > len(stream):
        return f"its last element runs {end - len(stream)} bytes past the end of the data"
    if end < len(stream):
        return f"{len(stream) - end} bytes after its last element are not a data element"
    return None


def read_through(ds: Dataset) -> None:
    """Parse every element (pydicom defers it until first use), so a data set that cannot be
    understood is refused now rather than stored and failing in the batch later."""
    for _element in ds.iterall():
        pass


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixels this installation can decode: offering others would
    accept images that Lantern then cannot show."""
    usable = []
    for uid in ALL_TRANSFER_SYNTAXES:
        try:
            if get_decoder(UID(uid)).is_available:
                usable.append(uid)
        except NotImplementedError:  # pydicom has no decoder for it at all (video, JPEG XL...)
            continue
    return usable
