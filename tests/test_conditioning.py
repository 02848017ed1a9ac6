"""The conditioning seam (`ddpm_lightning.conditioning`): class labels through the module, the
networks and the configs; classifier-free guidance's dropout and null class; one line per bad input."""

from __future__ import annotations

import pytest
import torch

from ddpm_lightning.conditioning import ClassConditioning, Conditioning, build_conditioning
from ddpm_lightning.guidance import ClassifierFreeGuidance
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import MLPDenoiser, UNet, network_config

TINY = {"block_out_channels": [16, 16, 32], "attention_head_dim": 8, "norm_num_groups": 8}
SHAPE = (1, 16, 16)


def class_module(k: int = 3, **kw) -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(network_config("unet_small", SHAPE, **TINY), data_shape=SHAPE,
                           conditioning={"type": "class", "num_classes": k, **kw})


def test_prepare_broadcasts_checks_and_expands_all():
    c = ClassConditioning(4)
    assert c.prepare({"class": 2}, 3)["class"].tolist() == [2, 2, 2]
    assert c.prepare({"class": [0, 3, 1]}, 3)["class"].tolist() == [0, 3, 1]
    assert c.prepare({"class": torch.tensor([1])}, 2)["class"].tolist() == [1, 1]
    assert c.prepare({"class": "all"}, 6)["class"].tolist() == [0, 1, 2, 3, 0, 1]
    for bad, msg in [({"class": 4}, r"class 4 is outside \[0, 4\)"), ({"class": -1}, "class -1 is outside"),
                     ({"class": [1, 2]}, "2 class labels for 3 samples"), ({"class": 1.5}, "must be integers"),
                     (None, "this model is class-conditional"), ({"image": 1}, "takes cond=")]:
        with pytest.raises(ValueError, match=msg):
            c.prepare(bad, 3)


def test_balanced_depends_on_the_sample_index_only():
    c = ClassConditioning(10)
    assert c.balanced(range(8, 13))["class"].tolist() == [8, 9, 0, 1, 2]
    whole = c.balanced(30)["class"]
    assert torch.bincount(whole).tolist() == [3] * 10
    assert torch.equal(torch.cat([c.balanced(range(0, 7))["class"], c.balanced(range(7, 30))["class"]]), whole)


def test_drop_replaces_labels_by_the_null_class_at_rate_p_uncond():
    c = ClassConditioning(5, p_uncond=0.2)
    labels = torch.randint(0, 5, (20000,), generator=torch.Generator().manual_seed(0))
    out = c.drop({"class": labels}, generator=torch.Generator().manual_seed(1))["class"]
    dropped = out == 5
    assert abs(dropped.double().mean().item() - 0.2) < 0.01  # binomial sd 0.003
    assert torch.equal(out[~dropped], labels[~dropped])
    assert c.null({"class": labels[:3]})["class"].tolist() == [5, 5, 5]
    assert ClassConditioning(5, p_uncond=0.0).drop({"class": labels}) ["class"] is labels
    with pytest.raises(ValueError, match=r"p_uncond must be in \[0, 1\)"):
        ClassConditioning(5, p_uncond=1.0)


def test_guided_is_the_denoiser_itself_at_w1_and_cfg_otherwise():
    m = class_module()
    assert m.conditioning.guided(m.denoiser, 1.0) is m.denoiser
    g = m.conditioning.guided(m.denoiser, 3.0)
    assert isinstance(g, ClassifierFreeGuidance) and g.scale == 3.0
    with pytest.raises(ValueError, match="guidance scale must be a number >= 0"):
        m.conditioning.guided(m.denoiser, -1.0)
    with pytest.raises(ValueError, match="trained with p_uncond=0"):
        ClassConditioning(3, p_uncond=0.0).guided(m.denoiser, 2.0)


def test_unconditional_models_refuse_a_class_and_guidance_and_keep_their_hparams():
    torch.manual_seed(0)
    m = DiffusionModule(network_config("unet_small", SHAPE, **TINY), data_shape=SHAPE)
    assert "conditioning" not in m.hparams and type(m.conditioning) is Conditioning
    with pytest.raises(ValueError, match="this model is unconditional"):
        m.sample(2, cond={"class": 1}, sampler="ddim", num_steps=2)
    with pytest.raises(ValueError, match="needs a conditional model"):
        m.sample(2, guidance_scale=3.0, sampler="ddim", num_steps=2)
    assert m.network.unet.class_embedding is None


