"""The client commands' option validation: every bad combination, its exact message, exit
code 2, and no network traffic (any connect attempt would fail the test)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from sleap_rtc.cli import main
from sleap_rtc.client import cli as client_cli
from sleap_rtc.client.options import OptionsError, SelectionMode, plan_connection
from sleap_rtc.core.credentials import encode_session_string

SESSION = encode_session_string("room1", "tok1", "worker-gpu-abc")

NEITHER = (
    "No connection given. Connect in one of two ways:\n"
    "  --room-id ROOM --token TOKEN   join a room and choose a worker (both are printed by the worker)\n"
    "  --session-string STRING        connect straight to the worker that printed it"
)

CASES = [
    ([], NEITHER),
    (["--session-string", SESSION, "--room-id", "r"], "--session-string cannot be combined with --room-id or --token: the session string already contains the room credentials. Use either --session-string, or --room-id and --token."),
    (["--session-string", SESSION, "--token", "t"], "--session-string cannot be combined with --room-id or --token: the session string already contains the room credentials. Use either --session-string, or --room-id and --token."),
    (["--room-id", "r"], "--room-id needs --token as well (the worker prints both)."),
    (["--token", "t"], "--token needs --room-id as well (the worker prints both)."),
    (["--auto-select"], "--auto-select choose a worker in a room: add --room-id and --token."),
    (["--worker-id", "w"], "--worker-id choose a worker in a room: add --room-id and --token."),
    (["--room-id", "r", "--token", "t", "--auto-select", "--worker-id", "w"], "--worker-id and --auto-select cannot be used together: choose a worker yourself with --worker-id, or let sleap-rtc pick one with --auto-select."),
    (["--session-string", SESSION, "--auto-select"], "--auto-select cannot be used with --session-string: a session string already names its worker. To choose a worker, use --room-id and --token instead."),
    (["--session-string", SESSION, "--worker-id", "w", "--min-gpu-memory", "8000"], "--worker-id and --min-gpu-memory cannot be used with --session-string: a session string already names its worker. To choose a worker, use --room-id and --token instead."),
    (["--session-string", "sleap-session:!!"], "Invalid session string: it contains characters that are not URL-safe base64."),
    (["--room-id", "r", "--token", "t"], "Interactive worker selection needs a terminal, but stdin is not one. Pass --auto-select to pick the best available worker, or --worker-id ID to choose one."),
    (["--room-id", "r", "--token", "t", "--auto-select", "--min-gpu-memory", "-1"], "--min-gpu-memory must be zero or more (megabytes)."),
]


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any socket connect, and on any attempt to start the job."""

    def refuse(*args, **kwargs):
        raise AssertionError("network traffic during validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(client_cli, "_run", refuse)


@pytest.fixture
def package(tmp_path):
    pkg = tmp_path / "pkg.zip"
    pkg.write_bytes(b"PK")
    return pkg


def usage_message(output: str) -> str:
    """The text after click's 'Error: ' line prefix (one or more lines)."""
    return output.split("Error: ", 1)[1].rstrip("\n")


@pytest.mark.parametrize("command", ["client-train", "train"])
@pytest.mark.parametrize("args,message", CASES)
def test_train_validation(no_network, package, command, args, message):
    result = CliRunner().invoke(main, [command, str(package), "--server", "ws://127.0.0.1:9", *args])
    assert result.exit_code == 2, result.output
    assert usage_message(result.output) == message


def inputs(tmp_path, name: str) -> tuple:
    """A data file ``name`` and a model folder (neither is read during validation)."""
    data = tmp_path / name
    data.write_bytes(b"x")
    model = tmp_path / "m"
    model.mkdir()
    (model / "best.ckpt").write_bytes(b"x")
    return data, model


@pytest.mark.parametrize("args,message", CASES[:4])
def test_track_validation(no_network, tmp_path, args, message):
    data, model = inputs(tmp_path, "d.slp")
    result = CliRunner().invoke(main, ["track", str(data), "-m", str(model), *args])
    assert result.exit_code == 2, result.output
    assert usage_message(result.output) == message


def test_rollback_switch_disables_rooms_but_not_session_strings(no_network, package, monkeypatch):
    monkeypatch.setenv("SLEAP_RTC_DISABLE_ROOMS", "1")
    result = CliRunner().invoke(main, ["train", str(package), "--room-id", "r", "--token", "t", "--auto-select"])
    assert result.exit_code == 2
    assert usage_message(result.output) == (
        "Room-based worker discovery is disabled (SLEAP_RTC_DISABLE_ROOMS is set). "
        "Connect with --session-string instead, or unset SLEAP_RTC_DISABLE_ROOMS."
    )
    plan = plan_connection(session_string=SESSION)
    assert (plan.mode, plan.room_id, plan.token, plan.worker_id) == (SelectionMode.SESSION, "room1", "tok1", "worker-gpu-abc")


def test_missing_package_is_a_usage_error(no_network, tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "nope.zip"), "--session-string", SESSION])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_valid_plans():
    assert plan_connection(room_id="r", token="t", auto_select=True, min_gpu_memory_mb=8000, wait=5).mode == SelectionMode.AUTO
    direct = plan_connection(room_id="r", token="t", worker_id="w", stdin_is_tty=False)
    assert (direct.mode, direct.worker_id) == (SelectionMode.DIRECT, "w")
    assert plan_connection(room_id="r", token="t", stdin_is_tty=True).mode == SelectionMode.INTERACTIVE
    with pytest.raises(OptionsError):
        plan_connection(room_id="r", token="t", auto_select=True, selection_timeout=0)


