"""Story: `val/class_accuracy` of a class-conditional digits model while training. The scoring
(`metrics.class_accuracy`) against the classifier's own verdict on real digits, the callback from
the composed configs (EMA weights, every n-th validation, guidance and sampler passed through),
and its start-up check, which refuses an unconditional model and data other than digits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

from ddpm_lightning.callbacks import EMA, ClassAccuracy
from ddpm_lightning.conditioning import ClassConditioning
from ddpm_lightning.metrics.class_accuracy import class_accuracy, class_accuracy_counts, load_digit_classifier
from ddpm_lightning.metrics.digits import digits_split, load_digit_cnn, load_digits_images
from ddpm_lightning.train import build

# experiment=digits_cond shrunk: its own callback node, scoring 20 samples with 2 DDIM steps
COND_TINY = [
    "experiment=digits_cond", *TINY, "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
    "callbacks.sample_grid.num_samples=10", "callbacks.class_accuracy.num_samples=20",
    "callbacks.class_accuracy.sampler.num_steps=2", "callbacks.class_accuracy.batch_size=8",
]


class RealDigits:
    """A stand-in for a class-conditional model whose "samples" are held-out real digits: sample i
    (asked for class c) is the i-th held-out image of class (c + shift) mod 10."""

    def __init__(self, shift: int = 0):
        images, labels = load_digits_images()
        _, heldout = digits_split(labels)
        self.by_class = [images[heldout][labels[heldout] == c] for c in range(10)]
        self.shift, self.conditioning, self.data_shape, self.device = shift, ClassConditioning(10), (1, 16, 16), "cpu"
        self.calls: list[dict] = []

    def sample(self, noise, generator, cond, **kw):
        self.calls.append(kw)
        rows = [self.by_class[(int(c) + self.shift) % 10][j % 40] for j, c in zip(range(len(noise)), cond["class"])]
        return SimpleNamespace(samples=torch.stack(rows))


def _expected(model: RealDigits, n: int) -> float:
    """The classifier's verdict on the same images, computed directly (no package scoring code)."""
    cnn = load_digit_cnn()
    asked = torch.arange(n) % 10
    rows = torch.stack([model.by_class[(int(c) + model.shift) % 10][j % 40] for j, c in enumerate(asked)])
    with torch.no_grad():
        return float((cnn(rows).argmax(-1) == asked).double().mean())


def test_scoring_matches_the_classifier_on_real_digits_and_passes_guidance_on():
    right = RealDigits()
    acc, samples = class_accuracy(right, 100, guidance_scale=3.0, batch_size=30, sampler="ddim")
    assert acc == pytest.approx(_expected(right, 100)) and acc >= 0.95  # 99.3 % held-out accuracy
    assert samples.shape == (100, 1, 16, 16)
    assert all(c == {"guidance_scale": 3.0, "sampler": "ddim"} for c in right.calls)
    wrong = RealDigits(shift=1)  # every sample shows the next digit: (almost) nothing is right
    acc_wrong, _ = class_accuracy(wrong, 100)
    assert acc_wrong == pytest.approx(_expected(wrong, 100)) and acc_wrong <= 0.05


def test_counts_of_a_rank_split_add_up_to_the_whole():
    model, cnn = RealDigits(shift=3), load_digit_classifier()
    whole = class_accuracy_counts(model, range(50), cnn)[:2]
    parts = [class_accuracy_counts(model, range(r, 50, 3), cnn, batch_size=7)[:2] for r in range(3)]
    assert tuple(map(sum, zip(*parts))) == whole


def _callback(trainer) -> ClassAccuracy:
    return next(cb for cb in trainer.callbacks if isinstance(cb, ClassAccuracy))


def test_digits_cond_logs_class_accuracy_of_the_ema_weights_every_nth_validation(make_cfg, monkeypatch):
    cfg = make_cfg(*COND_TINY, "callbacks.class_accuracy.every_n_validations=2")
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    cb, ema = _callback(trainer), next(c for c in trainer.callbacks if isinstance(c, EMA))
    assert (cb.num_samples, cb.sampler["num_steps"], cb.guidance_scale) == (20, 2, None)
    seen, original = [], ClassAccuracy.evaluate

    def recording(self, trainer, pl_module):
        # inside validation the EMA callback holds the live weights it swapped out
        seen.append((trainer.global_step, [p.detach().clone() for p in ema._average_model.module.parameters()]))
        return original(self, trainer, pl_module)

    monkeypatch.setattr(ClassAccuracy, "evaluate", recording)
    trainer.fit(model, datamodule=dm)
    assert [step for step, _ in seen] == [4]  # validations at steps 2 and 4: the 2nd only
    assert cb.state_dict() == {"validations": 2}
    # after fit the model holds the EMA weights of step 4 (the last update): what was scored
    live = seen[0][1]
    assert any(not torch.equal(a, b) for a, b in zip(live, model.parameters()))  # EMA != live weights
    expected, _ = class_accuracy(model, 20, guidance_scale=3.0, batch_size=8,
                                 sampler={"name": "ddim", "num_steps": 2, "eta": 0.0})
    assert float(trainer.callback_metrics["val/class_accuracy"]) == pytest.approx(expected)


def test_validate_always_scores_at_the_guidance_asked_for(make_cfg):
    cfg = make_cfg(*COND_TINY, "~callbacks.sample_grid", "callbacks.class_accuracy.every_n_validations=5",
                   "callbacks.class_accuracy.guidance_scale=0.0")
    torch.manual_seed(0)
    dm, model, trainer = build(cfg)
    trainer.validate(model, datamodule=dm)
    expected, _ = class_accuracy(model, 20, guidance_scale=0.0, batch_size=8,
                                 sampler={"name": "ddim", "num_steps": 2, "eta": 0.0})
    assert float(trainer.callback_metrics["val/class_accuracy"]) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["callbacks=[default,class_accuracy]"], ["class-conditional", "unconditional (conditioning=none)"]),
        (["experiment=digits_cond", "conditioning=image", "conditioning.p_uncond=0.0", "conditioning.guidance_scale=1.0",
          "data.labels=false"], ["class-conditional", "image-conditional"]),
        (["experiment=toy2d", "data.dataset=8gaussians", "conditioning=class", "callbacks=[default,class_accuracy]"],
         ["needs data=digits", "'8gaussians' of shape (2,)"]),
        (["experiment=digits_cond", "callbacks.class_accuracy.guidance_scale=-1"], ["guidance", "-1"]),
        (["experiment=digits_cond", "conditioning.p_uncond=0.0", "callbacks.class_accuracy.guidance_scale=2"], ["p_uncond"]),
        (["experiment=digits_cond", "callbacks.class_accuracy.every_n_validations=0"], ["every_n_validations"]),
    ],
)
def test_start_up_check_refuses_in_one_line(make_cfg, overrides, needles):
    cfg = make_cfg(*overrides)
    with pytest.raises(ValueError) as err:
        build(cfg)
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
