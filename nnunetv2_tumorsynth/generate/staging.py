"""Writing a generated dataset: cases written atomically into a staging folder that survives interruptions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket

import numpy as np
import SimpleITK as sitk

from nnunetv2_tumorsynth.files import atomic_path, write_json_atomic
from nnunetv2_tumorsynth.generate.raw_grid import SourceCase
from nnunetv2_tumorsynth.generate.settings import SETTINGS_JSON, GenerateError
from nnunetv2_tumorsynth.generate.source import GenerationSource, check_same_geometry, read_raw_header


def write_case(folder: str, case: str, image: np.ndarray, label: np.ndarray, source: SourceCase,
                file_ending: str) -> None:
    """imagesTr/<case>_0000 and labelsTr/<case>, each atomically, in the source's geometry."""
    for array, reference, path in (
            (image, source.raw_image, os.path.join(folder, "imagesTr", f"{case}_0000{file_ending}")),
            (label, source.raw_label, os.path.join(folder, "labelsTr", f"{case}{file_ending}"))):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(reference)
        with atomic_path(path) as tmp:
            sitk.WriteImage(out, tmp, True)


def copy_real_case(folder: str, source: GenerationSource, case: str) -> None:
    """A real training case copied unchanged, after checking that both files are complete and share one geometry."""
    image_file, label_file = source.files(case)
    for path in (image_file, label_file):
        if not os.path.isfile(path):
            raise GenerateError(f"raw file {path} of case {case} is missing")
    check_same_geometry(image_file, read_raw_header(image_file, case), label_file, read_raw_header(label_file, case))
    for src, dst in ((image_file, os.path.join(folder, "imagesTr", f"{case}_0000{source.file_ending}")),
                     (label_file, os.path.join(folder, "labelsTr", f"{case}{source.file_ending}"))):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Staging:
    """The persistent staging folder ``$nnUNet_raw/.Dataset<ID>_<name>.partial`` and its lock."""

    def __init__(self, raw_root: str, full_name: str):
        self.folder = os.path.join(raw_root, f".{full_name}.partial")
        self.lock = os.path.join(self.folder, ".lock")

    def path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    def open(self, identity: dict, restart: bool) -> bool:
        """Create or resume; returns True when resuming. Refuses other settings unless ``restart``."""
        settings_file = self.path(SETTINGS_JSON)
        resuming = os.path.isfile(settings_file)
        if resuming:
            self._take_lock()
            with open(settings_file) as f:
                before = json.load(f)["identity"]
            differs = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
            if differs and not restart:
                self.release_lock()
                raise GenerateError(
                    f"{self.folder} holds an unfinished generation with other settings ("
                    + "; ".join(f"{k}: {before.get(k)!r} then, {identity.get(k)!r} now" for k in differs)
                    + "). Re-run with the same settings to finish it, or pass --overwrite to start again")
            if differs:
                self.release_lock()
                shutil.rmtree(self.folder)
                resuming = False
        if not resuming:
            os.makedirs(self.folder, exist_ok=True)
            self._take_lock()
        for sub in ("imagesTr", "labelsTr", "records"):
            os.makedirs(self.path(sub), exist_ok=True)
            for name in os.listdir(self.path(sub)):  # temporary files of a killed run (never renamed into place)
                if name.startswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path(sub, name))
        if not resuming:
            write_json_atomic({"identity": identity}, settings_file)
        return resuming

    def _take_lock(self) -> None:
        host = socket.gethostname()
        if os.path.isfile(self.lock):
            with contextlib.suppress(ValueError, OSError):
                with open(self.lock) as f:
                    owner = json.load(f)
                if owner.get("host") == host and owner.get("pid") != os.getpid() and _alive(int(owner["pid"])):
                    raise GenerateError(f"another tumorsynth_generate (pid {owner['pid']}) is writing {self.folder}")
        write_json_atomic({"pid": os.getpid(), "host": host}, self.lock)

    def release_lock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.lock)

    def records(self) -> dict[str, dict]:
        out = {}
        for name in sorted(os.listdir(self.path("records"))):
            if name.endswith(".json") and not name.startswith("."):
                with open(self.path("records", name)) as f:
                    record = json.load(f)
                out[record["image"]] = record
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
