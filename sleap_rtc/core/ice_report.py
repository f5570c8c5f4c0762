"""Why a WebRTC connection did not open, in words: ICE/DTLS state, candidates, one hint.

Pure: built from the two SDPs, the ICE servers this side used and the states recorded
while the attempt ran (``StateLog``, read before teardown, since a torn-down connection
only ever says ``closed``). ``IceReport.message()`` is the text a user sees; it names no
command-line flag (the CLI and the GUI add their own hints by error type).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
"""ICE candidate types as they appear after ``typ`` in an SDP ``a=candidate`` line."""
DEPLOY_DOC = "docs/deploy.md"
"""Where the STUN/TURN set-up is explained (named in hints)."""

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ (\S+) \d+ \S+ \d+ typ (\S+)", re.MULTILINE)


def candidate_types(sdp: str | None) -> list[str]:
    """The candidate types an SDP offers, in ``CANDIDATE_TYPES`` order, each once."""
    found = {typ for _proto, typ in _CANDIDATE.findall(sdp or "")}
    return [t for t in CANDIDATE_TYPES if t in found]


def candidate_transports(sdp: str | None) -> list[str]:
    """The transports (``udp``/``tcp``) of an SDP's candidates, each once."""
    return sorted({proto.lower() for proto, _typ in _CANDIDATE.findall(sdp or "")})


def _urls(servers: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in servers:
        urls = s.get("urls") or []
        out += [urls] if isinstance(urls, str) else [u for u in urls if isinstance(u, str)]
    return out


def _kind(url: str) -> str:
    return "turn" if url.lower().startswith("turn") else "stun" if url.lower().startswith("stun") else ""


class StateLog:
    """The last ICE / connection / DTLS states of a peer connection that were not ``closed``.

    ``attach(pc)`` subscribes to aiortc's state events; ``snapshot()`` gives the states
    as they were just before the connection was torn down.
    """

    def __init__(self) -> None:
        self.ice = "new"
        self.connection = "new"
        self.dtls = "new"
        self.ice_connected = False
        self._pc: Any = None

    def attach(self, pc: Any) -> None:
        """Record ``pc``'s state changes from now on."""
        self._pc = pc
        pc.on("iceconnectionstatechange", self.record)
        pc.on("connectionstatechange", self.record)
        self.record()

    def record(self) -> None:
        """Take the current states (``closed`` is never recorded: it is what teardown says)."""
        pc = self._pc
        if pc is None:
            return
        ice = getattr(pc, "iceConnectionState", None)
        if ice and ice != "closed":
            self.ice = ice
            self.ice_connected = self.ice_connected or ice in ("completed", "connected")
        conn = getattr(pc, "connectionState", None)
        if conn and conn != "closed":
            self.connection = conn
        dtls = getattr(getattr(getattr(pc, "sctp", None), "transport", None), "state", None)
        if dtls and dtls != "closed":
            self.dtls = dtls


@dataclass
class IceReport:
    """Everything known about one failed attempt to open a channel."""

    peer: str
    role: str
    """``client`` (we offered) or ``worker`` (we answered)."""
    elapsed: float
    ice_state: str
    connection_state: str
    dtls_state: str
    ice_connected: bool
    local_types: list[str]
    remote_types: list[str]
    configured: list[str] = field(default_factory=list)
    """ICE server URLs this side was configured with (server's list merged with local)."""
    answered: list[str] = field(default_factory=list)
    """Those that answered the reachability probe, i.e. the ones actually used."""
    timed_out: bool = False
    """True when the check deadline ran out (rather than ICE reporting ``failed``)."""

    @property
    def relay_offered(self) -> bool:
        """Whether either side offered a TURN relay candidate."""
        return "relay" in self.local_types or "relay" in self.remote_types

    @property
    def other(self) -> str:
        """How to name the other side in a sentence."""
        return "the worker" if self.role == "client" else "the client"

    def hint(self) -> str:
        """One concrete next step, from what was (not) gathered."""
        turn = [u for u in self.configured if _kind(u) == "turn"]
        stun = [u for u in self.configured if _kind(u) == "stun"]
        turn_up = [u for u in self.answered if _kind(u) == "turn"]
        if self.ice_connected:
            return (f"The network path opened but the encrypted channel did not (DTLS {self.dtls_state}); "
                    f"{self.other} may be overloaded, or running an incompatible version.")
        if not turn and not self.relay_offered:
            if not stun and "srflx" not in self.local_types + self.remote_types:
                return ("No STUN or TURN server configured: only peers on the same network can connect; "
                        f"peers behind different NATs need a TURN server, see {DEPLOY_DOC}.")
            return f"No TURN server configured: peers behind different NATs need one; see {DEPLOY_DOC}."
        if turn and not turn_up:
            return (f"The TURN server ({', '.join(turn)}) did not answer from here: a firewall may block it; "
                    f"offer TURN over TCP and TLS as well (see {DEPLOY_DOC}).")
        if turn_up and "relay" not in self.local_types:
            return (f"The TURN server ({turn_up[0]}) answered but gave no relay address: its credentials were "
                    "refused or expired, or it cannot allocate a relay port.")
        return ("Relay candidates were offered but no candidate pair worked: check that the TURN server's "
                "relay ports (UDP 49152-65535) are open and that it can reach both peers.")

    def message(self) -> str:
        """The whole explanation in a few sentences."""
        how = (f"no working path after {self.elapsed:.1f} s" if self.timed_out
               else f"ICE failed after {self.elapsed:.1f} s")
        local = ", ".join(self.local_types) or "none"
        remote = ", ".join(self.remote_types) or "none"
        relay = "a relay was offered" if self.relay_offered else "no relay candidate was offered by either side"
        return (
            f"The connection to {self.peer} did not open: {how} (ICE {self.ice_state}, "
            f"connection {self.connection_state}, DTLS {self.dtls_state}). Candidates: this side {local}; "
            f"{self.other} {remote}; {relay}. {self.hint()}"
        )
