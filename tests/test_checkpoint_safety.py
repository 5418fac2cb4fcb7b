"""Checkpoints run no code when loaded unless trusted: the plugin leaves mmengine alone, the tools load weights-only."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")

import numpy as np  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint  # noqa: E402

from dynnorm.integrations import mm_checkpoint  # noqa: E402

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parent.parent
SHAPES_DET = ROOT / "configs/mmdet/mask-rcnn_r18-w16_fpn_sn-all_1xb2-1k_shapes.py"


class TouchOnLoad:
    """Unpickles as ``Path(marker).touch()``: the code a checkpoint can run when loaded as a full pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def code_running_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"meta": {"iter": 2}, "state_dict": {"w": torch.ones(2)}, "payload": TouchOnLoad(marker)}, path)
    return path


def runner_style_checkpoint(path: Path) -> dict:
    """What mmengine's Runner writes besides tensors: HistoryBuffers, numpy values, Counter, OrderedDict."""
    history = HistoryBuffer()
    history.update(np.float64(0.5))
    checkpoint = {"meta": {"iter": 2, "seed": np.int64(7), "dataset_meta": {"palette": np.zeros((2, 3), np.uint8)}},
                  "state_dict": OrderedDict(w=torch.ones(2)),
                  "message_hub": {"log_scalars": OrderedDict({"train/loss": history}),
                                  "runtime_info": OrderedDict(iter=2, lr=np.float32(0.02))},
                  "param_schedulers": [{"milestones": Counter([3, 5])}]}
    torch.save(checkpoint, path)
    return checkpoint


@pytest.fixture
def restore_mmengine_loaders():
    """The tools install their loader process-wide: give the rest of the session mmengine's own back."""
    schemes = CheckpointLoader._schemes.copy()
    yield
    CheckpointLoader._schemes = schemes


