"""Short fingerprints that tie a result to the exact images it came from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pneumonia_cxr.data.discovery import ImageRecord


def records_fingerprint(records: Iterable[ImageRecord], tag: str = "") -> str:
    """Hash of (split, class, file name, size) of every image: cheap, order-independent."""
    digest = hashlib.sha256(tag.encode())
    rows = sorted(
        f"{r.split}/{r.class_name}/{r.path.name}/{r.path.stat().st_size}" for r in records
    )
    for row in rows:
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
