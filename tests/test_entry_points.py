"""Every way the course trains a GAN takes the critic steps its config asks for.

``n_critic`` used to live in both ``GANConfig`` and ``FitConfig``; ``medgan experiment`` built a
``FitConfig`` without it, so the chapter-03 grids trained WGAN-GP with one critic step while
recording five. Now the model's ``train_step`` owns it; these tests count the updates taken
through each entry point: the CLI, the experiment grids, the augmentation study's cGAN training
and load-else-train."""

from __future__ import annotations

import pytest
import torch

from medgan_utils import cli
from medgan_utils.augmentation import cgan_config, train_cgan
from medgan_utils.classify import load_extractor
from medgan_utils.data import load_arrays
from medgan_utils.experiments import run_grid
from medgan_utils.models import GAN, GANConfig
from medgan_utils.pretrained import load_or_train
from medgan_utils.train import FitConfig


@pytest.fixture
def updates(monkeypatch):
    counts = {"d": 0, "g": 0}
    d_step, g_step = GAN.d_step, GAN.g_step

    def counting_d(self, batch):
        counts["d"] += 1
        return d_step(self, batch)

    def counting_g(self, batch):
        counts["g"] += 1
        return g_step(self, batch)

    monkeypatch.setattr(GAN, "d_step", counting_d)
    monkeypatch.setattr(GAN, "g_step", counting_g)
    return counts


@pytest.fixture(scope="module")
def breast(medmnist_root):
    return (load_arrays("breastmnist", "train", 28, medmnist_root),
            load_arrays("breastmnist", "test", 28, medmnist_root))


@pytest.mark.parametrize("extra, per_step", [([], 5), (["--n-critic", "3"], 3)])
def test_cli_train(updates, tmp_path, medmnist_root, extra, per_step):
    cli.main(["train", "wgan-gp", "--dataset", "breastmnist", "--root", str(medmnist_root),
              "--width", "4", "--latent-dim", "8", "--steps", "2", "--out", str(tmp_path),
              "--device", "cpu", *extra])
    assert updates == {"d": 2 * per_step, "g": 2}


def test_experiment_grid(updates, breast):
    train, test = breast
    runs, _ = run_grid("small-data", train, load_extractor("breastmnist"), seeds=[0], steps=2,
                       eval_every=0, n_eval=200)
    assert len(runs) == 4 and all(r["config"]["n_critic"] == 5 for r in runs.values())
    assert updates == {"d": 4 * 2 * 5, "g": 4 * 2}


def test_augmentation_study_cgan(updates, breast):
    train, _ = breast
    config = cgan_config(train, width=4, n_critic=3)
    train_cgan(train.images[:40], train.labels[:40], config, steps=2)
    assert updates == {"d": 6, "g": 2}


def test_load_or_train(updates, breast, tmp_path, monkeypatch):
    monkeypatch.setattr("medgan_utils.pretrained.RUNS_DIR", tmp_path)
    config = GANConfig.preset("wgan-gp", width=4, latent_dim=8)
    torch.manual_seed(0)
    load_or_train("not-shipped", config, breast[0], FitConfig(steps=2), train_from_scratch=True,
                  progress=False)
    assert updates == {"d": 10, "g": 2}
