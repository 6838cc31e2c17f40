"""The VRs of medverify's own private blocks, for the MAC stream: a tool that read such a block from Implicit VR
without a dictionary for it (DCMTK) writes its elements as UN, but their bytes are still the values that were
signed, and with the VRs they were signed with they hash as they did."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = ["known_private_vr", "register_private_block"]

#: creator -> element offset -> VR (:func:`register_private_block`).
_KNOWN_PRIVATE: dict[str, dict[int, str]] = {}


def register_private_block(creator: str, vrs: dict[int, str]) -> None:
    """Make the VRs of a private block of medverify's own known to the MAC stream."""
    _KNOWN_PRIVATE[creator] = dict(vrs)


def known_private_vr(ds: Dataset, tag: int) -> str | None:
    """The VR of a private element of a block registered with :func:`register_private_block`, or None."""
    group, element = tag >> 16, tag & 0xFFFF
    if not group % 2 or element < 0x1000 or not _KNOWN_PRIVATE:
        return None
    creator = ds.get_item(BaseTag((group << 16) | (element >> 8)))
    value = creator.value if creator is not None else None
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
    vrs = _KNOWN_PRIVATE.get(text.strip(" \x00"))
    return vrs.get(element & 0xFF) if vrs is not None else None
