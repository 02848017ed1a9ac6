"""Story: a checkpoint from a stranger cannot run code. Our own checkpoints load with
`weights_only=True`; one whose pickle or hyperparameters would run code is refused with one line
naming what it needs and how to opt in, and the code does not run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import TINY, compose_train
from safetensors.torch import save_file

from ddpm_lightning.export import export
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import network_config
from ddpm_lightning.safe_load import load_checkpoint
from ddpm_lightning.train import build


class Payload:
    """Unpickling this writes a marker file (what an attacker's checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def hostile_pickle(tmp_path):
    marker = tmp_path / "pwned"
    module = DiffusionModule(network_config("mlp", (2,), hidden=8), data_shape=(2,))
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, "payload": Payload(marker)}, path)
    return path, marker


def hostile_target(tmp_path):
    """A clean pickle whose network `_target_` would run a shell command when the module is built."""
    marker = tmp_path / "pwned"
    path = tmp_path / "target.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {"network": {"_target_": "os.system", "command": f"touch {marker}"}}}, path)
    return path, marker


# the default run, and a learned variance trained on L_vlb (its importance sampler keeps buffers)
@pytest.mark.parametrize("extra", [[], ["variance=learned_range", "loss=vlb"]])
def test_checkpoints_written_by_train_load_with_weights_only(tmp_path, extra):
    cfg = compose_train(["trainer.accelerator=cpu", "logger=none", *TINY, "trainer.max_steps=1",
                         "trainer.val_check_interval=1", "callbacks.sample_grid.every_n_steps=1", *extra], tmp_path)
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    ckpt = load_checkpoint(path)
    assert {"state_dict", "current_model_state", "hyper_parameters", "optimizer_states", "callbacks"} <= set(ckpt)
    loaded = DiffusionModule.load_from_checkpoint(path)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name  # the EMA weights


@pytest.mark.parametrize("make, needs", [(hostile_pickle, "builtins.exec"), (hostile_target, "network._target_='os.system'")])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, make, needs):
    path, marker = make(tmp_path)
    for load in (lambda: DiffusionModule.load_from_checkpoint(path), lambda: load_checkpoint(path),
                 lambda: export(path, "safetensors", tmp_path / "out")):
        with pytest.raises(ValueError, match="trust_checkpoint=true") as err:
            load()
        assert needs in str(err.value) and "\n" not in str(err.value)
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trust_checkpoint_opts_in(tmp_path):
    path, marker = hostile_pickle(tmp_path)
    module = DiffusionModule.load_from_checkpoint(path, trust_checkpoint=True)
    assert marker.exists() and module.data_shape == (2,)  # trusted: the payload ran, as asked


def test_export_cli_refuses_a_hostile_checkpoint_in_one_line(tmp_path):
    path, marker = hostile_pickle(tmp_path)
    res = subprocess.run([sys.executable, "-m", "ddpm_lightning.export", f"ckpt={path}", "format=onnx", f"out={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0
    assert "builtins.exec" in res.stderr and "trust_checkpoint=true" in res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.ckpt"]  # Hydra wrote no outputs/ or .hydra/


def test_a_safetensors_folder_whose_hparams_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "hparams.json").write_text(json.dumps({"network": {"_target_": "os.system", "command": f"touch {marker}"}}))
    save_file({"network.w": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="network._target_='os.system'.*trust_checkpoint=true") as err:
        DiffusionModule.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and not marker.exists()