def test_importing_the_plugin_leaves_checkpoint_loading_to_mmengine_and_torch(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = code_running_checkpoint(tmp_path / "evil.pth", marker)
    code = (
        "import pickle, sys\n"
        "from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_from_local\n"
        "before = CheckpointLoader._schemes.copy()\n"
        "import dynnorm.integrations.mmengine\n"
        "assert CheckpointLoader._schemes == before\n"
        "assert CheckpointLoader._get_checkpoint_loader('') is load_from_local\n"
        "try:\n"
        "    _load_checkpoint(sys.argv[1])\n"
        "except pickle.UnpicklingError as error:\n"
        "    assert 'Weights only load failed' in str(error)\n"
        "else:\n"
        "    raise SystemExit('the checkpoint was loaded')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    subprocess.run([sys.executable, "-c", code, str(checkpoint)], check=True, cwd=ROOT, env=env, timeout=300)
    assert not marker.exists()


def test_runner_checkpoints_load_weights_only_through_the_tools_loader(tmp_path, restore_mmengine_loaders):
    path = tmp_path / "iter_2.pth"
    saved = runner_style_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path)  # torch >= 2.6 on its own

    mm_checkpoint.install_checkpoint_loader()
    loaded = _load_checkpoint(str(path), map_location="cpu")  # the Runner's resume / load_from path
    assert loaded["meta"]["seed"] == 7 and isinstance(loaded["meta"]["seed"], np.int64)
    np.testing.assert_array_equal(loaded["meta"]["dataset_meta"]["palette"], saved["meta"]["dataset_meta"]["palette"])
    assert loaded["param_schedulers"][0]["milestones"] == Counter([3, 5])
    assert loaded["message_hub"]["runtime_info"]["lr"] == np.float32(0.02)
    history = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert history.current() == 0.5 and history.mean() == 0.5
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_a_checkpoint_that_runs_code_is_refused_with_the_way_to_trust_it(tmp_path, restore_mmengine_loaders):
    marker = tmp_path / "ran"
    path = code_running_checkpoint(tmp_path / "evil.pth", marker)
    mm_checkpoint.install_checkpoint_loader(trusted=[tmp_path / "another.pth"])
    with pytest.raises(mm_checkpoint.UntrustedCheckpointError,
                       match=r"refused to load .*evil\.pth.*--trust-checkpoint.*trust_checkpoint = True"):
        _load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()


def test_a_trusted_checkpoint_loads_as_a_full_pickle(tmp_path, restore_mmengine_loaders, monkeypatch):
    marker = tmp_path / "ran"
    code_running_checkpoint(tmp_path / "evil.pth", marker)
    monkeypatch.chdir(tmp_path)
    mm_checkpoint.install_checkpoint_loader(trusted=[tmp_path / "evil.pth"])
    loaded = _load_checkpoint("./evil.pth", map_location="cpu")  # same file, other spelling
    assert marker.exists()  # the user opted in: the pickle ran
    assert loaded["meta"]["iter"] == 2


@pytest.mark.parametrize(("owner", "name"), [(HistoryBuffer, "__init__"), (HistoryBuffer, "register_statistics"),
                                             (Counter, "fromkeys"), (np.ndarray, "tofile")])
def test_getattr_in_a_checkpoint_resolves_only_history_buffer_statistics(tmp_path, owner, name):
    class Lookup:
        def __reduce__(self):
            return getattr, (owner, name)

    path = tmp_path / "lookup.pth"
    torch.save({"value": Lookup()}, path)
    with pytest.raises(mm_checkpoint.UntrustedCheckpointError, match=f"getattr.*{name}"):
        mm_checkpoint.load_weights_only(path)


def _config(**entries) -> Config:
    return Config(dict(work_dir="work", **entries))


def test_trusted_checkpoints_are_the_loaded_one_and_only_when_the_config_says_so(tmp_path):
    assert mm_checkpoint.trusted_checkpoints(_config(load_from="a.pth")) == []
    assert mm_checkpoint.trusted_checkpoints(_config(load_from="a.pth", trust_checkpoint=True)) == ["a.pth"]
    assert mm_checkpoint.trusted_checkpoints(_config(trust_checkpoint=True)) == []

    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_4.pth"))
    auto_resume = Config(dict(work_dir=str(work_dir), resume=True, load_from=None, trust_checkpoint=True))
    assert mm_checkpoint.trusted_checkpoints(auto_resume) == [str(work_dir / "iter_4.pth")]

    with pytest.raises(TypeError, match="trust_checkpoint must be True or False, got 'yes'"):
        mm_checkpoint.trusted_checkpoints(_config(load_from="a.pth", trust_checkpoint="yes"))


def test_the_trust_flag_of_the_tools_sets_the_config_key(monkeypatch):
    from tools import train

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert "trust_checkpoint" not in train.configure(train.parse_args([str(SHAPES_DET)]))
    # reading the command line leaves the environment alone (a LOCAL_RANK would make later DDP launches wait)
    assert "LOCAL_RANK" not in os.environ
    assert train.configure(train.parse_args([str(SHAPES_DET), "--trust-checkpoint"])).trust_checkpoint is True


@pytest.mark.slow
def test_tools_test_refuses_a_checkpoint_that_runs_code_until_told_to_trust_it(tmp_path):
    pytest.importorskip("mmdet")
    marker = tmp_path / "ran"
    checkpoint = code_running_checkpoint(tmp_path / "evil.pth", marker)
    command = [sys.executable, "tools/test.py", str(SHAPES_DET), str(checkpoint), "--work-dir", str(tmp_path / "test"),
               "--cfg-options", "test_dataloader.dataset.indices=2"]  # two test images: the load is what matters
    env = dict(os.environ, OMP_NUM_THREADS="1")

    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0
    assert "UntrustedCheckpointError" in refused.stderr and "--trust-checkpoint" in refused.stderr
    assert not marker.exists()

    trusted = subprocess.run(command + ["--trust-checkpoint"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
    assert trusted.returncode == 0, trusted.stderr[-4000:]
    assert marker.exists()
