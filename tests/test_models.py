"""Every GAN of chapters 01-04 on small batches: shapes, range, gradients, one real update.

Also the PyTorch-GAN pitfalls: ``BatchNorm2d(c, 0.8)`` sets eps (not momentum), and a WGAN-GP
critic must not contain BatchNorm (the penalty is per image).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medgan_utils.models import GAN, Classifier, ClassifierConfig, GANConfig
from medgan_utils.models.diffaugment import diff_augment

PRESETS = ("gan", "dcgan", "wgan-gp")
B = 4


def make_gan(preset: str, size: int = 28, channels: int = 1, num_classes: int = 0,
             seed: int = 0, **overrides) -> GAN:
    torch.manual_seed(seed)
    cfg = GANConfig.preset(preset, width=8, latent_dim=16, image_size=size, channels=channels,
                           num_classes=num_classes, **overrides)
    return GAN(cfg)


def make_batch(size: int, channels: int, num_classes: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(B, channels, size, size, generator=g) * 2 - 1
    labels = torch.arange(B) % max(num_classes, 1)
    return real, labels


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


CASES = list(itertools.product(PRESETS, (28, 64), (1, 3), (0, 3)))


@pytest.mark.parametrize(("preset", "size", "channels", "num_classes"), CASES,
                         ids=[f"{p}-{s}px-{c}ch-{'cond' if k else 'uncond'}" for p, s, c, k in CASES])
def test_gan_shapes_range_gradients_and_one_update(preset, size, channels, num_classes):
    gan = make_gan(preset, size, channels, num_classes)
    real, labels = make_batch(size, channels, num_classes)
    y = labels if num_classes else None

    # Shapes and range.
    z = torch.randn(B, 16) * 10  # large z: the tanh must still bound the output
    fake = gan.G(z, y)
    assert fake.shape == (B, channels, size, size)
    assert fake.min() >= -1 and fake.max() <= 1
    assert gan.D(real, y).shape == (B,)
    samples = gan.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, channels, size, size) and samples.abs().max() <= 1

    # One critic update: gradients reach every parameter of D, weights change, losses finite.
    d_before, g_before = params(gan.D), params(gan.G)
    logs_d = gan.d_step((real, labels))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs_d.values())
    zero_grad = []
    for name, p in gan.D.named_parameters():
        assert p.grad is not None, f"D.{name} got no gradient"
        assert torch.isfinite(p.grad).all()
        if not p.grad.any():
            zero_grad.append(name)
    # A Wasserstein critic's output bias cancels exactly in E[D(fake)] - E[D(real)] (and the GP
    # does not see it); every other parameter must learn.
    assert zero_grad == (["head.bias"] if preset == "wgan-gp" else []), zero_grad
    d_after = params(gan.D)
    unchanged = [k for k in d_before if torch.equal(d_before[k], d_after[k])]
    assert unchanged == zero_grad
    assert all(torch.equal(g_before[k], v) for k, v in params(gan.G).items()), "d_step moved G"

    # One generator update: gradients reach every parameter of G, D is not moved.
    logs_g = gan.g_step((real, labels))
    assert set(logs_g) >= {"loss_G", "G_grad_norm"}
    assert all(torch.isfinite(torch.tensor(v)) for v in logs_g.values())
    for name, p in gan.G.named_parameters():
        assert p.grad is not None and p.grad.any(), f"G.{name} got no gradient"
    g_after = params(gan.G)
    assert all(not torch.equal(g_before[k], g_after[k]) for k in g_before)
    assert all(torch.equal(d_after[k], v) for k, v in params(gan.D).items()), "g_step moved D"
    expected_d_logs = {"wasserstein", "gp", "grad_norm"} if preset == "wgan-gp" else {"D_real", "D_fake"}
    assert set(logs_d) == expected_d_logs | {"loss_D"}


def test_conditional_gan_needs_labels_and_uses_them():
    gan = make_gan("dcgan", num_classes=3)
    real, _ = make_batch(28, 1, 3)
    with pytest.raises(ValueError, match="labels"):
        gan.d_step(real)
    z = torch.randn(2, 16)
    gan.G.eval()
    out = [gan.G(z, torch.full((2,), k)) for k in range(3)]
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    s = gan.sample(5, labels=torch.tensor([0, 1, 2, 0, 1]))
    assert s.shape == (5, 1, 28, 28)


def test_diffaugment_gan_still_trains_g():
    gan = make_gan("wgan-gp", diffaugment="color,translation,cutout")
    batch = make_batch(28, 1, 0)
    assert torch.isfinite(torch.tensor(gan.d_step(batch)["loss_D"]))
    assert torch.isfinite(torch.tensor(gan.g_step(batch)["loss_G"]))
    assert all(p.grad is not None and p.grad.any() for p in gan.G.parameters())


@pytest.mark.parametrize("preset", ["dcgan", "wgan-gp"])
def test_aux_classifier_head_is_trained_on_reals_and_steers_g(preset):
    gan = make_gan(preset, num_classes=3, aux_weight=1.0)
    real, labels = make_batch(28, 1, 3)
    out, cls = gan.D(real, labels, return_aux=True)
    assert out.shape == (B,) and cls.shape == (B, 3)
    # The head learns from reals only: its gradient in d_step equals that of CE on the reals.
    ref = copy.deepcopy(gan.D)
    _, ref_cls = ref(real, labels, return_aux=True)
    torch.nn.functional.cross_entropy(ref_cls, labels).backward()
    logs_d = gan.d_step((real, labels))
    assert {"aux_D", "aux_acc_real"} <= set(logs_d)
    assert torch.allclose(gan.D.aux.weight.grad, ref.aux.weight.grad, atol=1e-6)
    # The generator is pushed towards fakes the head assigns to their label.
    logs_g = gan.g_step((real, labels))
    assert {"aux_G", "aux_acc_fake"} <= set(logs_g)
    assert logs_g["aux_G"] > 0
    plain = make_gan(preset, num_classes=3)
    assert plain.D.aux is None
    with pytest.raises(ValueError, match="auxiliary"):
        plain.D(real, labels, return_aux=True)


def test_aux_classifier_learns_the_labels_of_reals():
    """A few D steps on two separable classes: the aux head's accuracy on reals rises to 1."""
    torch.manual_seed(0)
    cfg = GANConfig.preset("dcgan", width=8, latent_dim=16, num_classes=2, aux_weight=1.0, lr_d=2e-3)
    gan = GAN(cfg)
    x = torch.cat([torch.full((8, 1, 28, 28), -0.8), torch.full((8, 1, 28, 28), 0.8)])
    x = x + 0.05 * torch.randn_like(x)
    y = torch.tensor([0] * 8 + [1] * 8)
    accs = [gan.d_step((x, y))["aux_acc_real"] for _ in range(40)]
    assert accs[-1] == 1.0 and min(accs[:3]) < 1.0


