"""One remote job from room credentials to results on disk: the orchestration the CLI and
the GUI share (they only present it: the CLI prints, the GUI's panel shows and chooses).

``RemoteJob(package, credentials=..., signaling=..., policy=..., callbacks=...)``:

* joins the room, or uses the live ``SignalingClient`` the caller already holds (the GUI's
  session): no second signaling connection per job;
* chooses a worker by its ``SelectionPolicy`` (``core/job_policy.py``): a direct peer id,
  a session string's worker, an interactive chooser, or auto-select with exclusions and a
  wait budget;
* runs the job on it (``JobSession``: upload, stream, results), telling a ``JobCallbacks``
  (``core/job_events.py``) about phases, decisions, waits, upload, each model's start and
  epochs, logs, restarts and the summary;
* after a failed attempt (busy, vanished, no worker free, worker lost mid-job) does what
  the one retry table says (``core/retry.py``): next best, ask the chooser, wait on room
  events for a free worker, or fail with an error whose type says which (the CLI adds its
  flag hints by type, the GUI its own words).

Before anything is uploaded, each reserved worker's identity is checked (``_verify``): the
worker proves over the data channel that it holds the key it advertises
(``PeerChannel.verify_identity``), the key must be the one the room advertised for it and
the one in the session string when that carries one, and it is compared with the key this
client remembered for the worker's name (``core.known_workers``). A failure is a
``WorkerIdentityError`` (the table's ``UNTRUSTED``: next best under auto-select, the chooser
asked, or the job fails). A changed key of a worker the user chose is a warning (a
decision line), after which the new key is remembered.

One ``JobPhases`` covers the whole job, retries included (it is never recreated).
Every wait is bounded: the wait budget, ``connect_timeout``, the chooser's own timeout,
and ``MAX_MOVES`` moves in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sleap_rtc.core.channel import default_cache_dir
from sleap_rtc.core.credentials import RoomCredentials
from sleap_rtc.core.files import prune_transfer_cache
from sleap_rtc.core.identity import short_fingerprint
from sleap_rtc.core.job_events import BusyWorker, JobCallbacks, Restarted, TrainingEvents, Waiting, call
from sleap_rtc.core.job_policy import (
    Auto,
    ChoiceRequest,
    DirectWorker,
    Interactive,
    NextBest,
    Pick,
    SelectionCancelled,
    SelectionPolicy,
    SessionWorker,
    WaitForFree,
)
from sleap_rtc.core.known_workers import KnownWorkers, Trust
from sleap_rtc.core.phases import JobPhases, Phase
from sleap_rtc.core.protocol import MessageType, Role
from sleap_rtc.core.remote_job import (
    MAX_RECONNECTS,
    RECONNECT_GRACE,
    RECONNECT_PAUSE,
    TRAIN,
    JobCancelledError,
    JobError,
    JobSession,
    JobSummary,
    Upload,
    WorkerLostError,
)
from sleap_rtc.core.retry import Allowed, Move, Origin, Outcome, classify, next_move
from sleap_rtc.core.room import RoomView, WorkerInfo, worker_filters
from sleap_rtc.core.selection import (
    SelectionError,
    SessionWorkerBusyError,
    auto_select,
    check_direct,
    wait_for_free,
)
from sleap_rtc.core.signaling import SignalingClient, SignalingError
from sleap_rtc.core.transport_errors import PeerNotFoundError, TransportError, WorkerBusyError, WorkerIdentityError

log = logging.getLogger(__name__)

MAX_MOVES = 50
"""Retry-table moves one job may take in all (asks, waits, next-bests): a hard bound."""

PrepareFn = Callable[[WorkerInfo], Awaitable[tuple[Path, list[Upload]]]]
"""``await prepare(worker) -> (package, uploads)``: the package and the files sent on their own
before it, made for the chosen worker (an inference asks for what that worker lacks)."""

ConnectFn = Callable[[SignalingClient, str, Path, float], Awaitable[Any]]
"""``await connect(signaling, peer_id, receive_dir, timeout) -> channel`` (injected in tests)."""



async def _transport_connect(signaling: SignalingClient, peer_id: str, receive_dir: Path, timeout: float) -> Any:
    from sleap_rtc.core import transport  # aiortc is heavy: import when connecting

    return await transport.connect(signaling, peer_id, timeout=timeout, receive_dir=receive_dir)


@dataclass(frozen=True)
class JobHandle:
    """Who runs a job, enough for a later session to find it again: the room, the worker's
    peer id and the job id (``save`` / ``load`` as JSON next to the results)."""

    server_url: str
    room_id: str
    worker_peer_id: str
    worker_name: str
    job_id: str
    kind: str
    results_dir: str

    def save(self, path: Path) -> Path:
        """Write the handle as JSON (no token: the later session joins with its own)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> JobHandle:
        """Read a saved handle; ``ValueError`` when the file is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{name: str(data[name]) for name in cls.__dataclass_fields__})
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a saved sleap-rtc job ({exc}).") from None


class RemoteJob:
    """One remote job: select a worker by ``policy``, run, retry by the table, results.

    ``credentials``: the room; ``signaling``: the caller's live connection to it (else one
    is opened on ``server_url`` and closed at the end); ``room``: a live ``RoomView`` on it
    to reuse (else one is made). ``callbacks``: a ``JobCallbacks``. ``connect``: the
    connect attempt (default: WebRTC to the worker). ``run()`` returns a ``JobSummary`` or
    raises ``SelectionError`` / ``JobError`` / ``TransportError``; cancelling its task
    cancels the job on the worker. ``stop()`` finishes the current epoch and keeps the
    model; ``cancel()`` kills the job.
    """

    def __init__(
        self,
        package: Path,
        *,
        credentials: RoomCredentials,
        results_dir: Path,
        policy: SelectionPolicy | None = None,
        callbacks: JobCallbacks | None = None,
        server_url: str | None = None,
        signaling: SignalingClient | None = None,
        room: RoomView | None = None,
        kind: str = TRAIN,
        connect_timeout: float = 30.0,
        models_subdir: str = "models",
        phases: JobPhases | None = None,
        connect: ConnectFn | None = None,
        reconnect_grace: float = RECONNECT_GRACE,
        known_workers: KnownWorkers | None = None,
        prepare: PrepareFn | None = None,
    ):
        if signaling is None and not server_url:
            raise ValueError("RemoteJob needs a live signaling connection or a server URL.")
        self.package = Path(package)
        self.credentials = credentials
        self.results_dir = Path(results_dir)
        self.policy: SelectionPolicy = policy if policy is not None else Auto()
        self.callbacks = callbacks or JobCallbacks()
        self.server_url = server_url or getattr(signaling, "url", "")
        self.kind = kind
        self.connect_timeout = connect_timeout
        self.models_subdir = models_subdir
        self.phases = phases or JobPhases()
        self.phases.subscribe(lambda change: call(self.callbacks.phase, change))
        self._given_signaling, self._given_room = signaling, room
        self._connect = connect or _transport_connect
        self.reconnect_grace = reconnect_grace
        self.reconnects = 0
        """Same-worker reconnects so far (each one after a lost link)."""
        self._resume_on: tuple[WorkerInfo, Any] | None = None  # (worker, channel) after a reconnect
        self._attach_job: str | None = None  # the job to follow again after a reconnect
        self._prepare = prepare
        self.known = known_workers if known_workers is not None else KnownWorkers()
        self._training = TrainingEvents(self.callbacks)
        self.session: JobSession | None = None
        self.worker: WorkerInfo | None = None
        """The worker of the current (or last) attempt."""
        self.lost: list[WorkerLostError] = []
        """Workers that stopped responding under this job, in order."""
        self.tried: set[str] = set()
        """Peer ids that failed an attempt in this job (skipped by next best)."""
        self._failed_at: dict[str, float] = {}  # peer id -> wall time of its last failed attempt
        self.moves: list[tuple[Origin, Outcome, Move]] = []
        """Every retry-table lookup of this job, in order (for tests and logs)."""
        self._stop_early = False
        self._wait_left = float(getattr(self.policy, "wait", 0.0) or 0.0)
        self._origin = Origin.AUTO
        self._candidate: WorkerInfo | None = None
        self._restart_reason = ""

    # ------------------------------------------------------------------ control

    async def stop(self) -> None:
        """Finish the current epoch and keep the model (applied at once if not started)."""
        self._stop_early = True
        if self.session:
            await self.session.stop()

    async def cancel(self) -> None:
        """Kill the job on the worker (cancelling ``run()``'s task does this too)."""
        if self.session:
            await self.session.cancel()

    @property
    def cancel_requested(self) -> bool:
        """Whether the user cancelled the job (then nothing is retried)."""
        return bool(self.session and self.session.cancel_requested)

    @property
    def handle(self) -> JobHandle | None:
        """The running job's identity (``None`` before a worker took it)."""
        if self.session is None or self.worker is None:
            return None
        return JobHandle(
            server_url=self.server_url, room_id=self.credentials.room_id, worker_peer_id=self.worker.peer_id,
            worker_name=self.worker.name, job_id=self.session.job_id, kind=self.kind,
            results_dir=str(self.results_dir),
        )

    # ------------------------------------------------------------------ run

    async def run(self) -> JobSummary:
        """Join (or reuse the connection), select, run, retry by the table; the summary."""
        signaling = self._given_signaling or SignalingClient(
            self.server_url, room_id=self.credentials.room_id, token=self.credentials.token, role=Role.CLIENT.value
        )
        own_signaling = self._given_signaling is None
        room: RoomView | None = None
        own_room = False
        try:
            self.phases.advance(Phase.JOINING, f"room {self.credentials.room_id}")
            if own_signaling:
                await signaling.connect()
            if not isinstance(self.policy, SessionWorker):
                self.phases.advance(Phase.DISCOVERING)
                room = self._given_room
                if room is None or getattr(self.policy, "min_gpu_memory_mb", None):
                    room = RoomView(signaling, worker_filters(getattr(self.policy, "min_gpu_memory_mb", None)),
                                    known=self.known)
                    own_room = True
                    await room.start()
                self.phases.advance(Phase.SELECTING)
            summary = await self._loop(signaling, room)
            call(self.callbacks.finished, summary)
            return summary
        except asyncio.CancelledError:
            if not self.phases.finished:
                self.phases.advance(Phase.CANCELLED, "cancelled")
            raise
        except (SelectionError, TransportError, JobError) as exc:
            if not self.phases.finished:
                cancelled = isinstance(exc, (JobCancelledError, SelectionCancelled))
                self.phases.advance(Phase.CANCELLED if cancelled else Phase.FAILED, str(exc))
            raise
        finally:
            if own_room and room is not None:
                room.close()
            if own_signaling:
                await signaling.close()
            with contextlib.suppress(OSError):
                (self.results_dir / ".incoming").rmdir()  # only when empty
            # The client's cache holds every model it downloaded: same policy as the worker's.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(prune_transfer_cache, default_cache_dir())

    def _first_move(self) -> tuple[Move | str, Any]:
        policy = self.policy
        if isinstance(policy, SessionWorker):
            self._origin = Origin.SESSION
            return "session", policy.peer_id
        if isinstance(policy, DirectWorker):
            self._origin = Origin.DIRECT
            return "pick", policy.peer_id
        if isinstance(policy, Interactive):
            if isinstance(policy.first, Pick):
                self._origin = Origin.PICKED
                return "pick", policy.first.worker.peer_id
            if isinstance(policy.first, NextBest):
                self._origin = Origin.AUTO
                return Move.NEXT_BEST, None
            self._origin = Origin.PICKED
            return Move.ASK, None
        self._origin = Origin.AUTO
        return Move.NEXT_BEST, None

    async def _loop(self, signaling: SignalingClient, room: RoomView | None) -> JobSummary:
        move, target = self._first_move()
        policy = self.policy
        max_runs = max(1, int(getattr(policy, "max_job_attempts", 1)))
        if isinstance(policy, Interactive) and policy.wait and move == Move.ASK and room is not None:
            with contextlib.suppress(SelectionError):  # then ask anyway: the picker shows who is there
                await self._wait(room, policy.wait, None)
        request = ChoiceRequest(room) if room is not None else None
        for _ in range(MAX_MOVES):
            self._candidate = None
            try:
                worker, channel = await self._obtain(move, target, signaling, room, request)
                return await self._run_on(signaling, worker, channel)
            except WorkerLostError as exc:
                self.lost.append(exc)
                if self.cancel_requested or self._stop_early:
                    raise  # "wrap up now": a fresh run elsewhere is not that
                still_there = room is not None and room.get(exc.peer_id) is not None
                outcome, error = (Outcome.LINK_LOST if still_there else Outcome.LOST), exc
                failed = self.worker
            except (SelectionError, TransportError) as exc:
                outcome = classify(exc)
                if outcome is None or isinstance(exc, SelectionCancelled):
                    raise
                if isinstance(exc, WorkerBusyError) and self._origin == Origin.SESSION:
                    raise self._session_busy(exc) from None
                error, failed = exc, self._candidate
            allowed = Allowed(
                ask=isinstance(policy, Interactive),
                wait=self._wait_left > 0 and room is not None,
                attempts=len(self.lost) < max_runs,
                reconnect=self.reconnect_grace > 0 and self.reconnects < MAX_RECONNECTS,
            )
            move = next_move(self._origin, outcome, allowed)
            self.moves.append((self._origin, outcome, move))
            if move == Move.RECONNECT:
                assert isinstance(error, WorkerLostError)
                lost_session = self.session
                self.lost.pop()  # not lost yet: first try to get it back
                self._resume_on = await self._reconnect_same_worker(signaling, error)
                if self._resume_on is not None:
                    self.reconnects += 1
                    # A job the worker accepted keeps running there: follow it again.
                    self._attach_job = lost_session.job_id if lost_session and lost_session._submitted else None
                    move, target = "resume", error.peer_id
                    continue
                self.lost.append(error)
                outcome = Outcome.LOST
                move = next_move(self._origin, outcome, Allowed(
                    ask=allowed.ask, wait=allowed.wait, attempts=allowed.attempts, reconnect=False))
                self.moves.append((self._origin, outcome, move))
            if move == Move.FAIL:
                raise self._final(error, outcome, max_runs)
            if failed is not None:
                self.tried.add(failed.peer_id)
                self._failed_at[failed.peer_id] = time.time()
            notice = self._notice(outcome, failed, error)
            if outcome in (Outcome.LOST, Outcome.LINK_LOST):
                self._restart_reason = notice
                notice += f" (job attempt {len(self.lost) + 1}/{max_runs})"
            self._decide(f"{notice}; {_MOVE_WORDS[move]}.")
            if self.phases.phase != Phase.SELECTING:
                self.phases.advance(Phase.SELECTING, _short(outcome, failed))
            target = failed.peer_id if failed is not None else target
            if request is not None:
                request = ChoiceRequest(room, notice, outcome, failed, frozenset(self.tried))  # type: ignore[arg-type]
        raise SelectionError(f"Gave up after {MAX_MOVES} tries to find a worker for this job.")

    # ------------------------------------------------------------------ moves

    async def _obtain(self, move: Move | str, target: Any, signaling: SignalingClient,
                      room: RoomView | None, request: ChoiceRequest | None) -> tuple[WorkerInfo, Any]:
        """Carry out ``move``: a worker and its open channel, or raise the attempt's error."""
        if move == "resume":
            assert self._resume_on is not None
            (worker, channel), self._resume_on = self._resume_on, None
            return worker, channel
        if move == "session":
            worker = WorkerInfo(peer_id=str(target), role=Role.WORKER.value, metadata={})
            return worker, await self._reserve(signaling, worker)
        assert room is not None
        if move == "pick":
            self._candidate = room.get(str(target)) or WorkerInfo(str(target), Role.WORKER.value, {})
            worker = check_direct(room, str(target))
            return worker, await self._reserve(signaling, worker)
        if move == Move.NEXT_BEST:
            return await self._next_best(signaling, room)
        if move == Move.WAIT:
            # DIRECT waits for that very worker; the others take the first that frees up.
            only = str(target) if self._origin == Origin.DIRECT else None
            worker = await self._wait(room, self._wait_left, only)
            if self._origin != Origin.DIRECT:
                self._origin = Origin.AUTO
            self._candidate = worker
            return worker, await self._reserve(signaling, worker)
        if move == Move.RECONNECT:
            raise NotImplementedError("reconnect moves are carried out by the reconnect handler")
        # ASK
        assert isinstance(self.policy, Interactive) and request is not None
        self._origin = Origin.PICKED
        choice = await self.policy.chooser(request)
        if isinstance(choice, Pick):
            self._candidate = choice.worker
            worker = check_direct(room, choice.worker.peer_id)
            return worker, await self._reserve(signaling, worker)
        if isinstance(choice, WaitForFree):
            self._decide(f"Waiting up to {choice.timeout_s:g} s for a free worker.")
            worker = await self._wait(room, choice.timeout_s, choice.peer_id, budget=False)
            self._origin = Origin.PICKED if choice.peer_id else Origin.AUTO
            self._candidate = worker
            return worker, await self._reserve(signaling, worker)
        self._origin = Origin.AUTO  # NextBest
        return await self._next_best(signaling, room)

    async def _next_best(self, signaling: SignalingClient, room: RoomView) -> tuple[WorkerInfo, Any]:
        self._origin = Origin.AUTO
        policy = self.policy
        skip = frozenset(getattr(policy, "exclude", frozenset())) | self.tried | {lost.peer_id for lost in self.lost}
        view: Any = _Excluding(room, skip) if skip else room

        async def attempt(worker: WorkerInfo) -> Any:
            self._candidate = worker
            return await self._reserve(signaling, worker)

        sel = await auto_select(
            view, attempt, max_attempts=int(getattr(policy, "max_attempts", 3)),
            min_gpu_memory_mb=getattr(policy, "min_gpu_memory_mb", None), on_decision=self._decide,
        )
        return sel.worker, sel.connection

    async def _wait(self, room: RoomView, timeout: float, peer_id: str | None, *, budget: bool = True) -> WorkerInfo:
        """Wait on room events for a free worker (or ``peer_id``), telling ``callbacks.waiting``."""
        self.phases.advance(Phase.WAITING, peer_id or "")
        deadline = time.time() + timeout
        skip = frozenset(getattr(self.policy, "exclude", frozenset())) | {lost.peer_id for lost in self.lost}

        def eligible(worker: WorkerInfo) -> bool:
            # A worker that refused us counts again only once the room reports a new status
            # for it (its "available" may be stale): no hot loop of refusals while waiting.
            failed = self._failed_at.get(worker.peer_id)
            since = room.status_since(worker.peer_id)
            return failed is None or (since is not None and since > failed)

        def report(view: RoomView) -> None:
            busy = [BusyWorker(w.name, w.peer_id, w.status, view.status_since(w.peer_id))
                    for w in view.workers if not w.available]
            call(self.callbacks.waiting, Waiting(busy=busy, deadline=deadline, peer_id=peer_id))

        started = time.monotonic()
        try:
            worker = await wait_for_free(
                room, timeout=timeout, peer_id=peer_id, exclude=skip, eligible=eligible,
                min_gpu_memory_mb=getattr(self.policy, "min_gpu_memory_mb", None), on_change=report,
            )
        finally:
            if budget:
                self._wait_left = max(0.0, self._wait_left - (time.monotonic() - started))
            if self.phases.phase == Phase.WAITING:
                self.phases.advance(Phase.SELECTING, "")
        self.tried.discard(worker.peer_id)  # it freed up: no longer a failed one
        self._failed_at.pop(worker.peer_id, None)
        self._decide(f"{worker.name} is available now.")
        return worker

    async def _reserve(self, signaling: SignalingClient, worker: WorkerInfo) -> Any:
        """Reserve ``worker`` (open the channel); on a refusal the phases go back to SELECTING."""
        self._candidate = worker
        self.phases.advance(Phase.RESERVING, worker.name)
        try:
            channel = await self._connect(signaling, worker.peer_id, self.results_dir / ".incoming", self.connect_timeout)
        except (SelectionError, TransportError):
            self.phases.advance(Phase.SELECTING, f"{worker.name} is not available")
            raise
        try:
            if self._origin == Origin.SESSION:
                # The session string names the worker the user means: its key is the expectation.
                await self._verify(channel, name=name_from_peer_id(worker.peer_id),
                                   advertised=getattr(self.policy, "fingerprint", None), chosen=True)
            else:
                await self._verify(channel, name=worker.name, advertised=worker.fingerprint,
                                   chosen=self._origin != Origin.AUTO)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5.0)
            if not self.phases.finished:
                self.phases.advance(Phase.SELECTING, f"{worker.name} failed the identity check")
            raise
        self.phases.advance(Phase.CONNECTING, f"connected to {worker.name}")
        return channel

    async def _verify(self, channel: Any, *, name: str, advertised: str | None, chosen: bool) -> str:
        """Check the worker's identity before anything is uploaded (see the module docstring).

        ``advertised`` is the key the room (or the session string) says this worker has;
        ``chosen`` says the user picked this very worker (a changed key then warns instead
        of refusing). Returns the verified fingerprint; raises ``WorkerIdentityError``.
        """
        room_id = self.credentials.room_id
        proved = await channel.verify_identity()
        if advertised is not None and proved != advertised:
            raise WorkerIdentityError(
                f"Worker {name} proved key {short_fingerprint(proved)}, not the key {short_fingerprint(advertised)} "
                "it is known by here: it is posing as another worker.",
                fingerprint=proved, expected=advertised,
            )
        trust = self.known.check(room_id, name, proved)
        before = self.known.fingerprint(room_id, name)
        if trust == Trust.CHANGED and not chosen:
            raise WorkerIdentityError(
                f"Worker {name} now has identity key {short_fingerprint(proved)}, not {short_fingerprint(before)} "
                "as when this computer last used it. Choose it yourself to accept the new key.",
                fingerprint=proved, expected=before,
            )
        if trust == Trust.CHANGED:
            self._decide(
                f"WARNING: worker {name}'s identity key changed from {before} to {proved}. If nobody "
                "reinstalled that worker, someone may be posing as it. Continuing because you chose it; "
                "the new key is remembered."
            )
        elif trust == Trust.NEW:
            self._decide(f"First job on worker {name}: remembering its identity key {proved}.")
        else:
            self._decide(f"Worker {name} proved its identity key {short_fingerprint(proved)} (the one used before).")
        self.known.remember(room_id, name, proved)
        return proved

    async def _run_on(self, signaling: SignalingClient, worker: WorkerInfo, channel: Any) -> JobSummary:
        """Run the job once on ``worker`` over ``channel`` (closed afterwards)."""
        try:
            attach, self._attach_job = self._attach_job, None
            if self.worker is not None and self._restart_reason and self.worker.peer_id != worker.peer_id:
                call(self.callbacks.restarted, Restarted(
                    previous=self.worker.name, worker=worker.name, reason=self._restart_reason,
                    attempt=len(self.lost) + 1,
                ))
            self._restart_reason = ""
            if not attach:  # a reattached job goes on with the same model; a fresh run starts over
                self._training.reset(worker.name)
            self.worker = worker
            uploads: list[Upload] = []
            if self._prepare is not None:  # also on a reattach: used if the worker no longer has the job
                self.package, uploads = await self._prepare(worker)
            self.session = JobSession(
                channel, self.package, output_dir=self.results_dir, kind=self.kind, worker=worker,
                phases=self.phases, on_upload=lambda p: call(self.callbacks.upload, p),
                on_log=lambda line: call(self.callbacks.log, line), on_progress=self._training,
                on_file=lambda path: call(self.callbacks.file, path), models_subdir=self.models_subdir,
                on_decision=self._decide, attach_job_id=attach, uploads=uploads,
            )
            if self._stop_early:
                self.session.stop_requested = True
            remove = signaling.add_listener(_watch_departure(worker.peer_id, channel))
            try:
                return await self.session.run()
            finally:
                remove()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5.0)

    async def _reconnect_same_worker(self, signaling: SignalingClient, lost: WorkerLostError) -> tuple[WorkerInfo, Any] | None:
        """The ``RECONNECT`` move: a new channel to the worker whose channel just died, if it
        answers within ``reconnect_grace``; None once it left the room, took another job, or
        stayed silent.

        Each try re-probes the ICE servers (``transport.connect`` does, per attempt), so a
        try made while the network was still down does not spoil the next one. The job then
        goes on on that worker (``job_attach``) or, if the worker no longer has it, runs again
        there; an upload resumes from the bytes the worker kept.
        """
        worker = self.worker or WorkerInfo(peer_id=lost.peer_id, role=Role.WORKER.value, metadata={})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_grace
        self._decide(
            f"Lost the connection to {lost.worker} during {lost.stage} ({lost.reason}); "
            f"reconnecting to the same worker (waiting up to {self.reconnect_grace:.0f} s for it)."
        )
        if self.phases.phase != Phase.SELECTING:
            self.phases.advance(Phase.SELECTING, f"reconnecting to {lost.worker}")
        while loop.time() < deadline:
            try:
                await signaling.wait_registered(max(0.1, deadline - loop.time()))
                peers = await signaling.discover({"role": Role.WORKER.value})
            except (TimeoutError, asyncio.TimeoutError, SignalingError):
                # The signaling link is down too: wait for it, within the grace.
                await asyncio.sleep(min(RECONNECT_PAUSE, max(0.0, deadline - loop.time())))
                continue
            if not any(p.get("peer_id") == lost.peer_id for p in peers):
                self._decide(f"Worker {lost.worker} left the room.")
                return None
            try:
                channel = await self._reserve(signaling, worker)
            except WorkerBusyError:
                self._decide(f"Worker {lost.worker} took another job in the meantime.")
                return None
            except PeerNotFoundError:
                self._decide(f"Worker {lost.worker} left the room.")
                return None
            except TransportError as exc:
                log.info("reconnect to %s failed: %s", lost.worker, exc)
                if self.phases.phase != Phase.SELECTING:
                    self.phases.advance(Phase.SELECTING, f"reconnecting to {lost.worker}")
                await asyncio.sleep(min(RECONNECT_PAUSE, max(0.0, deadline - loop.time())))
                continue
            self._decide(f"Reconnected to {lost.worker}.")
            return worker, channel
        self._decide(f"Worker {lost.worker} did not come back within {self.reconnect_grace:.0f} s.")
        return None

    # ------------------------------------------------------------------ words

    def _decide(self, text: str) -> None:
        log.info("%s", text)
        call(self.callbacks.decision, text)

    def _session_busy(self, exc: WorkerBusyError) -> SessionWorkerBusyError:
        # The worker's own words, which point to room discovery.
        peer = self._candidate.peer_id if self._candidate else "?"
        return SessionWorkerBusyError(f"Worker {peer} is busy: {exc.message}")

    @staticmethod
    def _notice(outcome: Outcome, worker: WorkerInfo | None, error: BaseException) -> str:
        name = worker.name if worker is not None else "The worker"
        if outcome == Outcome.BUSY:
            return f"{name} is busy" if worker is not None else str(error).rstrip(".")
        if outcome == Outcome.VANISHED:
            return f"{name} did not answer (it may have left the room)"
        if outcome == Outcome.UNTRUSTED:
            return f"Refused {name}: {str(error).rstrip('.')}"
        if outcome == Outcome.NONE_FREE:
            return str(error).rstrip(".")
        if isinstance(error, WorkerLostError):
            return f"Worker {error.worker} stopped responding during {error.stage} ({error.reason})"
        return str(error).rstrip(".")

    def _final(self, error: BaseException, outcome: Outcome, max_runs: int) -> BaseException:
        if isinstance(error, WorkerLostError) and self._origin == Origin.AUTO and len(self.lost) > 1:
            return WorkerLostError(
                f"{error} Gave up after {len(self.lost)} worker(s) stopped responding: "
                + ", ".join(lost.worker for lost in self.lost) + ".",
                worker=error.worker, peer_id=error.peer_id, stage=error.stage, reason=error.reason,
            )
        return error


