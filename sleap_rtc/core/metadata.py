"""Peer metadata semantics shared by the server and the peers: merging and filters.

Metadata is ``{"tags": [...], "properties": {...}}``. An update merges tags as a union and
properties shallowly. Discovery filters are ``{role, tags, properties}``: ``role`` exact,
``tags`` match when any tag overlaps, ``properties`` map a key to a value (equality) or to
``{"$gte"|"$lte"|"$eq": value}``. A missing property or a comparison between values of
different kinds fails the match; it never raises.

The server checks the shape and size of every peer's metadata (``check_metadata``) at
register and after each update: property values are scalars (string, finite number,
boolean, null) or flat lists of scalars, tags are strings, and the whole object encodes to
at most ``MAX_METADATA_BYTES``. That keeps every ``peer_list`` encodable and bounded.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

from sleap_rtc.core.protocol import MAX_METADATA_BYTES, ErrorCode, ProtocolError

RANGE_OPERATORS = ("$gte", "$lte", "$eq")

MAX_LIST_ITEMS = 64
"""Longest list accepted as one property value (e.g. ``supported_job_types``)."""


def _scalar(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    return isinstance(value, float) and math.isfinite(value)


def check_metadata(metadata: dict[str, Any], *, max_bytes: int = MAX_METADATA_BYTES) -> int:
    """Refuse metadata of the wrong shape or size; returns its encoded size in bytes.

    ``metadata`` is a normalized object (see ``normalize_metadata``). Raises
    ``ProtocolError`` with ``INVALID_METADATA`` (shape, non-finite numbers) or
    ``METADATA_TOO_LARGE``.
    """
    for key, value in metadata.get("properties", {}).items():
        if not isinstance(key, str):
            raise ProtocolError(ErrorCode.INVALID_METADATA, "Metadata property names must be strings.")
        if isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS or not all(_scalar(v) for v in value):
                raise ProtocolError(
                    ErrorCode.INVALID_METADATA,
                    f"Property {key[:64]!r}: a list value holds at most {MAX_LIST_ITEMS} scalars (no nesting).",
                )
        elif not _scalar(value):
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                f"Property {key[:64]!r} must be a string, a finite number, a boolean, null or a flat list of those.",
            )
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode("utf-8", "surrogatepass"))
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_METADATA, "Metadata cannot be encoded as JSON.") from None
    if size > max_bytes:
        raise ProtocolError(ErrorCode.METADATA_TOO_LARGE, f"Metadata is {size} bytes encoded; the limit is {max_bytes}.")
    return size


def empty_metadata() -> dict[str, Any]:
    """Metadata of a peer that registered without any."""
    return {"tags": [], "properties": {}}


def normalize_metadata(metadata: Any) -> dict[str, Any]:
    """Coerce whatever a peer sent into ``{"tags": [str], "properties": {str: value}}``."""
    if not isinstance(metadata, dict):
        return empty_metadata()
    tags = metadata.get("tags", [])
    props = metadata.get("properties", {})
    return {
        "tags": [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
        "properties": dict(props) if isinstance(props, dict) else {},
    }


def merge_metadata(current: dict[str, Any], partial: Any) -> dict[str, Any]:
    """The metadata after an ``update_metadata``: tags union (order kept), properties merged."""
    update = normalize_metadata(partial)
    tags = list(current.get("tags", []))
    tags += [t for t in update["tags"] if t not in tags]
    return {"tags": tags, "properties": {**current.get("properties", {}), **update["properties"]}}


def _comparable(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return True
    return type(a) is type(b) and isinstance(a, str)


def property_matches(value: Any, condition: Any, present: bool = True) -> bool:
    """Whether one property value satisfies one filter condition."""
    if isinstance(condition, dict) and condition and set(condition) <= set(RANGE_OPERATORS):
        if not present:
            return False
        for op, bound in condition.items():
            if op == "$eq":
                if value != bound:
                    return False
                continue
            if not _comparable(value, bound):
                return False
            if op == "$gte" and not value >= bound:
                return False
            if op == "$lte" and not value <= bound:
                return False
        return True
    return present and value == condition


def matches_filters(role: str, metadata: dict[str, Any], filters: Any) -> bool:
    """Whether a peer (role + metadata) passes ``discover_peers`` filters."""
    if not isinstance(filters, dict):
        return True
    want_role = filters.get("role")
    if want_role is not None and want_role != role:
        return False
    want_tags = filters.get("tags")
    if isinstance(want_tags, list) and want_tags:
        if not set(t for t in want_tags if isinstance(t, str)) & set(metadata.get("tags", [])):
            return False
    want_props = filters.get("properties")
    if isinstance(want_props, dict):
        props = metadata.get("properties", {})
        for key, condition in want_props.items():
            if not property_matches(props.get(key), condition, key in props):
                return False
    return True