def test_aux_weight_needs_classes():
    with pytest.raises(ValueError, match="aux_weight"):
        GANConfig(aux_weight=1.0)
    with pytest.raises(ValueError, match="aux_weight"):
        GANConfig(num_classes=2, aux_weight=-1.0)


# --- the PyTorch-GAN pitfalls -------------------------------------------------------------------


def _all_models():
    for preset, k in itertools.product(PRESETS, (0, 3)):
        for size, c in ((28, 1), (64, 3)):
            gan = make_gan(preset, size, c, k)
            yield f"{preset}/{size}/{c}/{k}", [gan.G, gan.D]
    for c in (1, 3):
        yield f"classifier/{c}", [Classifier(ClassifierConfig(channels=c, width=4))]


def test_every_batchnorm_has_small_eps_and_default_momentum():
    found = 0
    for name, modules in _all_models():
        for m in modules:
            for sub_name, bn in m.named_modules():
                if isinstance(bn, _BatchNorm):
                    found += 1
                    assert bn.eps < 1e-3, f"{name}: {sub_name} has eps={bn.eps} (BatchNorm2d(c, 0.8)?)"
                    assert bn.momentum == 0.1, f"{name}: {sub_name} has momentum={bn.momentum}"
    assert found > 20, "the walk found the DCGAN and classifier BatchNorms"


