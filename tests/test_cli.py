"""The dfcompress command line, run in-process."""

from __future__ import annotations

import json
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
