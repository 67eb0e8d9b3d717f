"""The dfcompress command line, run in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dfcompress.cli import main


@pytest.mark.parametrize("command", [[], ["demo"], ["compress"], ["report"], ["sensitivity"]])
def test_help_explains_each_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dfcompress")
    if command == ["compress"]:
        assert "--recipe" in out and "q8-p50" in out
    if not command:
        for sub in ("demo", "compress", "report", "sensitivity"):
            assert sub in out


def test_a_bad_recipe_is_one_line_and_a_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compress",
            "dfcompress.demo:demo_detector",
            "--recipe",
            "q9-p50",
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dfcompress: error: unknown recipe token 'q9'")
    assert "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_missing_model_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", "nope.safetensors", "--recipe", "q8", "--out", "x"]) == 2
    assert "no such model file: nope.safetensors" in capsys.readouterr().err


def test_compress_writes_a_file_that_records_its_recipe(tmp_path: Path) -> None:
    from dfcompress.io import load

    out = tmp_path / "small.safetensors"
    assert (
        main(
            [
                "compress",
                "dfcompress.demo:demo_detector",
                "--recipe",
                "q4",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert load(out).dfc_history[-1]["recipe"] == "q4"


def test_quick_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--quick",
            "--out",
            str(out),
            "--recipes",
            "q16,q8,s50",
            "--n-test",
            "32",
            "--no-progress",
            "--eager",
        ]
    )
    assert code == 0
    assert "report written to" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in data["summary"]] == ["baseline", "q16", "q8", "s50"]
    base = data["summary"][0]
    assert base["auc"] is not None and base["auc"] > 0.8  # the shipped detector works
    assert (
        next(r for r in data["summary"] if r["model"] == "s50")["size_bytes"] < base["size_bytes"]
    )
    assert (out / "report.html").is_file() and (out / "roc.png").is_file()


USER_MODELS = """
import torch
from torch import nn


class Net(nn.Module):
    '''Takes 32 x 32 images only: no input shape can be guessed.'''

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 30 * 30, 2)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 2)
    )


def build():
    torch.manual_seed(0)
    return Net()
"""


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> str:
    """A working directory holding the user's own ``<module>.py``, as a user runs the CLI."""
    (tmp_path / f"{module}.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return module


def test_data_free_sensitivity_needs_and_takes_an_input_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = _project(tmp_path, monkeypatch, "cli_models_sensitivity")
    assert main(["sensitivity", f"{mod}:net", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "accepts no input of shape" in err
    assert "--input-shape C,H,W" in err and "--data DATA" in err
    args = ["sensitivity", f"{mod}:net", "--input-shape", "3,32,32", "--samples", "4"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| layer |" in out and "| 4 |" in out  # the head (index 4) was scanned


def test_data_free_compress_with_an_input_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from dfcompress.io import load

    mod = _project(tmp_path, monkeypatch, "cli_models_compress")
    out = tmp_path / "small.safetensors"
    args = ["compress", f"{mod}:net", "--recipe", "q8-p50", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    assert "--input-shape C,H,W" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--input-shape", "3x32x32"]) == 0
    small = load(out)
    assert small.dfc_history[-1]["recipe"] == "q8-p50"
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("shape", ["3,0,32", "3,a", ""])
def test_a_bad_input_shape_is_a_usage_error(shape: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sensitivity", "dfcompress.demo:demo_detector", "--input-shape", shape]
    assert main(args) == 2
    assert f"argument --input-shape: {shape!r} is not a shape" in capsys.readouterr().err


def test_factory_builds_a_files_skeleton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    import dfcompress as dfc

    mod = _project(tmp_path, monkeypatch, "cli_models_factory")
    sys.path.insert(0, str(tmp_path))
    path = dfc.save(importlib.import_module(mod).build(), tmp_path / "net.safetensors")
    args = ["sensitivity", str(path), "--input-shape", "3,32,32", "--samples", "4"]
    assert main([*args, "--no-progress"]) == 2  # the file names a class of an unallowed package
    assert "cli_models_factory" in capsys.readouterr().err
    assert main([*args, "--factory", f"{mod}:build", "--no-progress"]) == 0
    assert "| fc |" in capsys.readouterr().out
    assert main([*args, "--allow", mod, "--no-progress"]) == 0  # or allow its classes
    assert main(["sensitivity", f"{mod}:build", "--factory", f"{mod}:build"]) == 2
    assert "drop --factory" in capsys.readouterr().err
