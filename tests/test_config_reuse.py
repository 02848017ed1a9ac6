"""Story: reuse the package's configs from another project after `pip install`, through a
Hydra search path (`pkg://ddpm_lightning.conf`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

USER_CONFIG = textwrap.dedent(
    """
    # my_project/conf/my_train.yaml: everything from ddpm_lightning, two values changed
    defaults:
      - train                    # ddpm_lightning's root config, found through the search path
      - _self_
    hydra:
      searchpath:
        - pkg://ddpm_lightning.conf
    trainer:
      max_steps: 2
    tags: [my_project]
    """
)

USER_SCRIPT = textwrap.dedent(
    """
    import hydra
    from ddpm_lightning.train import train

    @hydra.main(version_base="1.3", config_path="conf", config_name="my_train")
    def main(cfg):
        metrics = train(cfg)
        print("STEPS", cfg.trainer.max_steps, "LOSS", metrics["train/loss"])

    if __name__ == "__main__":
        main()
    """
)


def _project(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "my_train.yaml").write_text(USER_CONFIG)
    (tmp_path / "my_train.py").write_text(USER_SCRIPT)
    return tmp_path


def test_compose_through_the_search_path(tmp_path):
    project = _project(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(project / "conf"), version_base="1.3"):
        cfg = compose("my_train", overrides=["schedule=cosine", "parameterization=v"])
    assert cfg.trainer.max_steps == 2 and list(cfg.tags) == ["my_project"]
    assert cfg.schedule.name == "cosine" and cfg.parameterization.name == "v"
    assert cfg.data._target_ == "ddpm_lightning.data.DigitsDataModule"


def test_a_script_in_another_project_trains_with_the_package_configs(tmp_path):
    project = _project(tmp_path)
    tiny = ["network.block_out_channels=[16,16,32]", "network.attention_head_dim=8", "network.norm_num_groups=8",
            "data.batch_size=8", "trainer.accelerator=cpu", "logger=none", "callbacks=none",
            "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'out'}"]
    res = subprocess.run([sys.executable, "my_train.py", *tiny], cwd=project, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "STEPS 2 LOSS" in res.stdout
