"""Commands check the extras they need before any work starts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dfcompress._extras import EXTRAS, missing_extras, require_extras
from dfcompress.cli import main
from dfcompress.errors import DfcompressError, MissingExtraError


def _uninstall(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled: find_spec gives None and import fails."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_every_runtime_extra_of_pyproject_is_known() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(EXTRAS) == set(extras) - {"dev", "docs", "all"}


def test_installed_extras_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_extras("report", "demo") == ()
    require_extras("report", "demo", what="x")


def test_the_message_names_the_extra_its_module_and_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _uninstall(monkeypatch, "jinja2", "skimage")
    assert missing_extras("report", "demo", "report") == ("report", "demo")
    with pytest.raises(MissingExtraError) as e:
        require_extras("report", "demo", what="dfcompress demo")
    msg = str(e.value)
    assert msg.startswith("dfcompress demo needs the extra(s) [report], [demo]")
    assert "missing modules: jinja2, skimage" in msg
    assert msg.endswith("pip install 'dfcompress[report,demo]'")
    assert isinstance(e.value, ImportError)


def test_an_unknown_extra_is_refused() -> None:
    with pytest.raises(DfcompressError, match=r"extras=\['reports'\] are unknown: use some of"):
        require_extras("reports", what="x")


def test_demo_without_report_fails_at_once_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _uninstall(monkeypatch, "matplotlib")
    out = tmp_path / "demo"
    start = time.perf_counter()
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "dfcompress demo needs the extra(s) [report]" in err
    assert "pip install 'dfcompress[report]'" in err
    assert not out.exists()


def test_run_demo_checks_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dfcompress.demo as demo

    def no_work(*args: object) -> None:
        raise AssertionError("the demo started without its extras")

    monkeypatch.setattr(demo, "_run", no_work)
    _uninstall(monkeypatch, "PIL")
    with pytest.raises(MissingExtraError, match=r"\[demo\]"):
        demo.run_demo(tmp_path / "demo", progress=False)


def test_report_on_proxy_data_needs_the_demo_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _uninstall(monkeypatch, "skimage")
    args = ["report", "dfcompress.demo:demo_detector", "--recipes", "q8", "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 2
    assert "dfcompress report needs the extra(s) [demo]" in capsys.readouterr().err


def test_sensitivity_plot_needs_the_report_extra_before_scanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    sensitivity = importlib.import_module("dfcompress.prune.sensitivity")

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned without the extra")

    monkeypatch.setattr(sensitivity, "scan", no_scan)
    _uninstall(monkeypatch, "matplotlib")
    args = ["sensitivity", "dfcompress.demo:demo_detector", "--input-shape", "3,32,32"]
    assert main([*args, "--plot", str(tmp_path / "s.png")]) == 2
    assert "dfcompress sensitivity needs the extra(s) [report]" in capsys.readouterr().err


def test_compress_without_data_needs_no_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _uninstall(monkeypatch, "matplotlib", "jinja2", "skimage", "PIL")
    out = tmp_path / "q8.safetensors"
    args = ["compress", "dfcompress.demo:demo_detector", "--recipe", "q8", "--out", str(out)]
    assert main([*args, "--input-shape", "3,32,32", "--no-progress"]) == 0
    assert out.is_file()


def test_the_working_directory_is_importable_only_for_names_given_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["compress", "nope.safetensors", "--recipe", "q8", "--out", "x"]) == 2
    assert str(tmp_path) not in sys.path
    (tmp_path / "cwd_models_extras.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))\n"
    )
    args = ["compress", "cwd_models_extras:build", "--recipe", "q8", "--out", "y.safetensors"]
    assert main([*args, "--input-shape", "3,8,8", "--no-progress"]) == 0
    assert (tmp_path / "y.safetensors").is_file()