@pytest.mark.parametrize("d_norm", ["layer", "none"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_wgan_gp_critic_has_no_batchnorm(d_norm, num_classes):
    for size in (28, 64):
        gan = make_gan("wgan-gp", size, num_classes=num_classes, d_norm=d_norm)
        assert not any(isinstance(m, _BatchNorm) for m in gan.D.modules())
        has_group_norm = any(isinstance(m, nn.GroupNorm) for m in gan.D.modules())
        assert has_group_norm == (d_norm == "layer")
    assert any(isinstance(m, _BatchNorm) for m in make_gan("dcgan").D.modules())


def test_config_rejects_batchnorm_critic_and_bad_values():
    with pytest.raises(ValueError, match="BatchNorm"):
        GANConfig(loss="wgan-gp", d_norm="batch")
    with pytest.raises(ValueError, match="BatchNorm"):
        GANConfig.preset("wgan-gp", d_norm="batch")
    for bad in (dict(arch="resnet"), dict(loss="hinge"), dict(g_loss="minimax"), dict(ema=1.0)):
        with pytest.raises(ValueError):
            GANConfig(**bad)
    with pytest.raises(ValueError, match="preset"):
        GANConfig.preset("stylegan")
    with pytest.raises(ValueError, match="image_size"):
        make_gan("dcgan", size=30)


def test_presets_follow_the_papers():
    assert GANConfig.preset("gan").arch == "mlp"
    dc = GANConfig.preset("dcgan")
    assert (dc.arch, dc.loss, dc.d_norm, dc.beta1) == ("dcgan", "bce", "batch", 0.5)
    wg = GANConfig.preset("wgan-gp")
    assert (wg.loss, wg.n_critic, wg.gp_lambda, wg.beta1, wg.beta2) == ("wgan-gp", 5, 10.0, 0.0, 0.9)
    assert wg.d_norm != "batch"
    assert GANConfig.preset("wgan-gp", n_critic=2).n_critic == 2


# --- EMA ----------------------------------------------------------------------------------------


def test_ema_moves_toward_g_with_the_right_decay():
    gan = make_gan("dcgan", ema=0.9)
    assert gan.G_ema is not None and "G_ema" in gan.modules()
    assert not any(p.requires_grad for p in gan.G_ema.parameters())
    batch = make_batch(28, 1, 0)
    for t in (1, 2, 30):
        while float(gan.opt_G.state.get(next(iter(gan.G.parameters())), {}).get("step", 0)) < t - 1:
            gan.g_step(batch)
        old = params(gan.G_ema)
        gan.d_step(batch)
        gan.g_step(batch)
        new_g = params(gan.G)
        # warm-up: the decay grows as (1 + t) / (10 + t) until it reaches the configured 0.9
        d = min(0.9, (1 + t) / (10 + t))
        for k, p in gan.G_ema.named_parameters():
            expected = d * old[k] + (1 - d) * new_g[k]
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
            assert not torch.equal(p.detach(), old[k])
        for (k, b_ema), b in zip(gan.G_ema.named_buffers(), gan.G.buffers(), strict=True):
            assert torch.equal(b_ema, b), f"buffer {k} is copied, not averaged"
    assert gan.generator_for_export() is gan.G_ema
    assert make_gan("dcgan").G_ema is None


# --- DiffAugment --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_shape_and_gradient(policy):
    torch.manual_seed(0)
    x = (torch.rand(6, 3, 28, 28) * 2 - 1).requires_grad_(True)
    out = diff_augment(x, policy)
    assert out.shape == x.shape
    assert not torch.equal(out, x), "the policy changed the images"
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diff_augment_empty_policy_is_identity_and_unknown_raises():
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="rotate"):
        diff_augment(x, "color,rotate")


# --- the classifier / feature extractor ---------------------------------------------------------


@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 2), (3, 64, 8)])
def test_classifier_shapes_and_gradients(channels, size, classes):
    torch.manual_seed(0)
    net = Classifier(ClassifierConfig(channels=channels, num_classes=classes, width=4, stages=3))
    x = torch.rand(3, channels, size, size) * 2 - 1
    assert net(x).shape == (3, classes)
    assert net.features(x).shape == (3, net.feature_dim) and net.feature_dim == 16
    nn.functional.cross_entropy(net(x), torch.arange(3) % classes).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.any(), name


def test_ema_warm_up_counts_its_own_updates_when_the_optimizer_keeps_none():
    from torch import nn as tnn

    from medgan_utils.models.parts import EMA

    def one_update(t=None, updates_before=9):
        src = tnn.Linear(2, 2)
        ema = EMA(src, 0.999)
        ema.updates = updates_before
        with torch.no_grad():
            for p in ema.module.parameters():
                p.zero_()
            for p in src.parameters():
                p.fill_(1.0)
        ema.update(src, t)
        return next(ema.module.parameters())

    # 10th update with no optimizer count (SGD): decay (1 + 10) / (10 + 10) = 0.55.
    assert torch.allclose(one_update(), torch.full((2, 2), 0.45))
    # Adam's count wins when it is larger (a resumed run): decay (1 + 100) / 110.
    assert torch.allclose(one_update(t=100.0), torch.full((2, 2), 9 / 110))
