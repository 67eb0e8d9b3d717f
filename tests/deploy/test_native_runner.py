"""ExecuTorch's C++ runtime alone (dfcompress.deploy.native) runs what the Python runtime runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from _xnnpack_nets import resnet_like

pytest.importorskip("executorch")

import dfcompress
from dfcompress.deploy import Artifact
from dfcompress.deploy._measure import fresh_peak_rss, measure_artifacts
from dfcompress.deploy.native import native_runner, run_native
from dfcompress.errors import DfcompressError

G = torch.Generator().manual_seed(0)
CALIB = torch.randn(16, 3, 32, 32, generator=G)
TEST = torch.randn(12, 3, 32, 32, generator=G)


@pytest.fixture(scope="module")
def runner_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("native")
    try:
        native_runner(where)
    except DfcompressError as e:
        if "no C++ compiler" in str(e):
            pytest.skip(str(e))
        raise
    return where


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    q = dfcompress.quantize(
        resnet_like(), "int8", calibration=CALIB, target="xnnpack", progress=False
    )
    return dfcompress.export(q, tmp_path_factory.mktemp("x") / "q.pte", TEST, max_batch=8)


def test_int8_file_gives_the_python_runtimes_outputs(
    int8_artifact: Artifact, runner_cache: Path
) -> None:
    for batch in (TEST[:1], TEST[1:6], TEST[:8]):
        run = run_native(int8_artifact.path, batch, cache_dir=runner_cache)
        assert run.outputs.shape == (batch.shape[0], 2)
        # the same kernels on the same codes: bit for bit
        assert torch.equal(run.outputs, int8_artifact.run(batch))


def test_float_file_gives_the_eager_models_outputs(tmp_path: Path, runner_cache: Path) -> None:
    net = resnet_like().eval()
    art = dfcompress.export(net, tmp_path / "f.pte", TEST, max_batch=4)
    run = run_native(art.path, TEST[:3], cache_dir=runner_cache)
    with torch.no_grad():
        torch.testing.assert_close(run.outputs, net(TEST[:3]), atol=1e-4, rtol=1e-3)


def test_runtime_alone_holds_a_fraction_of_a_python_process(
    int8_artifact: Artifact, runner_cache: Path
) -> None:
    # The point of the runner: its memory is the file's and the runtime's, without the
    # ~370 MB that importing torch costs the Python process running the same file.
    run = run_native(int8_artifact.path, TEST[:1], cache_dir=runner_cache)
    python = fresh_peak_rss("xnnpack", int8_artifact.path, (3, 32, 32))
    assert 0 < run.peak_rss_bytes < python / 4


def test_measured_cost_of_a_pte_has_the_runtime_alone(
    int8_artifact: Artifact, runner_cache: Path
) -> None:
    # measure_artifacts builds its runner in this process's private folder
    cost = measure_artifacts({"q": int8_artifact}, TEST[:2], batch_n=2, repeats=1)["q"]
    assert cost.runtime_rss_bytes is not None and cost.peak_rss_bytes is not None
    assert 0 < cost.runtime_rss_bytes < cost.peak_rss_bytes / 4
    assert cost.as_dict()["runtime_rss_mb"] == cost.runtime_rss_bytes / 1e6


def test_runner_is_built_once_per_cache(runner_cache: Path) -> None:
    first = native_runner(runner_cache)
    stamp = first.stat().st_mtime_ns
    again = native_runner(runner_cache)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert [p.name for p in runner_cache.iterdir()] == [first.name]


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (torch.randn(2, 3, 31, 32), "items of shape (3,32,32)"),
        (torch.randn(9, 3, 32, 32), "batches of 1 to 8"),
    ],
)
def test_inputs_the_file_cannot_take_are_refused_with_its_shape(
    int8_artifact: Artifact, runner_cache: Path, batch: torch.Tensor, words: str
) -> None:
    with pytest.raises(DfcompressError, match="could not run") as err:
        run_native(int8_artifact.path, batch, cache_dir=runner_cache)
    assert words in str(err.value)


def test_bad_arguments_are_refused(
    int8_artifact: Artifact, runner_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(DfcompressError, match="is not a file"):
        run_native(tmp_path / "missing.pte", TEST[:1], cache_dir=runner_cache)
    with pytest.raises(DfcompressError, match="is not a tensor"):
        run_native(int8_artifact.path, [[1.0]], cache_dir=runner_cache)  # type: ignore[arg-type]
    with pytest.raises(DfcompressError, match="NaN or Inf"):
        run_native(int8_artifact.path, TEST[:1] * float("nan"), cache_dir=runner_cache)
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a program" * 100)
    with pytest.raises(DfcompressError, match="could not run"):
        run_native(junk, TEST[:1], cache_dir=runner_cache)


def test_default_runner_lives_in_a_private_folder_of_this_process(runner_cache: Path) -> None:
    built = native_runner()
    assert built == native_runner()  # built once per process
    folder = built.parent
    assert folder != runner_cache and folder.name.startswith("dfcompress-native-")
    assert folder.stat().st_mode & 0o077 == 0  # nobody else can swap the program


def test_missing_compiler_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DfcompressError, match=re.escape("no C++ compiler found")):
        native_runner(tmp_path)
    assert not any(tmp_path.iterdir())


def test_input_batch_is_left_as_it_was(int8_artifact: Artifact, runner_cache: Path) -> None:
    batch = TEST[:2].clone()
    run_native(int8_artifact.path, batch, cache_dir=runner_cache)
    assert torch.equal(batch, TEST[:2])
