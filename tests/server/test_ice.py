"""STUN/TURN settings and per-peer TURN credentials (server/ice.py), and how the real
server hands them out: only in ``registered_auth`` / ``get_ice_servers``, never the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys

import aiohttp
import pytest
from click.testing import CliRunner

from sleap_rtc.server import ice
from sleap_rtc.server.cli import turn_config_command

SECRET = "lab-secret-0123456789abcdef"
TURN = ("turn:203.0.113.1:3478?transport=udp", "turn:203.0.113.1:3478?transport=tcp", "turns:203.0.113.1:5349?transport=tcp")


def test_credentials_follow_the_turn_rest_scheme():
    username, credential = ice.turn_credentials(SECRET, "worker-a-1", 1_900_000_000)
    assert username == "1900000000:worker-a-1"
    expected = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert credential == expected
    assert ice.credential_expiry(username) == 1_900_000_000
    assert ice.credential_expiry("lab") is None


def test_each_peer_gets_its_own_short_lived_list_one_url_per_entry():
    settings = ice.IceSettings(turn=TURN, secret=SECRET, ttl=600)
    servers = settings.for_peer("client-x", now=1000.0)
    assert [s["urls"] for s in servers] == ["stun:203.0.113.1:3478", *TURN]  # STUN derived from the TURN host
    turn = servers[1:]
    assert {s["username"] for s in turn} == {"1600:client-x"}
    assert all(SECRET not in str(s) for s in servers)
    other = settings.for_peer("client-y", now=1000.0)
    assert other[1]["credential"] != turn[0]["credential"]


def test_settings_from_flags_and_config(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = {"ice": {"turn": list(TURN[:1]), "turn_secret_file": str(secret_file), "ttl": 120}}
    settings = ice.settings_from(config)
    assert settings.turn == TURN[:1] and settings.secret == SECRET and settings.ttl == 120
    flags = ice.settings_from(config, turn=TURN, stun=["stun:198.51.100.1:3478"], secret=SECRET, ttl=900)
    assert flags.turn == TURN and flags.stun == ("stun:198.51.100.1:3478",) and flags.ttl == 900
    with pytest.raises(ice.IceConfigError, match="secret"):
        ice.settings_from({}, turn=TURN)
    with pytest.raises(ice.IceConfigError, match="too short"):
        ice.settings_from({}, turn=TURN, secret="short")
    with pytest.raises(ice.IceConfigError, match="Not a turn"):
        ice.settings_from({}, turn=["http://x"], secret=SECRET)
    with pytest.raises(ice.IceConfigError, match="TTL"):
        ice.settings_from({}, turn=TURN, secret=SECRET, ttl=5)


def test_static_entries_are_split_and_kept():
    settings = ice.settings_from({"ice_servers": [{"urls": ["stun:a:3478", "turn:a:3478"], "username": "u", "credential": "c"}]})
    assert settings.for_peer("p", 0) == [{"urls": "stun:a:3478"}, {"urls": "turn:a:3478", "username": "u", "credential": "c"}]
    assert any("static TURN credentials" in w for w in ice.startup_warnings(settings, "0.0.0.0"))


def test_startup_warns_about_what_will_not_work():
    assert ice.startup_warnings(ice.IceSettings(), "127.0.0.1") == []  # the local demo: fine
    warnings = ice.startup_warnings(ice.IceSettings(), "0.0.0.0")
    assert "No TURN server configured" in warnings[0] and "docs/deploy.md" in warnings[0]
    assert "No STUN server" in warnings[1]
    assert ice.startup_warnings(ice.IceSettings(turn=TURN, secret=SECRET), "0.0.0.0") == []


def test_turn_config_matches_the_server_settings(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    result = CliRunner().invoke(turn_config_command, ["--secret-file", str(secret_file), "--realm", "turn.lab.test",
                                                      "--cert", "/c.pem", "--pkey", "/k.pem", "--listening-ip", "203.0.113.1"])
    assert result.exit_code == 0, result.output
    conf = result.stdout
    assert "use-auth-secret\n" in conf and f"static-auth-secret={SECRET}\n" in conf
    assert "realm=turn.lab.test" in conf and "tls-listening-port=5349" in conf and "cert=/c.pem" in conf
    assert "listening-ip=203.0.113.1" in conf and "denied-peer-ip=10.0.0.0-10.255.255.255" in conf
    assert "lt-cred-mech" not in conf and "user=" not in conf


@pytest.mark.in_process  # sets the in-process hub's ICE settings
async def test_server_mints_per_peer_credentials_only_for_registered_peers(signaling_server, connect, room):
    signaling_server.hub.ice = ice.IceSettings(turn=TURN, secret=SECRET, ttl=600)
    peer = await connect()
    refused = await peer.request({"type": "get_ice_servers"})
    assert refused["type"] == "error"  # not registered: nothing
    auth = await peer.register(room, "client-1", "client")
    turn = [s for s in auth["ice_servers"] if s["urls"].startswith("turn")]
    assert [s["urls"] for s in turn] == list(TURN)
    assert turn[0]["username"].endswith(":client-1")
    again = await peer.request({"type": "get_ice_servers", "id": "r1"})
    assert again["type"] == "ice_servers" and again["id"] == "r1" and len(again["ice_servers"]) == len(auth["ice_servers"])
    async with aiohttp.ClientSession() as http:
        async with http.post(signaling_server.http_url + "/create-room") as resp:
            body = await resp.text()
    assert "ice_servers" not in body and SECRET not in body


def test_server_cli_warns_at_start_up_without_turn(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "sleap_rtc", "server", "--host", "0.0.0.0", "--port", "0", "--state", str(tmp_path / "s.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stderr.readline()  # the warnings come before the server listens
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "No TURN server configured" in first and "docs/deploy.md" in first
