"""LossFeed's delayed close belongs to the feed: a feed Qt deleted (its window closed first)
runs neither its flush nor the callback, where it used to stop an already-deleted QTimer from
the event loop (a RuntimeError that failed the GUI inference test at random)."""

from __future__ import annotations

import asyncio

import shiboken6
import zmq
from qtpy import QtCore

from sleap_rtc.gui.loss_feed import LossFeed


def _sub_port() -> tuple[zmq.Socket, int]:
    """A SUB socket standing in for the viewer's, and its port."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    return sub, sub.bind_to_random_port("tcp://127.0.0.1")


async def test_drain_then_calls_back_once_the_queue_is_sent(wait_until):
    sub, port = _sub_port()
    calls = []
    feed = LossFeed(port, warmup_s=0.05)
    feed.publish({"event": "train_begin"})
    feed.drain_then(lambda: calls.append("closed"), settle_s=0.05)
    await wait_until(lambda: calls == ["closed"], 5)
    feed.close()
    sub.close(0)


async def test_a_feed_deleted_before_its_drain_ends_calls_nothing(wait_until):
    sub, port = _sub_port()
    parent = QtCore.QObject()
    calls, errors = [], []
    feed = LossFeed(port, warmup_s=0.2, parent=parent)
    feed.publish({"event": "train_begin"})

    def close_viewer() -> None:  # what sleap_attach's _close_viewer does first
        try:
            feed.close()
            calls.append("closed")
        except RuntimeError as exc:
            errors.append(exc)

    feed.drain_then(close_viewer, settle_s=0.05)
    shiboken6.delete(parent)  # the window (and with it the feed and its timer) goes first
    await asyncio.sleep(0.6)  # past the warm-up and the settle
    assert not errors and not calls, (errors, calls)
    sub.close(0)
