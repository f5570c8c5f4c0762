"""Credentials dialog (banner paste, session strings) and the connect/retry dialog."""

from __future__ import annotations

import asyncio

from qtpy import QtCore

from sleap_rtc.core.credentials import encode_session_string
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.transport_errors import WorkerBusyError
from sleap_rtc.gui.credentials_dialog import CredentialsDialog
from sleap_rtc.gui.job_dialog import JobPanel
from sleap_rtc.gui.remote_run import JobOutcome, JobRequest, RemoteJobController

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


def _request(server, room, phases, worker_id=None):
    return JobRequest(
        package=None, server_url=server.url, room_id=room[0], token=room[1], worker_id=worker_id,
        results_dir=None, phases=phases,
    )


def _busy_once(attempts: list):
    """A job runner whose first attempt is refused busy and whose next one trains; records
    ``(worker_id, exclude)`` of each attempt. Like core, each attempt drives its own phases
    and ends a refused one in FAILED."""

    async def runner(request, events):
        phases = request.phases
        attempts.append((request.worker_id, set(request.exclude)))
        phases.advance(Phase.JOINING)
        phases.advance(Phase.DISCOVERING)
        phases.advance(Phase.SELECTING)
        phases.advance(Phase.RESERVING, request.worker_id or "gpu-b")
        if len(attempts) == 1:
            phases.advance(Phase.FAILED, "busy")
            raise WorkerBusyError("busy", status="busy")
        phases.advance(Phase.CONNECTING)
        phases.advance(Phase.UPLOADING, "100%")
        phases.advance(Phase.TRAINING)
        events.on_progress({"event": "epoch_end", "what": "single_instance", "epoch": 0, "logs": {"train/loss": 1.0}})
        phases.advance(Phase.DOWNLOADING)
        return JobOutcome()

    return runner


async def test_busy_worker_offers_next_best_and_retries(qtbot, signaling_server, room, wait_until):
    """A worker_busy refusal shows why; "Try next best" retries without that worker."""
    attempts = []
    ctl = RemoteJobController(_request(signaling_server, room, JobPhases(), "worker-gpu-a"), _busy_once(attempts))
    qtbot.addWidget(ctl.dialog)
    done = []
    ctl.succeeded.connect(done.append)
    ctl.start()
    await wait_until(lambda: ctl.dialog.problem_box.isVisible(), 3)
    assert "worker-gpu-a is busy" in ctl.dialog.problem_label.text()
    assert ctl.dialog.cancel_button.isVisibleTo(ctl.dialog)  # still cancellable while choosing
    assert ctl.dialog.selection_timer.isActive()
    ctl.dialog.try_next_button.click()
    await wait_until(lambda: done, 3)
    assert attempts == [("worker-gpu-a", set()), (None, {"worker-gpu-a"})]
    assert ctl.phases.phase == Phase.DONE
    assert "Training: epoch 1" in ctl.dialog.step_text(Phase.TRAINING)


async def test_choose_another_waits_for_the_users_pick(qtbot, signaling_server, room, wait_until):
    """"Choose another" does not retry until the user picked a worker that was not refused."""
    attempts = []
    picks: asyncio.Queue = asyncio.Queue()
    asked = []

    async def choose(exclude):
        asked.append(set(exclude))
        return await picks.get()

    ctl = RemoteJobController(_request(signaling_server, room, JobPhases(), "worker-gpu-a"), _busy_once(attempts),
                              choose_worker=choose)
    qtbot.addWidget(ctl.dialog)
    done = []
    ctl.succeeded.connect(done.append)
    ctl.start()
    await wait_until(lambda: ctl.dialog.problem_box.isVisible(), 3)
    ctl.dialog.choose_button.click()
    await wait_until(lambda: asked, 3)
    await asyncio.sleep(0.3)
    assert attempts == [("worker-gpu-a", set())], "retried before the user picked a worker"
    assert "Pick a worker" in ctl.dialog.status_label.text()
    assert asked == [{"worker-gpu-a"}]
    picks.put_nowait("worker-gpu-b")
    await wait_until(lambda: done, 3)
    assert attempts == [("worker-gpu-a", set()), ("worker-gpu-b", {"worker-gpu-a"})]


async def test_cancel_releases_the_worker(qtbot, signaling_server, room, wait_until):
    """Cancel during upload: the runner unwinds and the worker is available again."""
    from sleap_rtc.core.room import RoomView
    from sleap_rtc.core.signaling import SignalingClient

    worker = await start_fake_worker(signaling_server.url, room, "gpu-a")
    watcher = SignalingClient(signaling_server.url, room_id=room[0], token=room[1], role="client")
    await watcher.connect()
    view = RoomView(watcher)
    await view.start()
    phases = JobPhases()

    async def runner(request, events):
        phases.advance(Phase.RESERVING, "gpu-a")
        await worker.update_metadata({"properties": {"status": "reserved"}})
        try:
            phases.advance(Phase.CONNECTING)
            phases.advance(Phase.UPLOADING, "10%")
            await asyncio.sleep(30)
        finally:
            await worker.update_metadata({"properties": {"status": "available"}})
        return JobOutcome()

    ctl = RemoteJobController(_request(signaling_server, room, phases, "worker-gpu-a"), runner)
    qtbot.addWidget(ctl.dialog)
    ended = []
    ctl.ended.connect(ended.append)
    ctl.start()
    try:
        await wait_until(lambda: view.get("worker-gpu-a").status == "reserved", 3)
        ctl.dialog.cancel_button.click()
        await wait_until(lambda: ended == ["cancelled"], 3)
        await wait_until(lambda: view.get("worker-gpu-a").status == "available", 3)
        assert phases.phase == Phase.CANCELLED
        assert "worker was released" in ctl.dialog.status_label.text()
    finally:
        view.close()
        await watcher.close()
        await worker.close()


