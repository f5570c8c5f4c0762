"""The hub without sockets: frames in, actions out (batched room events, the watcher cap)."""

from __future__ import annotations

import json

from sleap_rtc.server.hub import EVENT_FLUSH_INTERVAL, MAX_EVENTS_PER_FRAME, Hub, Send
from sleap_rtc.server.limits import Limits
from sleap_rtc.server.rooms import RoomStore


class _Clock:
    """The hub's clock, moved by hand (it stands still unless a test moves it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _hub(clock: _Clock | None = None, **limits) -> tuple[Hub, tuple[str, str]]:
    hub = Hub(RoomStore(), limits=Limits(**limits), clock=clock or _Clock())
    room = hub.rooms.create()
    return hub, (room.room_id, room.worker_token)


async def _register(hub: Hub, room, peer_id: str, role: str = "worker", address: str = "10.0.0.1", **extra):
    conn = hub.connect(address)
    frame = {"type": "register", "peer_id": peer_id, "room_id": room[0], "token": room[1], "role": role, **extra}
    return conn, await hub.handle(conn, json.dumps(frame))


def _frames_to(actions, conn) -> list[dict]:
    return [a.frame for a in actions if isinstance(a, Send) and conn in a.targets]


async def test_batched_watchers_get_one_frame_per_flush_however_many_changes():
    clock = _Clock()
    hub, room = _hub(clock, address_messages_per_second=1e6, address_message_burst=10**6)
    watchers = [(await _register(hub, room, f"c{i}", "client", address=f"10.1.{i // 250}.{i % 250}", events=True, batch_events=True))[0] for i in range(300)]
    while hub.flush_events():  # the joins of the watchers themselves
        pass
    clock.t += EVENT_FLUSH_INTERVAL * 1.01
    await _register(hub, room, "warm-up")  # every watcher hears this at once; the rest is batched
    worker, actions = await _register(hub, room, "w", metadata={"properties": {"status": "available"}})
    assert not [a for a in actions if isinstance(a, Send) and watchers[0] in a.targets]  # nothing sent yet
    for status in ("busy", "available", "busy"):
        await hub.handle(worker, json.dumps({"type": "update_metadata", "metadata": {"properties": {"status": status}}}))
    flushed = hub.flush_events()
    # One frame per watcher (O(N), not O(N x changes)), and all alike: encoded once.
    assert len(flushed) == 1 and set(flushed[0].targets) == set(watchers)
    frame = _frames_to(flushed, watchers[7])[0]
    assert frame["type"] == "room_events"
    [event] = frame["events"]  # joined + 3 updates coalesced into one "joined" with the latest state
    assert event["type"] == "peer_joined" and event["peer_id"] == "w"
    assert event["metadata"]["properties"]["status"] == "busy"
    assert hub.flush_events() == []  # nothing left


async def test_a_quiet_watcher_hears_at_once_and_what_follows_at_the_next_flush():
    clock = _Clock()
    hub, room = _hub(clock)
    watcher, _ = await _register(hub, room, "c", "client", events=True, batch_events=True)
    worker, actions = await _register(hub, room, "w")
    [frame] = _frames_to(actions, watcher)  # quiet until now: at once, in the batched shape
    assert frame["type"] == "room_events" and [e["type"] for e in frame["events"]] == ["peer_joined"]
    busy = {"type": "update_metadata", "metadata": {"properties": {"status": "busy"}}}
    assert _frames_to(await hub.handle(worker, json.dumps(busy)), watcher) == []  # within the interval: waits
    [frame] = _frames_to(hub.flush_events(), watcher)
    assert [e["type"] for e in frame["events"]] == ["peer_updated"]
    clock.t += EVENT_FLUSH_INTERVAL * 1.01  # a quiet interval since that flush: the next change goes at once
    busy["metadata"]["properties"]["status"] = "available"
    [frame] = _frames_to(await hub.handle(worker, json.dumps(busy)), watcher)
    assert frame["events"][0]["metadata"]["properties"]["status"] == "available"
    assert hub.flush_events() == []


async def test_coalescing_rules():
    hub, room = _hub()
    watcher, _ = await _register(hub, room, "c", "client", events=True, batch_events=True)
    await _register(hub, room, "first")  # heard at once (a quiet watcher); what follows is batched
    a, _ = await _register(hub, room, "a")
    await hub.disconnect(a)  # joined then left within one interval: the watcher never needs to know
    b, _ = await _register(hub, room, "b")
    hub.flush_events()
    await hub.handle(b, json.dumps({"type": "update_metadata", "metadata": {"tags": ["x"]}}))
    await hub.disconnect(b)  # updated then left: left
    [frame] = _frames_to(hub.flush_events(), watcher)
    assert [(e["type"], e["peer_id"]) for e in frame["events"]] == [("peer_left", "b")]


async def test_a_big_burst_is_split_into_bounded_frames():
    hub, room = _hub(address_messages_per_second=1e6, address_message_burst=10**6, max_peers_per_room=MAX_EVENTS_PER_FRAME + 50)
    watcher, _ = await _register(hub, room, "c", "client", events=True, batch_events=True)
    for i in range(MAX_EVENTS_PER_FRAME + 11):  # the first is heard at once, the rest batched
        await _register(hub, room, f"w{i}", address=f"10.2.{i // 250}.{i % 250}")
    first = _frames_to(hub.flush_events(), watcher)[0]
    second = _frames_to(hub.flush_events(), watcher)[0]
    assert len(first["events"]) == MAX_EVENTS_PER_FRAME and len(second["events"]) == 10


async def test_v2_watchers_still_get_one_frame_per_event_at_once():
    hub, room = _hub()
    old, _ = await _register(hub, room, "old", "client", events=True)  # no batch_events: a v2.0 peer
    _, actions = await _register(hub, room, "w")
    assert [f["type"] for f in _frames_to(actions, old)] == ["peer_joined"]
    assert _frames_to(hub.flush_events(), old) == []


async def test_watcher_cap_refuses_with_a_clear_error_and_plain_peers_still_join():
    hub, room = _hub(max_watchers_per_room=2)
    await _register(hub, room, "c1", "client", events=True)
    await _register(hub, room, "c2", "client", events=True)
    conn, actions = await _register(hub, room, "c3", "client", events=True)
    [frame] = _frames_to(actions, conn)
    assert frame["code"] == "TOO_MANY_WATCHERS" and "--max-watchers-per-room" in frame["message"]
    _, actions = await _register(hub, room, "c3", "client")  # without events: admitted
    assert _frames_to(actions, _)[0]["type"] == "registered_auth"