@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_networks_output_depends_on_the_label(net):
    torch.manual_seed(0)
    if net == "unet":
        cfg = {k: v for k, v in network_config("unet_small", SHAPE, **TINY).items() if k != "_target_"}
        model, x = UNet(**{**cfg, "num_class_embeds": 4}), torch.randn(2, 1, 16, 16)
    else:
        model, x = MLPDenoiser(dim=2, num_class_embeds=4), torch.randn(2, 2)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = model(x, t, {"class": torch.tensor([0, 1])})
        b = model(x, t, {"class": torch.tensor([2, 3])})
        a2 = model(x, t, {"class": torch.tensor([0, 1])})
    assert torch.equal(a, a2) and (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)


def test_module_builds_an_embedding_with_a_null_row_trains_and_samples():
    m = class_module(3)
    assert m.network.unet.class_embedding.num_embeddings == 4  # 3 classes + the null class
    batch = (torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 0]))
    loss = m.training_step(batch, 0)
    loss.backward()
    assert m.network.unet.class_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"needs \(image, label\) batches"):
        m.training_step(torch.randn(4, *SHAPE), 0)
    out = m.sample(3, cond={"class": [0, 1, 2]}, guidance_scale=2.0, sampler="ddim", num_steps=3, seed=0)
    assert out.samples.shape == (3, *SHAPE) and out.nfe == 3  # the two passes are one batched call per step


def test_guided_sampling_equals_the_cfg_formula_on_the_network_output():
    m = class_module(3).eval()
    x, t = torch.randn(2, *SHAPE), torch.tensor([300, 700])
    cond = {"class": torch.tensor([1, 2])}
    with torch.no_grad():
        eps_c = m(x, t, cond)
        eps_u = m(x, t, {"class": torch.tensor([3, 3])})
        guided = m.conditioning.guided(m.denoiser, 2.5)(x, t, cond).eps
    # diffusers' convention: uncond + w (cond - uncond) on the noise (epsilon parameterization)
    torch.testing.assert_close(guided, eps_u + 2.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_keeps_the_conditioning(tmp_path):
    import lightning as L

    m = class_module(3, guidance_scale=2.0)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert loaded.conditioning.spec() == {"type": "class", "num_classes": 3, "p_uncond": 0.1, "guidance_scale": 2.0}
    a = m.sample(2, cond={"class": [0, 2]}, sampler="ddim", num_steps=2, seed=1).samples
    b = loaded.sample(2, cond={"class": [0, 2]}, sampler="ddim", num_steps=2, seed=1).samples
    assert torch.equal(a, b)


def test_build_conditioning_names_the_choices():
    assert type(build_conditioning(None)) is Conditioning
    with pytest.raises(ValueError, match=r"conditioning.type='nope' is not supported; choose one of \["):
        build_conditioning({"type": "nope"})
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_conditioning({"type": "class", "num_classes": 0})


def test_train_config_conditioning_class_composes_from_the_data(make_cfg):
    from ddpm_lightning.train import build

    cfg = make_cfg("conditioning=class", "network.block_out_channels=[16,16,32]", "network.attention_head_dim=8",
                   "network.norm_num_groups=8")
    datamodule, model, _ = build(cfg)
    assert datamodule.with_labels and model.conditioning.num_classes == 10
    assert model.network.unet.class_embedding.num_embeddings == 11
    bad = make_cfg("conditioning=class", "data=toy2d", "data.dataset=swiss_roll", "network=mlp")
    with pytest.raises(ValueError, match="swiss_roll has no class labels"):
        build(bad)


@pytest.mark.slow  # ~40 s on an idle 2-core machine
def test_toy2d_8gaussians_class_samples_land_on_their_mode(make_cfg):
    """Each of the 8 gaussians a class: a short conditional run puts >= 90 % of the samples asked
    for class c nearest to mode c (issue #12's toy check), at w = 1 (plain conditional)."""
    import lightning as L

    from ddpm_lightning.train import build

    cfg = make_cfg("experiment=toy2d", "data.dataset=8gaussians", "conditioning=class", "trainer.max_steps=1500",
                   "trainer.val_check_interval=1500", "callbacks=ema", "trainer.enable_progress_bar=false")
    L.seed_everything(0)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    data, labels = datamodule.real_samples(4000, "train"), datamodule.real_labels(4000, "train")
    modes = torch.stack([data[labels == c].mean(0) for c in range(8)])  # the standardised mode centres
    asked = torch.arange(800) % 8
    x = model.sample(800, cond={"class": asked}, guidance_scale=1.0, seed=0).samples
    nearest = torch.cdist(x, modes).argmin(1)
    per_class = [(nearest[asked == c] == c).double().mean().item() for c in range(8)]
    assert min(per_class) >= 0.9, per_class
