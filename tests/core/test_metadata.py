"""Metadata merge and discovery-filter semantics of core.metadata."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sleap_rtc.core.metadata import matches_filters, merge_metadata, normalize_metadata

META = {"tags": ["sleap-rtc", "training-worker"], "properties": {"gpu_memory_mb": 24000, "status": "available", "flag": True}}


def test_merge_unions_tags_and_merges_properties():
    merged = merge_metadata(META, {"tags": ["inference-worker", "sleap-rtc"], "properties": {"status": "busy"}})
    assert merged == {"tags": ["sleap-rtc", "training-worker", "inference-worker"], "properties": {"gpu_memory_mb": 24000, "status": "busy", "flag": True}}
    assert merge_metadata(META, "garbage") == {"tags": META["tags"], "properties": META["properties"]}


def test_normalize_drops_bad_shapes():
    assert normalize_metadata({"tags": ["a", 1], "properties": []}) == {"tags": ["a"], "properties": {}}
    assert normalize_metadata(None) == {"tags": [], "properties": {}}


def test_filters():
    assert matches_filters("worker", META, None)
    assert not matches_filters("client", META, {"role": "worker"})
    assert matches_filters("worker", META, {"tags": ["nope", "training-worker"]})
    assert not matches_filters("worker", META, {"tags": ["nope"]})
    assert matches_filters("worker", META, {"properties": {"gpu_memory_mb": {"$gte": 24000, "$lte": 24000}}})
    assert not matches_filters("worker", META, {"properties": {"gpu_memory_mb": {"$gte": 24001}}})
    assert matches_filters("worker", META, {"properties": {"status": {"$eq": "available"}}})
    assert not matches_filters("worker", META, {"properties": {"missing": {"$lte": 5}}})
    assert not matches_filters("worker", META, {"properties": {"status": {"$gte": 5}}})  # str vs number
    assert not matches_filters("worker", META, {"properties": {"flag": {"$gte": 0}}})  # bool is not a number here


@given(st.dictionaries(st.text(max_size=5), st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5), lambda x: st.lists(x, max_size=3) | st.dictionaries(st.text(max_size=4), x, max_size=3), max_leaves=8), max_size=4))
def test_filters_never_raise(filters):
    matches_filters("worker", META, filters)
    matches_filters("worker", META, {"properties": filters})
