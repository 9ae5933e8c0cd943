"""The ``medgan`` command line: help generated from the configs, train -> export -> sample."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medgan_utils import cli
from medgan_utils.checkpoint import read_metadata
from medgan_utils.models.gan import GANConfig
from medgan_utils.train import FitConfig, History

REPO = Path(__file__).resolve().parent.parent
# Derived from the data (channels, image_size) or from --conditional (num_classes).
FROM_DATA = {"channels", "image_size", "num_classes"}


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    # cmd_* call seed_everything, which sets PYTHONHASHSEED: restore it after each test.
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _train_parser(preset: str = "wgan-gp") -> argparse.ArgumentParser:
    return _sub(_sub(cli.build_parser(), "train"), preset)


def test_train_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    listing = capsys.readouterr().out
    for preset in ("gan", "dcgan", "wgan-gp", "wgan-clip"):
        assert preset in listing
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "wgan-gp", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    fields = [f.name for f in dataclasses.fields(GANConfig) if f.name not in FROM_DATA]
    fields += [f.name for f in dataclasses.fields(FitConfig)]
    for name in fields:
        assert f"--{name.replace('_', '-')}" in text, name
    assert "(default: 5)" in {a.dest: a.help for a in _train_parser()._actions}["n_critic"], \
        "a preset's own values are the defaults shown"

    # Every option carries an explanation, not only its default.
    for action in _train_parser()._actions:
        if action.option_strings and action.dest != "help":
            words = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip()
            assert len(words) > 5, f"{action.option_strings} has no explanation"
    fit_help = {a.dest: a.help for a in _train_parser()._actions}
    assert "critic" in fit_help["n_critic"] and "fresh batch" in fit_help["n_critic"]
    assert "(default: 1000)" in fit_help["steps"]


def test_train_options_reach_the_configs(tmp_path, monkeypatch, medmnist_root):
    seen = {}

    def fake_fit(gan, loader, fcfg, **kwargs):
        seen.update(gan=gan.config, fit=fcfg, batch=loader.batch_size)
        return History(step=0, stopped="done")

    monkeypatch.setattr("medgan_utils.pretrained.fit", fake_fit)
    monkeypatch.setattr("medgan_utils.pretrained.export", lambda *a, **k: tmp_path / "x")
    cli.main(["train", "wgan-gp", "--dataset", "breastmnist", "--root", str(medmnist_root),
              "--width", "8", "--lr-g", "1e-3", "--ema", "0.99", "--steps", "7", "--no-resume",
              "--batch-size", "5", "--out", str(tmp_path), "--device", "cpu"])
    gan, fit = seen["gan"], seen["fit"]
    assert (gan.loss, gan.width, gan.lr_g, gan.ema, gan.n_critic) == ("wgan-gp", 8, 1e-3, 0.99, 5)
    assert gan.lr_d == GANConfig.preset("wgan-gp").lr_d, "unset options keep the preset's value"
    assert (fit.steps, fit.resume) == (7, False)
    assert not hasattr(fit, "n_critic"), "n_critic has one owner: the model's config"
    assert seen["batch"] == 5


def test_train_module_then_sample(tmp_path, medmnist_root):
    out = tmp_path / "run"
    env = {**os.environ, "MEDMNIST_ROOT": str(medmnist_root), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "MEDGAN_DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "medgan_utils.cli", "train", "gan", "--dataset", "pneumoniamnist",
         "--steps", "3", "--log-every", "1", "--ckpt-every", "2", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    export = out / "gan_pneumoniamnist_28.safetensors"
    assert export.is_file() and str(export) in proc.stdout
    meta = read_metadata(export)
    assert meta["kind"] == "gan" and meta["config"]["arch"] == "mlp"
    assert meta["dataset"] == "pneumoniamnist"
    assert meta["steps"] == 3 and meta["stopped"] == "done"
    assert read_metadata(out / "last.safetensors")["step"] == 3
    hist = json.loads((out / "gan_pneumoniamnist_28.history.json").read_text())
    assert [r["step"] for r in hist["records"]] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["fit"]["ckpt_every"] == 2

    npz = tmp_path / "x.npz"
    assert cli.main(["sample", str(export), "--n", "10", "--out", str(npz), "--device", "cpu"]) == 0
    with np.load(npz) as data:
        assert set(data.files) == {"images"}
        images = data["images"]
    assert images.shape == (10, 28, 28) and images.dtype == np.uint8
    assert images.std() > 0
    again = tmp_path / "again.npz"
    cli.main(["sample", str(export), "--n", "10", "--out", str(again), "--device", "cpu"])
    np.testing.assert_array_equal(np.load(again)["images"], images)  # seeded
    other = tmp_path / "other.npz"
    cli.main(["sample", str(out / "last.safetensors"), "--n", "4", "--seed", "1", "--out",
              str(other), "--device", "cpu"])
    assert np.load(other)["images"].shape == (4, 28, 28)


def test_conditional_export_samples_labels(tmp_path, medmnist_root, capsys):
    out = tmp_path / "cond"
    cli.main(["train", "dcgan", "--conditional", "--dataset", "breastmnist", "--size", "64",
              "--root", str(medmnist_root), "--width", "8", "--latent-dim", "16", "--steps", "1",
              "--batch-size", "8", "--out", str(out), "--device", "cpu"])
    export = out / "dcgan_cond_breastmnist_64.safetensors"
    assert read_metadata(export)["config"]["num_classes"] == 2
    # The class mix fakes are drawn with is the training set's, and it survives export and load.
    from medgan_utils.data import load_arrays
    from medgan_utils.pretrained import load

    labels = load_arrays("breastmnist", "train", 64, medmnist_root).labels
    expected = np.bincount(labels, minlength=2) / len(labels)
    np.testing.assert_allclose(load(export)[0].class_prior.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(load(out / "last.safetensors")[0].class_prior.numpy(), expected, rtol=1e-6)

    npz = tmp_path / "cond.npz"
    cli.main(["sample", str(export), "--n", "10", "--out", str(npz), "--device", "cpu"])
    with np.load(npz) as data:
        images, labels = data["images"], data["labels"]
    assert images.shape == (10, 64, 64) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int64
    assert set(labels.tolist()) <= {0, 1}

    one = tmp_path / "one.npz"
    cli.main(["sample", str(export), "--n", "6", "--label", "1", "--out", str(one), "--device", "cpu"])
    assert np.load(one)["labels"].tolist() == [1] * 6
    assert "wrote (6, 64, 64) uint8" in capsys.readouterr().out


def test_every_registered_config_field_has_help_text():
    # The option help comes from each config's docstring (Attributes:); a field without a line
    # there shows a bare "(default: ...)" in `medgan train PRESET --help`.
    from medgan_utils import registry
    from medgan_utils.cli import _field_help

    for kind in registry.kinds().values():
        helps = _field_help(kind.config_cls)
        for f in dataclasses.fields(kind.config_cls):
            assert helps.get(f.name, "").strip(), f"{kind.config_cls.__name__}.{f.name} has no help text"
