"""Forward a remote job's sleap-nn training events into SLEAP's ``LossViewer``, and back.

The ``LossViewer`` binds a SUB socket on ``zmq_ports["publish_port"]`` and a PUB on
``zmq_ports["controller_port"]``. Locally sleap-nn connects to those; for a remote job we
do: ``LossFeed`` connects a PUB to the publish port and re-publishes each ``job_progress``
event unchanged, and a SUB to the controller port that turns the viewer's Stop button
(``{"command": "stop"}``) into a callback (the remote job's stop).

ZMQ slow joiner: a newly connected PUB drops messages until the subscription reaches it,
so events are queued for ``warmup_s`` after connecting, then flushed in order.

``call_in_order(fn)`` queues a call between events (e.g. resetting the viewer before the
next model's first event): everything queued before it is sent and given ``settle_s`` to
be read by the viewer, then ``fn`` runs, then the events after it are sent.
No Qt import beyond a ``QTimer`` for polling: nothing here blocks.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from qtpy import QtCore

log = logging.getLogger(__name__)

SLOW_JOINER_S = 0.4
"""Wait after connecting before the first message (the reference measured 0.3–0.5 s)."""

SETTLE_S = 0.3
"""Time the viewer gets to read what was sent before a queued call runs (it polls every 20 ms)."""


class LossFeed(QtCore.QObject):
    """Publish training events to a ``LossViewer`` and watch its controller for ``stop``.

    ``publish(event)`` never blocks: it queues while the PUB warms up. ``on_stop`` is called
    (once per stop command) when the viewer publishes ``{"command": "stop"}``.
    """

    def __init__(
        self,
        publish_port: int,
        controller_port: int | None = None,
        *,
        on_stop: Callable[[], Any] | None = None,
        warmup_s: float = SLOW_JOINER_S,
        host: str = "127.0.0.1",
        parent: QtCore.QObject | None = None,
    ):
        super().__init__(parent)
        self.ctx = zmq.Context.instance()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(f"tcp://{host}:{publish_port}")
        self.ctrl: zmq.Socket | None = None
        if controller_port:
            self.ctrl = self.ctx.socket(zmq.SUB)
            self.ctrl.setsockopt(zmq.LINGER, 0)
            self.ctrl.subscribe("")
            self.ctrl.connect(f"tcp://{host}:{controller_port}")
        self.on_stop = on_stop
        self.sent = 0
        self._ready_at = time.monotonic() + warmup_s
        self._queue: deque[str | Callable[[], Any]] = deque()
        self._paused_until = 0.0
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    @property
    def ready(self) -> bool:
        """Whether the slow-joiner warm-up is over."""
        return time.monotonic() >= self._ready_at

    def publish(self, event: dict[str, Any]) -> None:
        """Send one sleap-nn training event (``event``, ``what``, ``logs``, ``epoch`` …) to the viewer."""
        self._queue.append(json.dumps(event))
        if self.ready:
            self._flush()

    def call_in_order(self, callback: Callable[[], Any], settle_s: float = SETTLE_S) -> None:
        """Run ``callback`` after every event queued so far was sent and read (see module doc)."""
        self._queue.append(_Barrier(callback, settle_s))
        if self.ready:
            self._flush()

    def drain_then(self, callback: Callable[[], Any], settle_s: float = 0.3) -> None:
        """Call ``callback`` once every queued event is sent and the viewer had time to read it.

        Used before closing the viewer: a short job can finish inside the slow-joiner warm-up.
        The waits belong to this feed: once Qt deleted it (its window closed first), neither
        the flush nor ``callback`` runs.
        """
        wait = max(0.0, self._ready_at - time.monotonic())

        def flushed() -> None:
            self._flush()
            if self._queue and not self._timer.isActive():
                self._timer.start()
            if self._queue:  # the PUB is still full: try again shortly
                QtCore.QTimer.singleShot(50, self, flushed)
                return
            QtCore.QTimer.singleShot(int(settle_s * 1000), self, callback)

        QtCore.QTimer.singleShot(int(wait * 1000), self, flushed)

    def close(self) -> None:
        """Flush what can be sent and close the sockets."""
        self._timer.stop()
        if self.ready:
            self._flush()
        for sock in (self.pub, self.ctrl):
            if sock is not None and not sock.closed:
                sock.close(0)

    def _flush(self) -> None:
        while self._queue:
            head = self._queue[0]
            if isinstance(head, _Barrier):
                now = time.monotonic()
                if head.due is None:
                    head.due = now + head.settle_s
                if now < head.due:
                    return  # the timer comes back
                self._queue.popleft()
                try:
                    head.callback()
                except Exception:  # a display problem must not stop the feed
                    log.exception("queued LossViewer call failed")
                continue
            try:
                self.pub.send_string(head, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._queue.popleft()
            self.sent += 1

    def _tick(self) -> None:
        if self.ready:
            self._flush()
        if self.ctrl is None or self.ctrl.closed:
            return
        while True:
            try:
                raw = self.ctrl.recv_string(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("command") == "stop" and self.on_stop is not None:
                log.info("LossViewer asked to stop training; stopping the remote job")
                self.on_stop()


class _Barrier:
    """A call queued between events (``LossFeed.call_in_order``)."""

    def __init__(self, callback: Callable[[], Any], settle_s: float):
        self.callback, self.settle_s = callback, settle_s
        self.due: float | None = None
