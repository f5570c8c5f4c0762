"""Server counters and their Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sleap_rtc.core.protocol import PEER_FRAME_FIELDS

_KNOWN_TYPES = frozenset(str(t) for t in PEER_FRAME_FIELDS)


@dataclass
class Metrics:
    """Monotonic counters the hub and the app bump; gauges are read from the hub on demand."""

    connections_total: int = 0
    messages: Counter = field(default_factory=Counter)
    rejected_registrations: Counter = field(default_factory=Counter)
    errors_sent: Counter = field(default_factory=Counter)
    rooms_created: int = 0

    def count_message(self, msg_type: object) -> None:
        """Count one received frame by type; unknown types share one label (bounded cardinality)."""
        label = msg_type if isinstance(msg_type, str) and msg_type in _KNOWN_TYPES else "other"
        self.messages[label] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(metrics: Metrics, *, connections: int, rooms_active: int, rooms_stored: int, peers_by_role: dict[str, int]) -> str:
    """The Prometheus text format (version 0.0.4) of the counters and the current gauges."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    metric("sleap_rtc_connections", "gauge", "Open WebSocket connections.", [({}, connections)])
    metric("sleap_rtc_connections_total", "counter", "WebSocket connections accepted.", [({}, metrics.connections_total)])
    metric("sleap_rtc_rooms_active", "gauge", "Rooms with at least one registered peer.", [({}, rooms_active)])
    metric("sleap_rtc_rooms_stored", "gauge", "Rooms in the state file.", [({}, rooms_stored)])
    metric("sleap_rtc_rooms_created_total", "counter", "Rooms created.", [({}, metrics.rooms_created)])
    metric("sleap_rtc_peers", "gauge", "Registered peers by role.", [({"role": r}, n) for r, n in sorted(peers_by_role.items())])
    metric("sleap_rtc_messages_total", "counter", "Frames received by type.", [({"type": t}, n) for t, n in sorted(metrics.messages.items())])
    metric(
        "sleap_rtc_rejected_registrations_total",
        "counter",
        "Refused registrations by error code.",
        [({"code": c}, n) for c, n in sorted(metrics.rejected_registrations.items())],
    )
    metric("sleap_rtc_errors_total", "counter", "Error frames sent by code.", [({"code": c}, n) for c, n in sorted(metrics.errors_sent.items())])
    return "\n".join(lines) + "\n"
