"""tumorsynth_demo: the work folder (version stamp, refusal, --overwrite) and resuming after finished steps.

The full demo (about 12 CPU minutes) is what the README's first command runs; these tests check its
bookkeeping with cheap steps, and that its step list names only commands and trainers that exist.
"""

from __future__ import annotations

import os

import pytest
from conftest import cli

from nnunetv2_tumorsynth.demo import Demo, DemoSettings, Step


def test_workdir_stamp_refusal_and_overwrite(tmp_path):
    work = tmp_path / "demo"
    Demo(DemoSettings(workdir=str(work))).prepare_workdir()
    assert (work / "tumorsynth_demo.json").is_file()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert (work / var).is_dir()
    Demo(DemoSettings(workdir=str(work))).prepare_workdir()  # same version and settings: resumes
    with pytest.raises(FileExistsError, match="--overwrite"):
        Demo(DemoSettings(workdir=str(work), epochs=5)).prepare_workdir()  # other settings
    (work / "keep.txt").write_text("x")
    (work / "nnUNet_results" / "old.txt").write_text("demo output")
    Demo(DemoSettings(workdir=str(work), epochs=5, overwrite=True)).prepare_workdir()
    assert (work / "keep.txt").read_text() == "x", "--overwrite removes only what the demo made"
    assert not (work / "nnUNet_results" / "old.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    for overwrite in (False, True):  # a folder the demo did not make is refused, with or without --overwrite
        with pytest.raises(FileExistsError, match="other files"):
            Demo(DemoSettings(workdir=str(other), overwrite=overwrite)).prepare_workdir()
    assert os.listdir(other) == ["mine.txt"] and (other / "mine.txt").read_text() == "user data"


def test_finished_steps_are_not_run_again(tmp_path, capsys):
    demo = Demo(DemoSettings(workdir=str(tmp_path / "demo")))
    demo.prepare_workdir()
    calls = []
    step = Step("cheap", [["tumorsynth_env", "--trainers-path"]], "a cheap step", prepare=lambda: calls.append(1))
    demo.run(step)
    demo.run(step)
    assert calls == [1]
    out = capsys.readouterr().out
    assert "$ tumorsynth_env --trainers-path" in out and "skipped" in out
    failing = Step("failing", [["tumorsynth_tiny_plans", "-d", "12345"]], "fails")
    with pytest.raises(RuntimeError, match="failing"):
        demo.run(failing)
    assert not os.path.exists(demo.path(".steps", "failing"))


def test_step_list_names_installed_commands_and_existing_trainers(tmp_path):
    from nnunetv2.utilities.find_objects import recursive_find_python_class

    demo = Demo(DemoSettings(workdir=str(tmp_path / "demo")))
    trainers_folder = os.path.dirname(__import__("nnunetv2_tumorsynth_trainers").__file__)
    for step in demo.steps():
        for command in step.commands:
            assert os.path.exists(cli(command[0])), command[0]
            if "-tr" in command:
                name = command[command.index("-tr") + 1]
                found = recursive_find_python_class(trainers_folder, name, "nnunetv2_tumorsynth_trainers")
                if found is None:
                    import nnunetv2

                    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training",
                                                                     "nnUNetTrainer"), name,
                                                        "nnunetv2.training.nnUNetTrainer")
                assert found is not None, f"trainer {name} of step {step.name} does not exist"


def test_verdict_says_plainly_what_a_run_shows():
    from nnunetv2_tumorsynth.demo import verdict

    assert "no conclusion" in verdict(0.0, 0.0, None)
    assert "no conclusion" in verdict(None, 0.0, None)
    assert "helped" in verdict(0.10, 0.25, 0.02) and "+15.0 points" in verdict(0.10, 0.25, 0.02)
    assert "no gain" in verdict(0.30, 0.25, 0.8) and "-5.0 points" in verdict(0.30, 0.25, 0.8)
    assert "no gain" in verdict(0.30, 0.30, None)
