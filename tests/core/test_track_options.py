"""``core.track_options``: the one table of sleap-nn track options a plan may carry."""

from __future__ import annotations

import pytest

from sleap_rtc.core.track_options import OptionError, check_options, options_argv


def test_known_options_become_flags_and_defaults_are_left_out():
    opts = {"peak_threshold": 0.3, "batch_size": 8, "tracking": True, "use_flow": False, "max_tracks": None,
            "track_matching_method": "greedy"}
    assert check_options(opts) == {"peak_threshold": 0.3, "batch_size": 8, "tracking": True,
                                   "track_matching_method": "greedy"}
    assert options_argv(opts) == ["--peak_threshold", "0.3", "--batch_size", "8", "--tracking",
                                  "--track_matching_method", "greedy"]


@pytest.mark.parametrize("opts, words", [
    ({"hydra.run.dir": "/"}, "Unknown inference option"),
    ({"peak_threshold": 1.5}, "outside 0..1"),
    ({"batch_size": 0}, "outside 1..4096"),
    ({"batch_size": 2.5}, "must be an integer"),
    ({"batch_size": True}, "must be an integer"),
    ({"peak_threshold": float("nan")}, "must be a number"),
    ({"tracking": "yes"}, "true or false"),
    ({"track_matching_method": "--output=/etc/x"}, "must be one of hungarian, greedy"),
    (["peak_threshold"], "must be a mapping"),
])
def test_anything_else_is_refused_with_its_name(opts, words):
    with pytest.raises(OptionError, match=words):
        check_options(opts)


def test_the_overlap_filter_takes_sleaps_method_and_threshold():
    # SLEAP's inference dialog sets all three; sleap-nn 0.3.5 has a flag for each.
    opts = {"filter_overlapping": True, "filter_overlapping_method": "oks", "filter_overlapping_threshold": 0.7}
    assert options_argv(opts) == ["--filter_overlapping", "--filter_overlapping_method", "oks",
                                  "--filter_overlapping_threshold", "0.7"]
    with pytest.raises(OptionError, match="must be one of iou, oks"):
        check_options({"filter_overlapping_method": "area"})