def test_valid_options_reach_the_runner(monkeypatch, package, tmp_path):
    calls = []

    async def fake_run(plan, url, pkg, output, kind):
        calls.append((plan.mode, url, pkg, output, kind))
        return 0

    monkeypatch.setattr(client_cli, "_run", fake_run)
    monkeypatch.setenv("SLEAP_RTC_SERVER", "ws://env:1/ws")
    result = CliRunner().invoke(main, ["train", str(package), "--room-id", "r", "--token", "t", "--auto-select"])
    assert result.exit_code == 0, result.output
    assert calls == [(SelectionMode.AUTO, "ws://env:1/ws", package, package.parent / "pkg.models", "train")]


TRACK_VIDEO_CASES = [
    (["--only-labeled"], "--only-labeled, --only-suggested, --video, --random and --all-videos need a .slp project."),
    (["--frames", "9-2"], "--frames '9-2': the range 9-2 runs backwards."),
    (["--frames", "a"], "--frames 'a': 'a' is neither a frame nor a range such as 0-99."),
    (["--track-option", "output_path=/etc"], "--track-option 'output_path=/etc': NAME=VALUE with NAME one of "),
    (["--track-option", "max_tracks=0"], "Inference option max_tracks=0 is outside 1..1000."),
    (["--data-root", "lab"], "--data-root 'lab' must be NAME=PATH."),
]


@pytest.mark.parametrize("args,message", TRACK_VIDEO_CASES)
def test_track_on_videos_validation(no_network, tmp_path, args, message):
    video, model = inputs(tmp_path, "v.mp4")
    result = CliRunner().invoke(main, ["track", str(video), "-m", str(model), "--room-id", "r", "--token", "t",
                                       "--auto-select", *args])
    assert result.exit_code == 2, result.output
    assert usage_message(result.output).startswith(message)


def test_track_needs_a_model_and_one_project(no_network, tmp_path):
    data = tmp_path / "d.slp"
    data.write_bytes(b"x")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    creds = ["--room-id", "r", "--token", "t", "--auto-select"]
    result = CliRunner().invoke(main, ["track", str(video), *creds])
    assert result.exit_code == 2 and "Give at least one trained model" in result.output
    result = CliRunner().invoke(main, ["track", str(data), str(video), "-m", str(video), *creds])
    assert result.exit_code == 2 and "Give one .slp project, or one or more video files." in result.output
