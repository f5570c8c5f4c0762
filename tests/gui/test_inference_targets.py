"""SLEAP's Inference Target -> frames per video: SLEAP's own window builds the selection.

The selection comes from SLEAP 1.6.6's ``MainWindow._get_frames_for_prediction`` and its
Inference dialog's ``get_selected_frames_to_predict`` on a real project (two real videos,
user-labeled and predicted frames), as Run Inference… would use it.
"""

from __future__ import annotations

import pytest

from sleap_rtc.gui.inference_targets import (
    TargetError,
    count_frames,
    decode_frames,
    frames_per_video,
    inference_options,
    unservable_pipeline_text,
    user_labeled_frames,
)

pytestmark = pytest.mark.sleap

from sleap_projects import N0, N1, make_two_video_project


@pytest.fixture
def win(qtbot, tmp_path, sleap_home):
    from sleap_rtc.gui.sleap_attach import create_window

    w = create_window(str(make_two_video_project(tmp_path)))
    qtbot.addWidget(w)
    yield w
    from sleap_rtc.gui.bridge import _alive

    for dlg in list(w._child_windows.values()):
        if dlg is not None and _alive(dlg):
            dlg.close()


def _selected(win, target: str, *, skip_user: bool = False, sample: int | None = None):
    """What SLEAP's Inference dialog resolves for ``target`` (the user's pick in its dropdown)."""
    win._show_learning_dialog("inference")
    dlg = win._child_windows["inference"]
    dropdown = dlg.frame_target_selector.target_dropdown
    index = dropdown.findData(target)
    assert index >= 0, [dropdown.itemData(i) for i in range(dropdown.count())]
    dropdown.setCurrentIndex(index)
    dlg.frame_target_selector.skip_user_labeled_cb.setChecked(skip_user)
    if sample is not None:
        dlg.frame_target_selector.sample_count_spinbox.setValue(sample)
    form = dlg.pipeline_form_widget.get_form_data()
    assert form["_predict_target"] == target
    return dlg.get_selected_frames_to_predict(form), form


def _translate(win, target: str, **kw):
    selected, form = _selected(win, target, **kw)
    labels = win.labels
    return frames_per_video(selected, labels.videos, target=target,
                            user_labeled=user_labeled_frames(labels.labeled_frames),
                            exclude_user_labeled=form["_exclude_user_labeled"])


async def test_every_sleap_target_becomes_frames_per_video(win):
    win.state["video"] = win.labels.videos[0]
    win.state["frame_idx"] = 5
    assert _translate(win, "frame") == {0: [5]}
    # The whole current video: "every frame" (None), not a list of every index.
    assert _translate(win, "video") == {0: None}
    assert _translate(win, "all_videos") == {0: None, 1: None}
    assert _translate(win, "user_labeled") == {0: [0, 3, 6]}
    # SLEAP's suggestions already leave out the user-labeled ones (6).
    assert _translate(win, "suggestions") == {0: [4]}
    assert _translate(win, "predicted") == {0: [9], 1: [2]}
    random = _translate(win, "random", sample=4)
    assert set(random) == {0, 1} and all(len(v) == 4 and v == sorted(v) for v in random.values())
    assert random[0][-1] < N0 and random[1][-1] < N1


async def test_skip_user_labeled_turns_a_whole_video_into_a_list(win):
    win.state["video"] = win.labels.videos[0]
    assert _translate(win, "video", skip_user=True) == {0: [i for i in range(N0) if i not in (0, 3, 6)]}
    # The second video has no user labels: it stays "every frame".
    assert _translate(win, "all_videos", skip_user=True)[1] is None


async def test_a_selected_clip_is_its_frame_range(win):
    win.state["video"] = win.labels.videos[1]
    win.state["frame_range"] = (2, 5)
    assert _translate(win, "clip") == {1: [2, 3, 4]}
    assert count_frames({1: [2, 3, 4], 0: None}, win.labels.videos) == 3 + N0


def test_sleaps_range_encoding():
    assert decode_frames((0, -10), 10) is None
    assert decode_frames((2, -5), 10) == [2, 3, 4]
    assert decode_frames((0, 0), 10) == []
    assert decode_frames([3, 1, 3, 20], 10) == [1, 3]


def test_a_video_unreadable_here_keeps_sleaps_range():
    class Unreadable:
        def __len__(self):
            raise OSError("cannot open")

    video = Unreadable()
    # SLEAP encoded the range with the length it knew: the frames are that range, minus skips.
    assert frames_per_video({video: (0, -4)}, [video], target="video", user_labeled={video: {1}},
                            exclude_user_labeled=True) == {0: [0, 2, 3]}
    with pytest.raises(TargetError, match="length is unknown"):
        frames_per_video({video: None}, [video], target="video", user_labeled={video: {1}}, exclude_user_labeled=True)


def test_sleaps_inference_options_map_to_sleap_nn_names():
    form = {"_batch_size": 8, "_peak_threshold": 0.3, "_max_instances": None, "trainer_config.trainer_accelerator": "cpu",
            "tracking.tracker": "flow", "tracking.match": "hungarian", "tracking.track_window": 5,
            "tracking.max_tracks": 2, "tracking.post_connect_single_breaks": 1, "tracking.robust": 0.95,
            "tracking.similarity": "iou"}
    assert inference_options(form) == {
        "batch_size": 8, "peak_threshold": 0.3, "tracking": True, "track_matching_method": "hungarian",
        "tracking_window_size": 5, "candidates_method": "local_queues", "max_tracks": 2, "use_flow": True,
        "post_connect_single_breaks": True, "tracking_target_instance_count": 2, "scoring_reduction": "robust_quantile",
        "robust_best_instance": 0.95, "features": "bboxes", "scoring_method": "iou"}
    assert inference_options({"tracking.tracker": "none", "trainer_config.trainer_accelerator": "auto"}) == {}


def test_pipelines_without_models_are_explained():
    assert "retracks" in unservable_pipeline_text("tracking-only")
    assert "movenet-lightning" in unservable_pipeline_text("movenet-lightning")
    assert unservable_pipeline_text("single") == ""
