"""A new model kind is one model class + one registry entry: it then trains, exports, loads,
samples or applies, and is evaluated through the ``medgan`` CLI like the course's GANs.

Two toy kinds stand in for later chapters: a generator (a per-pixel Gaussian fitted by maximum
likelihood, no adversary) and an image-to-image denoiser (one residual 3x3 convolution, judged
against a classical mean filter)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medgan_utils import cli, registry
from medgan_utils.checkpoint import read_metadata
from medgan_utils.data import PairedLoader, gaussian_noise, load_arrays, to_float
from medgan_utils.metrics import psnr
from medgan_utils.pretrained import export, load, load_or_train, train_model
from medgan_utils.registry import ModelKind
from medgan_utils.train import FitConfig

# --- a generator kind ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussConfig:
    """A per-pixel Gaussian generator.

    Attributes:
        channels: image channels.
        image_size: image side in pixels.
        lr: Adam learning rate.
    """

    channels: int = 1
    image_size: int = 28
    lr: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


class GaussNet(nn.Module):
    def __init__(self, c: GaussConfig):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(c.channels, c.image_size, c.image_size))
        self.log_std = nn.Parameter(torch.zeros(c.channels, c.image_size, c.image_size))


class GaussGenerator:
    def __init__(self, config: GaussConfig, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.net = GaussNet(config).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)

    def train_step(self, batches):
        x, _ = next(batches)
        n = self.net
        loss = (((x - n.mean) / n.log_std.exp()) ** 2 / 2 + n.log_std).mean()  # Gaussian NLL
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"nll": loss.item()}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    @torch.no_grad()
    def sample(self, n, labels=None, generator=None):
        z = torch.randn(n, *self.net.mean.shape, generator=generator)
        return (self.net.mean.cpu() + self.net.log_std.exp().cpu() * z).clamp(-1, 1)


# --- an image-to-image kind ---------------------------------------------------------------------


@dataclass(frozen=True)
class DenoiseConfig:
    """A one-layer residual denoiser.

    Attributes:
        channels: image channels.
        image_size: image side in pixels.
        sigma: noise level of the training pairs (images in [-1, 1]).
        lr: Adam learning rate.
    """

    channels: int = 1
    image_size: int = 28
    sigma: float = 0.3
    lr: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


class Denoiser:
    def __init__(self, config: DenoiseConfig, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.net = nn.Conv2d(config.channels, config.channels, 3, padding=1, padding_mode="replicate").to(self.device)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)

    def apply(self, x):
        return (x + self.net(x)).clamp(-1, 1)

    def train_step(self, batches):
        noisy, clean = next(batches)
        loss = F.mse_loss(noisy + self.net(noisy), clean)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"mse": loss.item()}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def visuals(self, generator=None):
        return {}


def noisy_pairs(images, config, seed):
    return gaussian_noise(images, config.sigma, seed=seed), images


def mean_filter(inputs, config):
    return F.avg_pool2d(F.pad(inputs, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def paired_loader(data, config, batch_size, device, seed):
    inputs, targets = noisy_pairs(data.tensors(), config, seed)
    return PairedLoader(inputs, targets, batch_size, device, seed=seed)


@pytest.fixture
def toy_kinds():
    kinds = [
        ModelKind("toy-gauss", GaussConfig, GaussGenerator, presets={"toy-gauss": {}},
                  description="a per-pixel Gaussian (test)",
                  data_fields=lambda data, cond: {"channels": data.n_channels, "image_size": data.size}),
        ModelKind("toy-denoise", DenoiseConfig, Denoiser, presets={"toy-denoise": {"sigma": 0.3}},
                  description="a residual 3x3 denoiser (test)",
                  data_fields=lambda data, cond: {"channels": data.n_channels, "image_size": data.size},
                  loader=paired_loader, make_pairs=noisy_pairs, baseline=mean_filter),
    ]
    for kind in kinds:
        registry.register(kind)
    yield kinds
    for kind in kinds:
        registry.unregister(kind.name)


def run_cli(args, capsys) -> str:
    assert cli.main(args) == 0
    return capsys.readouterr().out


def last_json(text: str) -> dict:
    return json.loads(text[text.index("{\n"):])


def test_a_registered_generator_trains_exports_loads_samples_and_is_evaluated(
        toy_kinds, tmp_path, medmnist_root, capsys):
    out = tmp_path / "run"
    text = run_cli(["train", "toy-gauss", "--dataset", "pneumoniamnist", "--root", str(medmnist_root),
                    "--steps", "60", "--lr", "0.05", "--log-every", "20", "--out", str(out),
                    "--device", "cpu"], capsys)
    path = out / "toy-gauss_pneumoniamnist_28.safetensors"
    assert str(path) in text
    meta = read_metadata(path)
    assert meta["kind"] == "toy-gauss" and meta["config"]["lr"] == 0.05 and meta["steps"] == 60

    model, _ = load(path)
    assert isinstance(model, GaussGenerator)
    train = load_arrays("pneumoniamnist", "train", 28, medmnist_root)
    # It learned the data: its mean image is close to the training mean (it started at 0).
    err = (model.net.mean - train.tensors().mean(0)).abs().mean()
    assert err < 0.25 * train.tensors().mean(0).abs().mean()

    npz = tmp_path / "fake.npz"
    run_cli(["sample", str(path), "--n", "12", "--out", str(npz), "--device", "cpu"], capsys)
    images = np.load(npz)["images"]
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8 and images.std() > 0

    res = last_json(run_cli(["evaluate", str(path), "--n", "300", "--root", str(medmnist_root),
                             "--device", "cpu"], capsys))
    assert res["reference_code"] == "val" and res["n_fakes"] == 300
    for space in ("classifier", "autoencoder"):  # independent pixel noise is worse than real images
        assert res[f"{space}_fd_ratio"] > 2 and res[f"{space}_fd"] > res[f"{space}_floor_fd"] > 0

    with pytest.raises(SystemExit, match="medgan sample"):
        cli.main(["apply", str(path), str(npz), "--out", str(tmp_path / "x.npz"), "--device", "cpu"])


def test_a_registered_image_to_image_model_trains_applies_and_beats_noise(
        toy_kinds, tmp_path, medmnist_root, capsys):
    out = tmp_path / "run"
    run_cli(["train", "toy-denoise", "--dataset", "breastmnist", "--root", str(medmnist_root),
             "--steps", "150", "--log-every", "50", "--out", str(out), "--device", "cpu"], capsys)
    path = out / "toy-denoise_breastmnist_28.safetensors"
    model, meta = load(path)
    assert isinstance(model, Denoiser) and meta["config"]["sigma"] == 0.3

    test = load_arrays("breastmnist", "test", 28, medmnist_root).tensors()[:64]
    noisy, clean = noisy_pairs(test, model.config, seed=5)
    npz_in, npz_out = tmp_path / "noisy.npz", tmp_path / "clean.npz"
    np.savez(npz_in, images=((noisy + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy())
    run_cli(["apply", str(path), str(npz_in), "--out", str(npz_out), "--device", "cpu"], capsys)
    restored = to_float(torch.from_numpy(np.load(npz_out)["images"]))
    assert restored.shape == (64, 1, 28, 28)
    assert psnr(restored, clean) > psnr(noisy, clean) + 1.0, "it denoises"

    res = last_json(run_cli(["evaluate", str(path), "--n", "100", "--root", str(medmnist_root),
                             "--device", "cpu"], capsys))
    assert set(res) == {"model_psnr", "model_ssim", "baseline_psnr", "baseline_ssim", "n"}
    assert res["n"] == 100 and res["model_psnr"] > psnr(*noisy_pairs(test, model.config, 0)) + 1.0

    with pytest.raises(SystemExit, match="medgan apply"):
        cli.main(["sample", str(path), "--n", "2", "--out", str(tmp_path / "s.npz"), "--device", "cpu"])


def test_export_load_and_load_or_train_serve_any_kind(toy_kinds, tmp_path, medmnist_root, monkeypatch):
    train = load_arrays("breastmnist", "train", 28, medmnist_root)
    cfg = toy_kinds[0].config("toy-gauss", train)
    model, hist = train_model(cfg, train, FitConfig(steps=5, log_every=5), seed=0, progress=False)
    path = export(model, tmp_path / "g.safetensors", hist, dataset="breastmnist")
    again, meta = load(path)
    assert torch.equal(again.net.mean, model.net.mean) and meta["dataset"] == "breastmnist"
    # A quoted training time comes with the threads it was measured at.
    assert meta["machine"]["torch_threads"] >= 1 and meta["machine"]["cpu_capability"]

    monkeypatch.setattr("medgan_utils.pretrained.CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr("medgan_utils.pretrained.RUNS_DIR", tmp_path / "runs")
    shipped, _, source = load_or_train("g", cfg, train, FitConfig(steps=5), progress=False)
    assert source == "shipped" and torch.equal(shipped.net.mean, model.net.mean)
    fresh, h, source = load_or_train("new", cfg, train, FitConfig(steps=3), seed=0, progress=False)
    assert source == "trained" and h.step == 3
    assert (tmp_path / "runs" / "new" / "new.safetensors").is_file()


def test_registry_rejects_clashes_and_unknown_headers(toy_kinds, tmp_path):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(toy_kinds[0])
    with pytest.raises(ValueError, match="another kind"):
        registry.register(ModelKind("other", GaussConfig, GaussGenerator, presets={"dcgan": {}}))
    with pytest.raises(ValueError, match="no preset"):
        toy_kinds[0].config("nope")
    from medgan_utils.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "x.safetensors", {"net": nn.Linear(2, 2)}, metadata={"kind": "gone"})
    with pytest.raises(ValueError, match="unknown model kind 'gone'"):
        load(tmp_path / "x.safetensors")


def test_cli_refuses_bad_labels_inputs_and_missing_data_sets(toy_kinds, tmp_path, medmnist_root, capsys):
    out = tmp_path / "run"
    run_cli(["train", "toy-denoise", "--dataset", "breastmnist", "--root", str(medmnist_root),
             "--steps", "2", "--out", str(out), "--device", "cpu"], capsys)
    path = out / "toy-denoise_breastmnist_28.safetensors"
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32) * 255)
    with pytest.raises(SystemExit, match=r"in \[-1, 1\]"):
        cli.main(["apply", str(path), str(bad), "--out", str(tmp_path / "o.npz"), "--device", "cpu"])
    rgb = tmp_path / "rgb.NPZ"  # upper-case suffix still read as an archive
    np.savez(rgb.with_suffix(""), images=np.zeros((2, 28, 28, 3), np.uint8))
    rgb.with_suffix("").with_suffix(".npz").rename(rgb)
    with pytest.raises(SystemExit, match="3-channel images; the model takes 1"):
        cli.main(["apply", str(path), str(rgb), "--out", str(tmp_path / "o.npz"), "--device", "cpu"])

    gauss = tmp_path / "g"
    run_cli(["train", "toy-gauss", "--dataset", "breastmnist", "--root", str(medmnist_root),
             "--steps", "1", "--out", str(gauss), "--device", "cpu"], capsys)
    export = gauss / "toy-gauss_breastmnist_28.safetensors"
    with pytest.raises(SystemExit, match="not class-conditional"):
        cli.main(["sample", str(export), "--n", "2", "--label", "1", "--out", str(tmp_path / "s.npz"),
                  "--device", "cpu"])
    cfg = toy_kinds[0].config("toy-gauss", load_arrays("breastmnist", "train", 28, medmnist_root))
    model, _ = train_model(cfg, load_arrays("breastmnist", "train", 28, medmnist_root),
                           FitConfig(steps=1), progress=False)
    anonymous = export.with_name("anonymous.safetensors")
    from medgan_utils.pretrained import export as export_model

    export_model(model, anonymous)  # no data set in its header
    with pytest.raises(SystemExit, match="--dataset NAME"):
        cli.main(["evaluate", str(anonymous), "--n", "50", "--device", "cpu"])


def test_registry_rejects_shadowing_and_clashing_fields(toy_kinds):
    @dataclass(frozen=True)
    class StepsConfig:
        steps: int = 3

        def to_dict(self):
            return asdict(self)

    with pytest.raises(ValueError, match="clash with the CLI"):
        registry.register(ModelKind("clashing", StepsConfig, GaussGenerator))
    with pytest.raises(ValueError, match="another kind"):  # a preset-less kind is offered by name
        registry.register(ModelKind("dcgan", GaussConfig, GaussGenerator))