async def _watched_room(server, room):
    from sleap_rtc.core.room import RoomView
    from sleap_rtc.core.signaling import SignalingClient

    watcher = SignalingClient(server.url, room_id=room[0], token=room[1], role="client")
    await watcher.connect()
    view = RoomView(watcher)
    await view.start()
    return watcher, view


def _refused_first(attempts: list, error: BaseException):
    """A runner whose first attempt raises ``error`` and whose next one finishes."""
    inner = _busy_once(attempts)

    async def runner(request, events):
        if not attempts:
            attempts.append((request.worker_id, set(request.exclude)))
            request.phases.advance(Phase.JOINING)
            request.phases.advance(Phase.FAILED, str(error))
            raise error
        return await inner(request, events)

    return runner


async def test_choose_another_is_a_live_list_in_the_panel(qtbot, signaling_server, room, wait_until):
    """"Choose another…" opens the room's workers in the panel; the pick is the next attempt's worker."""
    a = await start_fake_worker(signaling_server.url, room, "gpu-a")
    b = await start_fake_worker(signaling_server.url, room, "gpu-b", gpu="NVIDIA A100")
    watcher, view = await _watched_room(signaling_server, room)
    attempts = []
    request = _request(signaling_server, room, JobPhases(), "worker-gpu-a")
    request.room = view
    ctl = RemoteJobController(request, _refused_first(attempts, WorkerBusyError("busy", status="busy")))
    qtbot.addWidget(ctl.panel)
    done = []
    ctl.succeeded.connect(done.append)
    try:
        ctl.start()
        await wait_until(lambda: ctl.panel.problem_box.isVisible(), 3)
        assert "gpu-a is busy" in ctl.panel.problem_label.text()
        ctl.panel.choose_button.click()
        await wait_until(lambda: ctl.panel.chooser_box.isVisibleTo(ctl.panel), 3)
        model = ctl.panel.chooser_model
        assert [w.name for w in model.workers] == ["gpu-a", "gpu-b"]
        # the list is live: a third worker shows up while the user looks
        c = await start_fake_worker(signaling_server.url, room, "gpu-c")
        await wait_until(lambda: model.rowCount() == 3, 3)
        ctl.panel.chooser_table.selectRow(model.row_of("worker-gpu-a"))
        assert not ctl.panel.use_button.isEnabled()  # it already refused this job
        ctl.panel.chooser_table.selectRow(model.row_of("worker-gpu-b"))
        assert ctl.panel.use_button.isEnabled()
        ctl.panel.use_button.click()
        await wait_until(lambda: done, 3)
        assert attempts[1][0] == "worker-gpu-b"
        await c.close()
    finally:
        view.close()
        await watcher.close()
        await a.close()
        await b.close()


async def test_wait_for_a_free_worker_takes_the_first_that_frees_up(qtbot, signaling_server, room, wait_until):
    """All busy: "Wait for a free worker" says who is busy since when, then takes the one that frees up."""
    from sleap_rtc.core.selection import AllWorkersBusyError

    a = await start_fake_worker(signaling_server.url, room, "gpu-a", status="busy")
    watcher, view = await _watched_room(signaling_server, room)
    attempts = []
    request = _request(signaling_server, room, JobPhases())
    request.room = view
    ctl = RemoteJobController(request, _refused_first(attempts, AllWorkersBusyError("all busy; pass --wait SECONDS")))
    qtbot.addWidget(ctl.panel)
    done = []
    ctl.succeeded.connect(done.append)
    try:
        ctl.start()
        await wait_until(lambda: ctl.panel.problem_box.isVisible(), 3)
        text = ctl.panel.problem_label.text()
        assert "busy" in text and "gpu-a" in text
        assert "--" not in text  # no command-line flag in the GUI
        assert not ctl.panel.try_next_button.isEnabled()  # nobody to try
        ctl.panel.wait_button.click()
        await wait_until(lambda: "gpu-a: busy since" in ctl.panel.waiting_text(), 3)
        await asyncio.sleep(0.3)
        assert len(attempts) == 1, "retried before a worker was free"
        await a.update_metadata({"properties": {"status": "available"}})
        await wait_until(lambda: done, 3)
        assert attempts[1][0] == "worker-gpu-a"
        assert not ctl.panel.waiting_label.isVisibleTo(ctl.panel)
    finally:
        view.close()
        await watcher.close()
        await a.close()
