"""Child processes that die with their parent.

Workers run sleap-nn, and ``LocalRoom`` runs servers and workers, each in a session of its
own so that a stop can kill the child's whole process group. The price is that killing the
parent outright (SIGKILL, a crashed test run) would leave those children running: on Linux
``die_with_parent`` asks the kernel to SIGKILL the child when its parent goes.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess``: the child gets SIGKILL when its parent dies (Linux).

    Best effort elsewhere: an orderly stop still kills the child's process group.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
