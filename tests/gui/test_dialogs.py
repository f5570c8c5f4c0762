"""Credentials dialog (banner paste, session strings) and the job panel (phases, next / choose / wait)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from qtpy import QtCore

from job_fakes import FakeWorkers, ScriptedChannel
from sleap_rtc.core.credentials import RoomCredentials, encode_session_string
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.retry import Outcome
from sleap_rtc.core.room import RoomView
from sleap_rtc.core.signaling import SignalingClient
from sleap_rtc.gui.credentials_dialog import CredentialsDialog
from sleap_rtc.gui.job_dialog import JobPanel
from sleap_rtc.gui.remote_run import RemoteJobController

from fakes import start_fake_worker

BANNER = """
╭──────────── sleap-rtc worker ────────────╮
│ Worker:  gpu-a (NVIDIA RTX A5000, 24 GB)  │
│ Room ID: 7f3a9c2e                         │
│ Token:   tk_Qx81-zz                       │
│ Status:  available                        │
╰───────────────────────────────────────────╯
"""


def test_banner_paste_fills_both_fields(qtbot):
    dlg = CredentialsDialog()
    qtbot.addWidget(dlg)
    assert not dlg.ok_button.isEnabled()
    dlg.paste_edit.setPlainText(BANNER)
    assert dlg.room_edit.text() == "7f3a9c2e"
    assert dlg.token_edit.text() == "tk_Qx81-zz"
    assert dlg.ok_button.isEnabled()
    creds = dlg.credentials()
    assert (creds.room_id, creds.token) == ("7f3a9c2e", "tk_Qx81-zz")
    assert dlg.target_worker() is None


def test_pasting_a_real_worker_banner_fills_both_fields(qtbot):
    """The exact banner `sleap-rtc worker` prints (session string line included)."""
    from sleap_rtc.worker.app import format_banner

    dlg = CredentialsDialog()
    qtbot.addWidget(dlg)
    dlg.paste_edit.setPlainText(format_banner("4a7f03c2e1b9", "3mQ-x_Z9", "worker-gpu-2-abc123"))
    assert (dlg.room_edit.text(), dlg.token_edit.text()) == ("4a7f03c2e1b9", "3mQ-x_Z9")
    assert dlg.ok_button.isEnabled()


def test_paste_without_token_says_what_is_missing(qtbot):
    dlg = CredentialsDialog()
    qtbot.addWidget(dlg)
    dlg.paste_edit.setPlainText("Room ID: 7f3a9c2e")
    assert "no token" in dlg.paste_status.text()
    assert not dlg.ok_button.isEnabled()


def test_typing_validates_as_you_go(qtbot):
    dlg = CredentialsDialog()
    qtbot.addWidget(dlg)
    qtbot.keyClicks(dlg.room_edit, "room 1")
    qtbot.keyClicks(dlg.token_edit, "tok")
    assert not dlg.ok_button.isEnabled()
    assert "room ID may contain only" in dlg.fields_status.text()
    dlg.room_edit.setText("room1")
    assert dlg.ok_button.isEnabled()


def test_session_string_shows_its_target(qtbot):
    dlg = CredentialsDialog(session_mode=True)
    qtbot.addWidget(dlg)
    dlg.session_edit.setText(encode_session_string("r42", "t42", "worker-gpu-a-1234"))
    assert "worker-gpu-a-1234" in dlg.session_status.text() and "r42" in dlg.session_status.text()
    assert dlg.target_worker() == "worker-gpu-a-1234"
    assert (dlg.room_edit.text(), dlg.token_edit.text()) == ("r42", "t42")
    assert dlg.ok_button.isEnabled()


def test_malformed_session_string_is_rejected_clearly(qtbot):
    dlg = CredentialsDialog(session_mode=True)
    qtbot.addWidget(dlg)
    good = encode_session_string("r42", "t42", "worker-x")
    dlg.session_edit.setText(good[:-9])  # cut short, as a bad copy would
    assert "Invalid session string" in dlg.session_status.text()
    assert dlg.target_worker() is None
    assert not dlg.ok_button.isEnabled()
    dlg.session_edit.setText("sleap-sesion:abc")
    assert "must start with 'sleap-session:'" in dlg.session_status.text()
    dlg.session_edit.setText("")
    assert dlg.session_status.text() == ""


def test_job_panel_shows_each_phase(qtbot):
    phases = JobPhases()
    dlg = JobPanel(phases)
    qtbot.addWidget(dlg)
    dlg.show()
    assert dlg.windowModality() == QtCore.Qt.NonModal
    phases.advance(Phase.JOINING, "room abc")
    assert dlg.step_text(Phase.JOINING) == "▶  Joining the room"  # no "room: room X"
    phases.advance(Phase.DISCOVERING)
    phases.advance(Phase.SELECTING)
    phases.advance(Phase.RESERVING, "gpu-a")
    assert "Reserving gpu-a" in dlg.step_text(Phase.RESERVING)
    assert dlg.worker_label.text() == "Worker: gpu-a"
    phases.advance(Phase.CONNECTING)
    phases.advance(Phase.UPLOADING, "42%")
    assert "Uploading 42%" in dlg.step_text(Phase.UPLOADING)
    assert dlg.progress.value() == 42
    assert dlg.step_text(Phase.CONNECTING).startswith("✔")
    assert not dlg.stop_button.isEnabled()
    phases.advance(Phase.TRAINING, "epoch 3")
    assert "Training: epoch 3" in dlg.step_text(Phase.TRAINING)
    assert dlg.stop_button.isEnabled()
    phases.advance(Phase.PREDICTING)
    phases.advance(Phase.DOWNLOADING, "model.zip")
    assert dlg.step_text(Phase.DOWNLOADING) == "▶  Downloading results"  # no file name overflow
    phases.advance(Phase.DONE)
    assert dlg.close_button.isVisibleTo(dlg) and not dlg.cancel_button.isVisibleTo(dlg)
    assert dlg.status_label.text() == "Finished."
    # consistent end state: every step reached is ticked, none keeps the arrow
    texts = [dlg.steps.item(i).text() for i in range(dlg.steps.count())]
    assert not any(t.startswith("▶") for t in texts), texts
    assert dlg.step_text(Phase.PREDICTING).startswith("✔")
    assert dlg.step_text(Phase.DOWNLOADING).startswith("✔")


def test_cancelled_job_marks_the_step_it_stopped_at(qtbot):
    phases = JobPhases()
    dlg = JobPanel(phases)
    qtbot.addWidget(dlg)
    for phase in (Phase.JOINING, Phase.DISCOVERING, Phase.SELECTING, Phase.RESERVING, Phase.CONNECTING, Phase.UPLOADING):
        phases.advance(phase)
    phases.advance(Phase.TRAINING, "epoch 3")
    phases.advance(Phase.CANCELLED)
    assert dlg.step_text(Phase.TRAINING).startswith("✖")
    assert not any(dlg.steps.item(i).text().startswith("▶") for i in range(dlg.steps.count()))


def test_selection_timeout_warns(qtbot):
    phases = JobPhases()
    dlg = JobPanel(phases, selection_timeout_s=0.05)
    qtbot.addWidget(dlg)
    timed_out = []
    dlg.selection_timed_out.connect(lambda: timed_out.append(True))
    phases.advance(Phase.JOINING)
    phases.advance(Phase.DISCOVERING)
    dlg.show_problem("Worker gpu-a is busy.")
    qtbot.waitUntil(lambda: bool(timed_out), timeout=2000)
    assert "No worker was chosen within" in dlg.timeout_label.text()


@pytest.fixture
async def live_room(signaling_server, room):
    """Two fake workers in the room and a client's live connection and ``RoomView`` on it
    (what the GUI's session holds); yields ``(signaling, view, workers)``."""
    workers = [await start_fake_worker(signaling_server.url, room, name) for name in ("gpu-a", "gpu-b")]
    client = SignalingClient(signaling_server.url, room_id=room[0], token=room[1], role="client")
    await client.connect()
    view = RoomView(client)
    await view.start()
    try:
        yield client, view, workers
    finally:
        view.close()
        await client.close()
        for w in workers:
            await w.close()


def _controller(tmp_path, room, live_room, fake: FakeWorkers, worker_id=None, **kw) -> RemoteJobController:
    client, view, _workers = live_room
    package = tmp_path / "pkg.zip"
    package.write_bytes(b"pkg")
    return RemoteJobController(package, tmp_path / "results", credentials=RoomCredentials(*room), signaling=client,
                               room=view, worker_id=worker_id, connect=fake.connect, **kw)


async def test_busy_worker_offers_next_best_and_retries(qtbot, tmp_path, room, live_room, wait_until):
    """A worker_busy refusal shows why; "Try next best" retries without that worker, on the
    same phases (core's retry table; the GUI only answers its question)."""
    fake = FakeWorkers({"worker-gpu-a": "busy"})
    ctl = _controller(tmp_path, room, live_room, fake, "worker-gpu-a")
    qtbot.addWidget(ctl.dialog)
    phases = ctl.phases
    done, asked = [], []
    ctl.succeeded.connect(done.append)
    ctl.choice_needed.connect(asked.append)
    ctl.start()
    await wait_until(lambda: ctl.dialog.problem_box.isVisible(), 3)
    assert "gpu-a is busy" in ctl.dialog.problem_label.text()
    assert "--" not in ctl.dialog.problem_label.text()
    assert asked[0].outcome == Outcome.BUSY and asked[0].tried == {"worker-gpu-a"}
    assert ctl.dialog.cancel_button.isVisibleTo(ctl.dialog)  # still cancellable while choosing
    assert ctl.dialog.selection_timer.isActive()
    assert ctl.dialog.windowModality() == QtCore.Qt.NonModal  # the main window stays usable
    ctl.dialog.try_next_button.click()
    await wait_until(lambda: done, 5)
    assert fake.attempts == ["worker-gpu-a", "worker-gpu-b"]
    assert ctl.phases is phases and ctl.phases.phase == Phase.DONE
    assert "epoch 1" in ctl.dialog.step_text(Phase.TRAINING)
    assert done[0].peer_id == "worker-gpu-b"


async def test_choose_another_waits_for_the_users_pick(qtbot, tmp_path, room, live_room, wait_until):
    """"Choose another" does not retry until the user picked a worker."""
    fake = FakeWorkers({"worker-gpu-a": "busy"})
    ctl = _controller(tmp_path, room, live_room, fake, "worker-gpu-a")
    qtbot.addWidget(ctl.dialog)
    done = []
    ctl.succeeded.connect(done.append)
    ctl.start()
    await wait_until(lambda: ctl.dialog.problem_box.isVisible(), 3)
    ctl.dialog.choose_button.click()
    await asyncio.sleep(0.3)
    assert fake.attempts == ["worker-gpu-a"], "retried before the user picked a worker"
    assert "Pick a worker" in ctl.dialog.status_label.text()
    assert ctl.dialog.chooser_box.isVisibleTo(ctl.dialog)
    assert ctl.pending is not None
    assert not ctl.choose_worker("worker-nobody")  # not in the room: still waiting
    assert ctl.choose_worker("worker-gpu-b")
    await wait_until(lambda: done, 5)
    assert fake.attempts == ["worker-gpu-a", "worker-gpu-b"]


async def test_wait_for_a_free_worker_takes_the_first_that_frees_up(qtbot, tmp_path, room, live_room, wait_until):
    """Both workers busy: the question says so without flags; "wait" waits on room events
    and runs the job on the first worker whose status turns available."""
    _client, view, workers = live_room
    for w in workers:
        await w.update_metadata({"properties": {"status": "busy"}})
    await wait_until(lambda: not view.available(), 3)
    fake = FakeWorkers()
    ctl = _controller(tmp_path, room, live_room, fake)
    qtbot.addWidget(ctl.dialog)
    done, waits = [], []
    ctl.succeeded.connect(done.append)
    ctl.waiting.connect(waits.append)
    ctl.start()
    await wait_until(lambda: ctl.pending is not None, 3)
    assert ctl.pending.outcome == Outcome.NONE_FREE
    assert "No worker is free right now (2 busy)" in ctl.dialog.problem_label.text()
    ctl.wait_for_free(10)
    await wait_until(lambda: ctl.phases.phase == Phase.WAITING, 3)
    assert {b.peer_id for b in waits[-1].busy} == {"worker-gpu-a", "worker-gpu-b"}
    await workers[1].update_metadata({"properties": {"status": "available"}})
    await wait_until(lambda: done, 5)
    assert fake.attempts == ["worker-gpu-b"]


async def test_cancel_releases_the_worker(qtbot, tmp_path, room, live_room, wait_until):
    """Cancel mid-job: the job is cancelled on the worker, which is available again."""
    _client, view, workers = live_room

    async def reserve_until_cancelled(ch: ScriptedChannel) -> None:
        await workers[0].update_metadata({"properties": {"status": "reserved"}})
        try:
            await ch.accept()
            await ch.cancelled.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(workers[0].update_metadata({"properties": {"status": "available"}}))

    fake = FakeWorkers({"worker-gpu-a": reserve_until_cancelled})
    ctl = _controller(tmp_path, room, live_room, fake, "worker-gpu-a")
    qtbot.addWidget(ctl.dialog)
    ended = []
    ctl.ended.connect(ended.append)
    ctl.start()
    await wait_until(lambda: view.get("worker-gpu-a").status == "reserved", 3)
    await wait_until(lambda: ctl.phases.phase == Phase.TRAINING, 3)
    ctl.dialog.cancel_button.click()
    await wait_until(lambda: ended == ["cancelled"], 3)
    await wait_until(lambda: view.get("worker-gpu-a").status == "available", 3)
    assert fake.channels[0].cancelled.is_set()
    assert ctl.phases.phase == Phase.CANCELLED
    assert "worker was released" in ctl.dialog.status_label.text()


async def test_choose_another_is_a_live_list_in_the_panel(qtbot, tmp_path, signaling_server, room, live_room, wait_until):
    """"Choose another…" lists the room's workers in the panel, live; the pick runs the job."""
    fake = FakeWorkers({"worker-gpu-a": "busy"})
    ctl = _controller(tmp_path, room, live_room, fake, "worker-gpu-a")
    panel = ctl.panel
    qtbot.addWidget(panel)
    done = []
    ctl.succeeded.connect(done.append)
    ctl.start()
    await wait_until(lambda: panel.problem_box.isVisible(), 3)
    panel.choose_button.click()
    model = panel.chooser_model
    await wait_until(lambda: model.rowCount() == 2, 3)
    extra = await start_fake_worker(signaling_server.url, room, "gpu-c")  # appears while the user looks
    try:
        await wait_until(lambda: model.rowCount() == 3, 3)
        panel.chooser_table.selectRow(model.row_of("worker-gpu-a"))
        assert not panel.use_button.isEnabled()  # it already refused this job
        panel.chooser_table.selectRow(model.row_of("worker-gpu-c"))
        assert panel.use_button.isEnabled()
        panel.use_button.click()
        await wait_until(lambda: done, 5)
        assert fake.attempts == ["worker-gpu-a", "worker-gpu-c"]
        assert not panel.chooser_box.isVisibleTo(panel)
    finally:
        await extra.close()


async def test_wait_button_shows_who_is_busy_since_when(qtbot, tmp_path, room, live_room, wait_until):
    """All busy: the panel's "Wait for a free worker" lists the busy workers, then the first
    one that frees up takes the job."""
    _client, view, workers = live_room
    for w in workers:
        await w.update_metadata({"properties": {"status": "busy"}})
    await wait_until(lambda: not view.available(), 3)
    fake = FakeWorkers()
    ctl = _controller(tmp_path, room, live_room, fake)
    panel = ctl.panel
    qtbot.addWidget(panel)
    done = []
    ctl.succeeded.connect(done.append)
    ctl.start()
    await wait_until(lambda: panel.problem_box.isVisible(), 3)
    assert not panel.try_next_button.isEnabled()  # nobody to try
    panel.wait_button.click()
    await wait_until(lambda: "gpu-a: busy" in panel.waiting_text() and "gpu-b: busy" in panel.waiting_text(), 3)
    assert "Choosing a worker" in panel.step_text(Phase.SELECTING)
    await asyncio.sleep(0.2)
    assert fake.attempts == [], "ran before a worker was free"
    await workers[0].update_metadata({"properties": {"status": "available"}})
    await wait_until(lambda: done, 5)
    assert fake.attempts == ["worker-gpu-a"]
    assert not panel.waiting_label.isVisibleTo(panel)