_MOVE_WORDS = {
    Move.NEXT_BEST: "trying the next best worker",
    Move.ASK: "choose another worker",
    Move.WAIT: "waiting for a free worker",
    Move.RECONNECT: "reconnecting to it",
}


def _short(outcome: Outcome, worker: WorkerInfo | None) -> str:
    """The phase detail after a failed attempt ("gpu-a stopped responding")."""
    name = worker.name if worker is not None else "worker"
    return {
        Outcome.BUSY: f"{name} is busy",
        Outcome.VANISHED: f"{name} did not answer",
        Outcome.NONE_FREE: "no worker is free",
        Outcome.LOST: f"{name} stopped responding",
        Outcome.LINK_LOST: f"lost the connection to {name}",
        Outcome.UNTRUSTED: f"{name} failed the identity check",
    }[outcome]


def name_from_peer_id(peer_id: str) -> str:
    """The worker name inside a ``worker-<name>-<12 hex>`` peer id (the peer id otherwise).

    With a session string there is no room metadata; the trust-on-first-use store still
    needs the worker's name, and a worker's peer id carries it.
    """
    parts = peer_id.split("-")
    if len(parts) >= 3 and parts[0] == Role.WORKER.value and len(parts[-1]) == 12:
        return "-".join(parts[1:-1])
    return peer_id


