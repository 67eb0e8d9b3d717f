"""Files crafted to make ``dfcompress.load`` run code: each is refused before anything runs.

Every attack takes a valid file of a torch.nn model and rewrites only its
constructor, as an attacker would; the checksum stays valid. Where the payload
would leave a trace (a file created, truncated or deleted, a module imported,
the process killed), the test checks that the trace is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from io_files import rewrite_manifest, tiny_net

import dfcompress as dfc
from dfcompress.cli import main
from dfcompress.errors import UnsafeFileError


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    return dfc.save(tiny_net(), tmp_path / "model.safetensors")


def _attack(path: Path, ref: str, kwargs: dict[str, Any], key: str = "factory") -> Path:
    rewrite_manifest(path, lambda m: m.update(constructor={key: ref, "kwargs": kwargs}))
    return path


def _cases(tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    marker, secret, keep = tmp / "MARKER", tmp / "secret.txt", tmp / "keep.txt"
    return [
        ("dfcompress.io:os.system", {"command": f"touch {marker}"}),
        ("dfcompress.io._load:os.system", {"command": f"touch {marker}"}),
        ("dfcompress.io:os.popen", {"cmd": f"touch {marker}"}),
        ("os:system", {"command": f"touch {marker}"}),
        ("subprocess:getoutput", {"cmd": f"touch {marker}"}),
        ("dfcompress.io:load", {"path": str(tmp / "f2.safetensors"), "allow": ["torch"]}),
        ("dfcompress.io._load:load", {"path": str(tmp / "f2.safetensors")}),
        ("torch.serialization:load", {"f": str(tmp / "x.pkl"), "weights_only": False}),
        ("dfcompress.io:torch.load", {"f": str(tmp / "x.pkl")}),
        ("dfcompress.io._format:np.load", {"file": str(tmp / "x.npy"), "allow_pickle": True}),
        ("dfcompress.io:torch.ops.load_library", {"path": str(tmp / "x.so")}),
        ("dfcompress.cli:main", {"argv": ["demo", "--out", str(marker)]}),
        ("dfcompress.io._encodings:np.savetxt", {"fname": str(marker), "X": [1]}),
        ("builtins:open", {"file": str(keep), "mode": "w"}),
        ("os:remove", {"path": str(keep)}),
        ("dfcompress.io._format:np.loadtxt", {"fname": str(secret)}),
        ("builtins:__import__", {"name": "antigravity"}),
        ("dfcompress.errors:require", {"module": "antigravity", "extra": "x"}),
        ("importlib:import_module", {"name": "antigravity"}),
        ("dfcompress.io:os.abort", {}),
        ("os:_exit", {"status": 0}),
        ("dfcompress.io:torch.ones", {"size": [2**17, 2**17]}),
        ("torch:ones", {"size": [2**17, 2**17]}),
        ("dfcompress.models.bnext:bnext", {"variant": "tiny", "allow": ["os"]}),
        ("dfcompress.models.bnext:bnext", {"variant": "tiny", "path": str(marker)}),
        ("dfcompress.data.detectors:npr_timm", {"pretrained_cfg_overlay": {"file": "x"}}),
    ]


def _traces(tmp: Path) -> None:
    assert not (tmp / "MARKER").exists()
    assert (tmp / "keep.txt").read_text() == "keep"
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("index", range(26))
@pytest.mark.parametrize("key", ["factory", "class"])
def test_no_constructor_in_a_file_runs_code(index: int, key: str, victim: Path) -> None:
    tmp = victim.parent
    (tmp / "keep.txt").write_text("keep")
    (tmp / "secret.txt").write_text("TOP-SECRET-CONTENT")
    ref, kwargs = _cases(tmp)[index]
    _attack(victim, ref, kwargs, key)
    with pytest.raises(UnsafeFileError) as info:
        dfc.load(victim)
    assert "TOP-SECRET-CONTENT" not in str(info.value)
    with pytest.raises(UnsafeFileError):
        dfc.load(victim, allow=["os", "builtins", "numpy", "torch", "subprocess", "importlib"])
    _traces(tmp)


def test_the_cli_refuses_the_same_files(victim: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = victim.parent
    (tmp / "keep.txt").write_text("keep")
    _attack(victim, "dfcompress.io:os.system", {"command": f"touch {tmp / 'MARKER'}"})
    out = str(tmp / "out.safetensors")
    assert main(["compress", str(victim), "--recipe", "q8", "--out", out]) == 2
    assert main(["compress", str(victim), "--recipe", "q8", "--out", out, "--allow", "os"]) == 2
    _attack(victim, "dfcompress.cli:main", {"argv": ["demo", "--out", str(tmp / "MARKER")]})
    assert main(["sensitivity", str(victim), "--allow", "dfcompress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("dfcompress: error:") == 3
    _traces(tmp)
    assert not Path(out).exists()


def test_a_file_cannot_reach_torch_nn_functions_or_nested_attributes(victim: Path) -> None:
    for ref in ("torch.nn.functional:relu", "torch.nn:Module.__init__", "torch.nn.modules:os"):
        _attack(victim, ref, {}, "class")
        with pytest.raises(UnsafeFileError, match=r"must be|not an nn\.Module class|defined"):
            dfc.load(victim)


def test_a_class_must_be_named_where_it_is_defined(victim: Path) -> None:
    _attack(victim, "torch.nn:Sequential", {}, "class")  # a re-export
    with pytest.raises(UnsafeFileError, match="defined elsewhere"):
        dfc.load(victim)


def test_a_huge_allowed_model_is_refused_before_allocation(victim: Path) -> None:
    big = [2**16, 2**16, 2**16]
    _attack(victim, "dfcompress.models.bnext:BNext", {"channels": big}, "class")
    with pytest.raises(UnsafeFileError, match=r"lacks|do not fit the rebuilt model"):
        dfc.load(victim)
    _attack(victim, "torch.nn.modules.linear:Linear", {"in_features": 2**20, "out_features": 2**20})
    with pytest.raises(UnsafeFileError):
        dfc.load(victim)


def test_a_registered_factory_takes_only_what_it_declares(victim: Path) -> None:
    _attack(victim, "dfcompress.models.bnext:bnext", {"variant": "tiny", "colour": 1})
    with pytest.raises(UnsafeFileError, match="does not take \\['colour'\\]"):
        dfc.load(victim)


def test_a_factory_cannot_be_registered_to_open_files_or_widen_trust() -> None:
    def evil(path: str = "x") -> torch.nn.Module:
        raise AssertionError("never called")

    with pytest.raises(dfc.DfcompressError, match="a file may never set"):
        dfc.register_factory(evil, name="evil.mod:evil")
    with pytest.raises(dfc.DfcompressError, match="part of save/load"):
        dfc.register_factory(dfc.load)


def test_timm_is_not_imported_unless_allowed(victim: Path) -> None:
    before = "timm" in sys.modules
    _attack(victim, "timm:create_model", {"model_name": "resnet18", "pretrained": True})
    with pytest.raises(UnsafeFileError):
        dfc.load(victim)
    assert ("timm" in sys.modules) == before
