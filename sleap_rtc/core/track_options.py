"""The ``sleap-nn track`` options a remote inference may set, and their checks.

One table (``TRACK_OPTIONS``): option name -> the sleap-nn 0.3.5 flag, its kind and its
bounds (numbers) or allowed words. The client builds an options mapping from SLEAP's
inference settings or the CLI flags; ``check_options`` refuses anything not in the table
or out of bounds (the worker runs it again on what arrives: the plan is hostile input), and
``options_argv`` turns a checked mapping into argv words. Nothing from a package ever
becomes a flag that is not in this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """An inference option is unknown or out of its bounds; the message names it."""


@dataclass(frozen=True)
class TrackOption:
    """One option: its flag, kind (``bool``, ``int``, ``float``, ``choice``) and bounds."""

    flag: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""


TRACK_OPTIONS: dict[str, TrackOption] = {
    "peak_threshold": TrackOption("--peak_threshold", "float", 0.0, 1.0, help="Minimum confidence map value of a peak."),
    "batch_size": TrackOption("--batch_size", "int", 1, 4096, help="Frames predicted at a time."),
    "max_instances": TrackOption("--max_instances", "int", 1, 1000, help="Most instances per frame."),
    "integral_refinement": TrackOption("--integral_refinement", "choice", choices=("integral", "none"),
                                       help="Peak refinement."),
    "filter_overlapping": TrackOption("--filter_overlapping", "bool", help="Remove overlapping instances (NMS)."),
    "filter_overlapping_method": TrackOption("--filter_overlapping_method", "choice", choices=("iou", "oks"),
                                             help="Similarity of two instances for that filter."),
    "filter_overlapping_threshold": TrackOption("--filter_overlapping_threshold", "float", 0.0, 1.0,
                                                help="Similarity above which the weaker instance is removed."),
    "tracking": TrackOption("--tracking", "bool", help="Run the tracker on the predictions."),
    "tracking_window_size": TrackOption("--tracking_window_size", "int", 1, 10000, help="Frames of candidates."),
    "candidates_method": TrackOption("--candidates_method", "choice", choices=("fixed_window", "local_queues")),
    "features": TrackOption("--features", "choice", choices=("keypoints", "centroids", "bboxes", "image")),
    "scoring_method": TrackOption("--scoring_method", "choice",
                                  choices=("oks", "cosine_sim", "euclidean_dist", "iou")),
    "scoring_reduction": TrackOption("--scoring_reduction", "choice", choices=("mean", "max", "robust_quantile")),
    "track_matching_method": TrackOption("--track_matching_method", "choice", choices=("hungarian", "greedy")),
    "max_tracks": TrackOption("--max_tracks", "int", 1, 1000, help="Most tracks created (local queues)."),
    "min_new_track_points": TrackOption("--min_new_track_points", "int", 0, 1000),
    "min_match_points": TrackOption("--min_match_points", "int", 0, 1000),
    "use_flow": TrackOption("--use_flow", "bool", help="Optical-flow shift tracker."),
    "post_connect_single_breaks": TrackOption("--post_connect_single_breaks", "bool"),
    "tracking_target_instance_count": TrackOption("--tracking_target_instance_count", "int", 0, 1000),
    "tracking_clean_instance_count": TrackOption("--tracking_clean_instance_count", "int", 0, 1000),
}
"""Every option a remote inference may pass to ``sleap-nn track`` (sleap-nn 0.3.5 names)."""


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options as a plain dict, each checked against ``TRACK_OPTIONS`` (``OptionError``).

    ``None`` values and ``False`` flags are dropped (sleap-nn's defaults apply).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise OptionError("Inference options must be a mapping of option name to value.")
    out: dict[str, Any] = {}
    for name, value in options.items():
        spec = TRACK_OPTIONS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise OptionError(f"Unknown inference option {str(name)[:64]!r}; known: {', '.join(TRACK_OPTIONS)}.")
        if value is None:
            continue
        if spec.kind == "bool":
            if not isinstance(value, bool):
                raise OptionError(f"Inference option {name} must be true or false.")
            if value:
                out[name] = True
            continue
        if spec.kind == "choice":
            if value not in spec.choices:
                raise OptionError(f"Inference option {name} must be one of {', '.join(spec.choices)}.")
            out[name] = value
            continue
        number_types = (int,) if spec.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types) or value != value:
            raise OptionError(f"Inference option {name} must be a{'n integer' if spec.kind == 'int' else ' number'}.")
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            raise OptionError(f"Inference option {name}={value} is outside {spec.low:g}..{spec.high:g}.")
        out[name] = value
    return out


def options_argv(options: Mapping[str, Any] | None) -> list[str]:
    """``sleap-nn track`` argv words for ``options`` (checked here again)."""
    argv: list[str] = []
    for name, value in check_options(options).items():
        spec = TRACK_OPTIONS[name]
        if spec.kind == "bool":
            argv.append(spec.flag)
        else:
            argv += [spec.flag, str(value)]
    return argv


__all__ = ["OptionError", "TRACK_OPTIONS", "TrackOption", "check_options", "options_argv"]