def _watch_departure(peer_id: str, channel: Any) -> Callable[[dict[str, Any]], None]:
    """A signaling listener that tells the channel when its worker leaves the room, so a
    killed worker is noticed in seconds rather than after the heartbeat's dead-after."""

    def on_frame(frame: dict[str, Any]) -> None:
        if frame.get("type") == MessageType.PEER_LEFT and frame.get("peer_id") == peer_id:
            suspect = getattr(channel, "suspect", None)
            if suspect is not None:
                suspect()

    return on_frame


class _Excluding:
    """A RoomView seen without some workers (next best after refusals and losses)."""

    def __init__(self, room: RoomView, exclude: frozenset[str]):
        self._room, self._exclude = room, exclude
        self.signaling = room.signaling

    @property
    def workers(self) -> list[WorkerInfo]:
        """The room's workers minus the excluded ones."""
        return [w for w in self._room.workers if w.peer_id not in self._exclude]

    def trust(self, worker: WorkerInfo) -> Trust:
        """``RoomView.trust`` of the underlying room."""
        return self._room.trust(worker)

    async def wait_for(self, predicate: Callable[[Any], Any], timeout: float) -> Any:
        """``RoomView.wait_for`` evaluated on this filtered view."""
        return await self._room.wait_for(lambda _room: predicate(self), timeout)


__all__ = ["ConnectFn", "JobHandle", "MAX_MOVES", "RemoteJob"]
