"""Striped transfers on an impaired link: 100 Mbit/s, 20 ms RTT, 1 % random loss each way
(``Lab.shape`` / ``Lab.impair``), the worker behind the lab NAT, the client behind the home
NAT, the real ``sleap-rtc server`` with the lab's coturn as STUN (direct path), real aiortc
peers doing the product's ``send_file`` with its stripe growth (``_transfer_peer.py``).

* the upload completes and the worker's SHA-256 is the file's;
* one stripe's path is cut mid-transfer (its UDP port dropped both ways on the client
  host: a black hole, not a close): the transfer still completes, verified;
* a second job to the same worker from the same client process opens the connections
  growth found in the first at once (``stripes.PathMemory``), verified too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import START_TIMEOUT, _env  # noqa: E402
from lab import SIGNALING_PORT, STUN, SERVER_URL, build_nfqdelay  # noqa: E402

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(300)]

PEER = Path(__file__).with_name("_transfer_peer.py")
SIZE = 24 * 1024 * 1024
CUT_AFTER_MIB = 6
"""The client cuts its first stripe's path once this much of the file was handed out."""
RUN_TIMEOUT = 200.0
"""Seconds one striped upload may take on this link (measured: well under a minute)."""


@pytest.fixture
def lossy(lab):
    """The lab with 100 Mbit/s, 20 ms RTT and 1 % loss; restored to an unimpaired lab after."""
    lab.shape(100)
    lab.impair(build_nfqdelay(lab.work), 20, 1.0)
    try:
        yield lab
    finally:
        lab.impair(None)
        lab.shape(0)
        for chain in ("INPUT", "OUTPUT"):  # the path cut's rules on the client host
            lab.ns(lab.home, "iptables", "-F", chain)


def upload(lab, tmp_path: Path, cut: bool, striped: str = "1") -> tuple[list[dict], str, list[str]]:
    """One striped upload home -> lab (two with ``striped="known"``, on two connections from one
    client process); returns the worker's results, the file's SHA-256, the client's output."""
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(SIZE))
    secret = secrets.token_urlsafe(24)
    made = []
    try:
        server = lab.spawn(lab.pub, "xfer/server", [sys.executable, "-m", "sleap_rtc", "server", "--host", "0.0.0.0",
                                                     "--port", str(SIGNALING_PORT), "--state", str(tmp_path / "s.db"),
                                                     "--create-room-secret", secret, "--stun", STUN],
                           _env(tmp_path / "server", None), tmp_path)
        made.append(server)
        server.wait_for_line(lambda line: "listening on" in line, START_TIMEOUT)
        worker = lab.spawn(lab.lab, "xfer/worker", [sys.executable, str(PEER), "worker", SERVER_URL, secret,
                                                     str(tmp_path / "w"), "recv", "-", str(RUN_TIMEOUT)],
                           _env(tmp_path / "wenv", None), tmp_path)
        made.append(worker)
        ready = worker.wait_for_line(lambda line: line.startswith("READY"), START_TIMEOUT).split()
        client = lab.spawn(lab.home, "xfer/client", [sys.executable, str(PEER), "client", SERVER_URL, *ready[1:4],
                                                      str(tmp_path / "c"), "send", str(src), striped, str(RUN_TIMEOUT),
                                                      str(CUT_AFTER_MIB if cut else 0)],
                           _env(tmp_path / "cenv", None), tmp_path)
        made.append(client)
        jobs = 2 if striped == "known" else 1
        worker.wait_for_line(lambda _line: sum(x.startswith("RESULT") for x in worker.lines) >= jobs, jobs * RUN_TIMEOUT)
        client.popen.wait(30)
        results = [json.loads(x[7:]) for x in worker.lines if x.startswith("RESULT")]
        return results, hashlib.sha256(src.read_bytes()).hexdigest(), client.lines
    finally:
        for child in made:
            child.kill(timeout=5)
            lab.children.remove(child)


def test_striped_upload_under_one_percent_loss_is_verified_and_the_next_job_starts_where_growth_ended(lossy, tmp_path):
    (first, second), sha, client = upload(lossy, tmp_path, cut=False, striped="known")
    for got in (first, second):
        assert got["complete"] and got["bytes"] == SIZE, got
        assert got["sha256"] == sha
    assert first["connections"] >= 2, first  # the product's growth opened stripes on this link
    # The second job's connection opened what growth had found in the first, all at once.
    started = [int(m.group(1)) for m in map(re.compile(r"starting with the (\d+) connections").search, client) if m]
    # (Not bounded by the first job's own count: a step can open as its transfer ends, unseen by the worker.)
    assert len(started) == 1 and started[0] >= 2, (started, first, client[-30:])
    assert second["connections"] >= started[0], (started, second)


def test_a_stripe_whose_path_is_cut_does_not_fail_the_transfer(lossy, tmp_path):
    (got,), sha, client = upload(lossy, tmp_path, cut=True)
    assert any(line.startswith("CUT ") for line in client), client[-20:]
    assert got["complete"] and got["bytes"] == SIZE and got["sha256"] == sha, got
