"""Chapter 09: the DP-GAN (Opacus on the discriminator) and the membership attacks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from medgan_utils.checkpoint import read_metadata  # noqa: E402
from medgan_utils.data import Arrays, TensorLoader  # noqa: E402
from medgan_utils.metrics import attack_auc  # noqa: E402
from medgan_utils.models.dpgan import DPGAN, DPGANConfig  # noqa: E402
from medgan_utils.pretrained import export, load, train_model  # noqa: E402
from medgan_utils.privacy import discriminator_attack  # noqa: E402
from medgan_utils.train import FitConfig  # noqa: E402

SMALL = dict(channels=1, image_size=28, num_classes=2, width=8, latent_dim=16, d_norm="layer",
             aux_weight=1.0)


def _arrays(n: int, seed: int = 0, name: str = "tiny") -> Arrays:
    rng = np.random.default_rng(seed)
    return Arrays(name, "train", 28, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 2, n))


def _train(cfg: DPGANConfig, data: Arrays, steps: int, batch_size: int, **kw):
    torch.manual_seed(0)
    return train_model(cfg, data, FitConfig(steps=steps, log_every=1, ckpt_every=kw.pop("ckpt_every", 0),
                                            **kw.pop("fit", {})),
                       seed=0, batch_size=batch_size, progress=False, **kw)


def test_training_spends_exactly_the_target_epsilon_and_refuses_more():
    from opacus.accountants.utils import get_noise_multiplier

    data = _arrays(200)
    cfg = DPGANConfig(**SMALL, epsilon=3.0, delta=1e-4)
    gan, hist = _train(cfg, data, steps=30, batch_size=20)
    # The noise is Opacus' calibration for this sampling rate and these 30 D steps...
    assert gan.noise_multiplier == pytest.approx(get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-4, sample_rate=0.1, steps=30, accountant="rdp"))
    # ...so the run ends at the target (Opacus stops its search within 0.01 below it).
    assert 2.98 <= gan.epsilon() <= 3.0
    assert sum(k for _, _, k in gan.accountant.history) == gan.d_steps == 30
    eps = [r["epsilon"] for r in hist.records if "epsilon" in r]  # logged once per epoch of D steps
    assert len(eps) == 3 and eps == sorted(eps) and eps[-1] == pytest.approx(gan.epsilon())
    with pytest.raises(RuntimeError, match="planned for 30 D steps"):
        gan.train_step(iter(TensorLoader(data.images, data.labels, 20, sampling="poisson")))


def test_each_images_gradient_is_clipped_and_the_generator_pass_leaves_none_in_D():
    data = _arrays(64)
    C = 1e-3
    cfg = DPGANConfig(**SMALL, epsilon=5.0, max_grad_norm=C)
    gan = DPGAN(cfg)
    loader = TensorLoader(data.images, data.labels, 16, sampling="poisson", seed=1)
    gan.make_private(loader.sample_rate, 10, loader.batch_size)
    gan.opt_D.noise_multiplier = 0.0  # only the clipping left: the update is the mean clipped gradient
    seen = []
    hook = gan.opt_D.step_hook
    gan.opt_D.attach_step_hook(lambda opt: (seen.append((
        torch.cat([p.grad.reshape(-1) for p in opt.params]).norm().item(), len(opt.grad_samples[0]))),
        hook(opt)))
    batches = iter(loader)
    for _ in range(3):
        gan.train_step(batches)
        assert all(getattr(p, "grad_sample", None) is None for p in gan.D.parameters()), \
            "G's pass through D must not leave per-sample gradients for D's next private step"
    assert gan._hooks.hooks_enabled
    for norm, n in seen:  # n images, each contributing at most C, averaged over the expected 16
        assert 0 < norm <= C * n / 16 * (1 + 1e-5)
    # The twin at epsilon = inf trains the same networks without Opacus.
    twin = DPGAN(DPGANConfig(**SMALL, epsilon=math.inf))
    twin.d_step(next(iter(TensorLoader(data.images, data.labels, 16, sampling="poisson", seed=1))))
    assert twin.epsilon() == math.inf and twin._hooks is None


def test_empty_poisson_batches_still_add_noise_and_are_charged():
    data = _arrays(30)
    cfg = DPGANConfig(**SMALL, epsilon=10.0, delta=1e-3)
    gan, hist = _train(cfg, data, steps=60, batch_size=1)  # rate 1/30: about a third are empty
    assert 5 < gan.empty_batches < 40
    assert sum(k for _, _, k in gan.accountant.history) == 60, "every step is charged, empty or not"
    assert all(math.isfinite(v) for r in hist.records for v in r.values())
    before = {k: v.clone() for k, v in gan.D.state_dict().items()}
    before_empty = gan.empty_batches
    empty = (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    gan.planned_d_steps += 1
    assert gan.d_step(empty) == {} and gan.empty_batches == before_empty + 1
    assert any(not torch.equal(before[k], v) for k, v in gan.D.state_dict().items()), \
        "an empty private step still moves D by the noise"


def test_a_killed_run_resumes_to_the_same_weights_and_budget(tmp_path, monkeypatch):
    import random

    # The secret seeds, made repeatable here so that a resumed run can be compared bit for bit
    # with an uninterrupted one; the resume must restore them from its own state either way.
    monkeypatch.setattr("medgan_utils.models.dpgan.secrets.SystemRandom", lambda: random.Random(7))
    data = _arrays(120)
    cfg = DPGANConfig(**SMALL, epsilon=2.0)
    full, _ = _train(cfg, data, steps=12, batch_size=12, out_dir=tmp_path / "full")
    stop_once = [(6, lambda step, m, logs: step == 6)]
    _train(cfg, data, steps=12, batch_size=12, out_dir=tmp_path / "part", ckpt_every=3,
           callbacks=stop_once)
    resumed, _ = _train(cfg, data, steps=12, batch_size=12, out_dir=tmp_path / "part", ckpt_every=3)
    assert resumed.d_steps == 12 and resumed.epsilon() == pytest.approx(full.epsilon())
    for a, b in zip([*full.G.state_dict().values(), *full.D.state_dict().values()],
                    [*resumed.G.state_dict().values(), *resumed.D.state_dict().values()], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A resume that would plan another noise level is refused, and says why.
    with pytest.raises(ValueError, match="same --steps"):
        _train(cfg, data, steps=20, batch_size=12, out_dir=tmp_path / "part")


def test_configs_that_break_per_sample_gradients_are_refused():
    with pytest.raises(ValueError, match="BatchNorm"):
        DPGANConfig(**{**SMALL, "d_norm": "batch"})
    with pytest.raises(ValueError, match="double backward"):
        DPGANConfig(**{**SMALL, "loss": "wgan-gp"})
    with pytest.raises(ValueError, match="epsilon"):
        DPGANConfig(**SMALL, epsilon=0.0)
    gan = DPGAN(DPGANConfig(**SMALL))
    with pytest.raises(RuntimeError, match="make_private"):
        gan.train_step(iter([]))
    assert not any(getattr(m, "inplace", False) for m in gan.D.modules())


def test_export_ships_G_and_D_with_the_guarantee_and_serves_them(tmp_path):
    data = _arrays(80)
    gan, hist = _train(DPGANConfig(**SMALL, epsilon=4.0), data, steps=8, batch_size=16)
    path = export(gan, tmp_path / "dp.safetensors", hist)
    meta = read_metadata(path)
    assert meta["kind"] == "dpgan" and meta["privacy"]["target_epsilon"] == 4.0
    assert 3.9 < meta["privacy"]["epsilon_spent"] <= 4.0 and meta["privacy"]["d_steps"] == 8
    served, _ = load(path)
    torch.testing.assert_close(served.G.state_dict(), gan.generator_for_export().state_dict())
    torch.testing.assert_close(served.D.state_dict(), gan.D.state_dict())
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(served.sample(6, generator=g),
                               gan.sample(6, generator=torch.Generator().manual_seed(0)))


def test_the_discriminator_attack_catches_an_overfitted_D():
    members, others = _arrays(16, seed=1), _arrays(16, seed=2)
    cfg = DPGANConfig(**{**SMALL, "lr_d": 2e-3}, epsilon=math.inf)
    gan, _ = _train(cfg, members, steps=150, batch_size=8)
    assert discriminator_attack(gan, members, others)["d_mia_auc"] > 0.9
    fresh = DPGAN(cfg)
    assert abs(discriminator_attack(fresh, members, others)["d_mia_auc"] - 0.5) < 0.3


def test_attack_auc_is_the_probability_a_member_outscores_a_nonmember():
    assert attack_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert attack_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert attack_auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.25
    with pytest.raises(ValueError, match="members and non-members"):
        attack_auc(np.array([]), np.array([1.0]))


def test_each_pair_depends_on_its_own_record_only():
    """Dropping record k from a batch must leave every other pair's per-sample gradient as it was:
    the premise of clipping per pair (G's BatchNorm in batch mode would break it)."""
    data = _arrays(12)
    gan = DPGAN(DPGANConfig(**{**SMALL, "aux_weight": 1.0}, epsilon=5.0, private_rng=False))
    gan.make_private(0.5, 10, 6)
    gan.opt_D.noise_multiplier = 0.0
    for group in gan.opt_D.param_groups:
        group["lr"] = 0.0  # D stays put, so both steps see the same D
    z = torch.randn(8, SMALL["latent_dim"], generator=torch.Generator().manual_seed(3))
    keep = [0, 1, 2, 3, 4, 5, 7]  # record 6 removed; each record keeps its fake's z
    noises = iter([z, z[keep]])
    gan._noise = lambda n, generator=None: next(noises)
    grads = []
    gan.opt_D.attach_step_hook(lambda opt: grads.append([g.clone() for g in opt.grad_samples]))
    x = torch.as_tensor(data.images[:8]).float().div(127.5).sub(1).unsqueeze(1)
    y = torch.as_tensor(data.labels[:8]).long()
    gan.d_step((x, y))
    gan.d_step((x[keep], y[keep]))
    assert len(grads) == 2
    for full, minus in zip(*grads, strict=True):  # equal up to float reordering across batch sizes
        torch.testing.assert_close(full[keep], minus, rtol=1e-4, atol=1e-4 * float(full.abs().max()))


def test_a_private_history_holds_nothing_computed_from_real_batches(tmp_path):
    data = _arrays(100)
    gan, hist = _train(DPGANConfig(**SMALL, epsilon=3.0), data, steps=6, batch_size=20)
    keys = {k for r in hist.records for k in r}
    assert keys <= {"step", "wall_s", "epsilon", "loss_G", "G_grad_norm", "aux_G", "aux_acc_fake"}, keys
    assert "loss_G" in keys
    twin, twin_hist = _train(DPGANConfig(**SMALL, epsilon=math.inf), data, steps=6, batch_size=20)
    assert "D_real" in {k for r in twin_hist.records for k in r}, "the non-private twin logs as any GAN"


def test_noise_and_batches_come_from_a_secret_seed_unless_asked(tmp_path):
    data = _arrays(100)
    runs = {}
    for private_rng in (True, False):
        for i in range(2):
            gan, hist = _train(DPGANConfig(**SMALL, epsilon=3.0, private_rng=private_rng), data, steps=4,
                               batch_size=20)
            runs[private_rng, i] = torch.cat([p.detach().reshape(-1) for p in gan.D.parameters()])
    assert not torch.equal(runs[True, 0], runs[True, 1]), "the same public seed must not fix the DP noise"
    assert torch.equal(runs[False, 0], runs[False, 1]), "private_rng=False repeats exactly (teaching only)"
    path = export(gan, tmp_path / "dp.safetensors", hist)
    header = json.dumps(read_metadata(path))
    assert "noise_rng" not in header and "sampling_seed" not in header
    served, _ = load(path)
    assert served.epsilon() == pytest.approx(gan.epsilon()) and served.privacy_facts()["d_steps"] == 4


def test_delta_must_be_below_one_over_n():
    gan = DPGAN(DPGANConfig(**SMALL, epsilon=1.0, delta=0.01))
    with pytest.raises(ValueError, match="1/N"):
        gan.make_private(0.1, 10, 20)  # N = 200: delta 0.01 > 0.005


def test_the_cli_trains_a_dp_gan_to_its_epsilon_and_audits_it(tmp_path, medmnist_root, capsys):
    from medgan_utils import cli

    out = tmp_path / "run"
    cli.main(["train", "dp-gan", "--dataset", "breastmnist", "--root", str(medmnist_root), "--epsilon", "5",
              "--steps", "6", "--batch-size", "32", "--width", "8", "--latent-dim", "16", "--out", str(out),
              "--device", "cpu"])
    export_path = out / "dp-gan_breastmnist_28.safetensors"
    meta = read_metadata(export_path)
    assert meta["kind"] == "dpgan" and meta["config"]["num_classes"] == 2, "class-conditional by design"
    assert 4.9 < meta["privacy"]["epsilon_spent"] <= 5.0 and meta["privacy"]["sample_rate"] == pytest.approx(32 / 546)
    capsys.readouterr()
    cli.main(["privacy", "audit", str(export_path), "--root", str(medmnist_root)])
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["classifier_mia_auc"] <= 1 and 0 <= report["d_mia_auc"] <= 1
    assert report["classifier_nn_ratio"] > 0
