"""What an inference entry names outside its package, found on the worker: videos the client
sent on their own, videos on the worker's data roots, and models by id.

* A sent video (``video: {sha256, suffix}``) must be a file this client sent on this
  channel (``received``); it is moved into the job's ``videos/`` folder.
* A data-root video (``video: {root, path, size, sample}``) is checked by
  ``core.data_roots.resolve_in_root`` (inside a declared root, links resolved, size and
  sampled blocks the client's) and read where it lies; nothing is written there.
* A model id is a deterministic model zip (``core.package.write_model_zip``) this client
  sent, or one the worker holds in its transfer cache (a model it trained, or one sent
  before); it is unpacked once per job by ``safe_extract`` into ``models/m-<id>``.

Every refusal is an ``InputError`` whose message a user can act on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sleap_rtc.core.data_roots import DataRootError, resolve_in_root
from sleap_rtc.core.package import InferenceJob, PackageError, inside, safe_extract


class InputError(ValueError):
    """A video or model an inference names is not available on this worker."""


@dataclass
class JobInputs:
    """The files a job may use beyond its package (see the module docstring)."""

    received: dict[str, Path] = field(default_factory=dict)
    """sha256 -> path of each verified file this job's client sent."""
    cache_dir: Path | None = None
    """The worker's transfer cache (``files/<sha256>``): models it holds."""
    data_roots: dict[str, Path] = field(default_factory=dict)
    """Root name -> folder (resolved), read-only."""
    _models: dict[str, Path] = field(default_factory=dict)

    def video(self, inf: InferenceJob, work: Path) -> str:
        """The path sleap-nn reads for ``inf``'s video (placed in ``work`` or on a root)."""
        video = inf.video or {}
        if "sha256" not in video:
            try:
                return str(resolve_in_root(self.data_roots, video))
            except DataRootError as exc:
                raise InputError(str(exc)) from None
        dest = inside(work, inf.data_path)
        if dest.is_file():
            return inf.data_path  # a second entry on the same video
        src = self.received.get(video["sha256"])
        if src is None or not Path(src).is_file():
            raise InputError(f"The video {video['sha256'][:12]}… named by the job was never sent to this worker.")
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.replace(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        return inf.data_path

    def model(self, model_id: str, work: Path) -> str:
        """The unpacked folder (relative to ``work``) of the model ``model_id``."""
        if model_id in self._models:
            return self._models[model_id].relative_to(work).as_posix()
        src = self.received.get(model_id)
        if (src is None or not Path(src).is_file()) and self.cache_dir is not None:
            held = self.cache_dir / "files" / model_id
            src = held if held.is_file() else None
        if src is None:
            raise InputError(f"This worker does not hold the model {model_id[:12]}… (it may have been pruned "
                             "from its cache): send the model folder again.")
        dest = work / "models" / f"m-{model_id[:16]}"
        try:
            safe_extract(src, dest)
        except PackageError as exc:
            raise InputError(f"Model {model_id[:12]}…: {exc}") from None
        if not (dest / "training_config.yaml").is_file() and not any(dest.glob("*.yaml")) and not any(dest.glob("*.json")):
            raise InputError(f"Model {model_id[:12]}… has no training config; is it a sleap-nn model folder?")
        self._models[model_id] = dest
        return dest.relative_to(work).as_posix()


__all__ = ["InputError", "JobInputs"]
