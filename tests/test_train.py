"""The one training loop: history, files, n_critic, callbacks, budgets, exact resume, NaN guard."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medgan_utils.checkpoint import CheckpointError, load_checkpoint, read_metadata
from medgan_utils.data import TensorLoader
from medgan_utils.models import GAN, Classifier, ClassifierConfig, GANConfig
from medgan_utils.models.parts import ImagePool
from medgan_utils.train import DivergenceError, FitConfig, History, fit

REPO = Path(__file__).resolve().parent.parent


def tiny_gan(seed: int = 0, preset: str = "dcgan", **overrides) -> GAN:
    torch.manual_seed(seed)
    return GAN(GANConfig.preset(preset, **{"width": 8, "latent_dim": 16, **overrides}))


def tiny_loader(n: int = 48, batch_size: int = 8, seed: int = 0) -> TensorLoader:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return TensorLoader(images, np.arange(n) % 2, batch_size=batch_size, seed=seed)


def snapshot(gan: GAN) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.detach().clone() for m, mod in gan.modules().items()
            for k, v in mod.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ: {diff[:5]}"


class Recorder:
    """Wraps a GAN and records the order of d_step/g_step calls and the batches they got."""

    def __init__(self, gan: GAN):
        self.gan, self.calls, self.batch_ids = gan, [], []

    def d_step(self, batch):
        self.calls.append("d")
        self.batch_ids.append(batch[1].tolist())
        return self.gan.d_step(batch)

    def g_step(self, batch):
        self.calls.append("g")
        self.batch_ids.append(batch[1].tolist())
        return self.gan.g_step(batch)

    @property
    def config(self):
        return self.gan.config

    def train_step(self, batches):  # the GAN's own step order, calling the recording updates
        return GAN.train_step(self, batches)

    def modules(self):
        return self.gan.modules()

    def optimizers(self):
        return self.gan.optimizers()


# --- one ordinary run ---------------------------------------------------------------------------


def test_fit_records_history_and_writes_run_folder(tmp_path):
    gan = tiny_gan()
    before = snapshot(gan)
    hist = fit(gan, tiny_loader(), FitConfig(steps=4, log_every=2, ckpt_every=2), out_dir=tmp_path,
               metadata={"dataset": "synthetic"}, progress=False)
    assert hist.stopped == "done" and hist.step == 4
    assert [r["step"] for r in hist.records] == [2, 4]
    for rec in hist.records:
        for key in ("loss_D", "loss_G", "D_real", "D_fake", "G_grad_norm", "wall_s"):
            assert math.isfinite(rec[key]), key
    steps, values = hist.series("loss_G")
    assert steps == [2, 4] and len(values) == 2

    for name in ("history.json", "config.json", "last.safetensors", "last.state.pt"):
        assert (tmp_path / name).is_file(), name
    assert History.from_json(tmp_path / "history.json") == hist
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["fit"]["steps"] == 4 and config["dataset"] == "synthetic"
    meta = read_metadata(tmp_path / "last.safetensors")
    assert meta["step"] == 4 and meta["dataset"] == "synthetic"

    after = snapshot(gan)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"G", "D"}
    # What is on disk is what is in memory.
    fresh = tiny_gan(seed=1)
    load_checkpoint(tmp_path / "last.safetensors", fresh.modules())
    assert_bitwise_equal(snapshot(fresh), after)


def test_fit_without_out_dir_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hist = fit(tiny_gan(), tiny_loader(), FitConfig(steps=2, log_every=1), progress=False)
    assert hist.step == 2 and len(hist.records) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_critic", [0, 1, 3, 5])
def test_n_critic_d_steps_per_g_step_each_on_a_fresh_batch(n_critic):
    # The model's config is the one owner of n_critic: fit has no second copy to forget.
    model = Recorder(tiny_gan(preset="wgan-gp", n_critic=n_critic))
    loader = TensorLoader(np.zeros((96, 28, 28), np.uint8), np.arange(96), batch_size=4, seed=0)
    fit(model, loader, FitConfig(steps=3, log_every=1), progress=False)
    assert model.calls == (["d"] * n_critic + ["g"]) * 3
    seen = [i for ids in model.batch_ids for i in ids]
    assert len(seen) == len(set(seen)) == 4 * 3 * (n_critic + 1), "every call got new images"


def test_fit_config_validates():
    for bad in (dict(steps=0), dict(log_every=0), dict(on_divergence="ignore")):
        with pytest.raises(ValueError):
            FitConfig(**bad)
    with pytest.raises(TypeError):
        FitConfig(n_critic=5)  # critic steps belong to the model's config, not to fit's
    with pytest.raises(ValueError, match="n_critic"):
        GANConfig.preset("wgan-gp", n_critic=-1)


# --- a model that is not adversarial ------------------------------------------------------------


class TinyClassifier:
    """One supervised update per step: how the downstream classifier (or a diffusion model)
    uses fit()."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = Classifier(ClassifierConfig(channels=1, num_classes=2, width=4, stages=1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)

    def train_step(self, batches):
        x, y = next(batches)
        loss = F.cross_entropy(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}


def test_non_adversarial_model_trains(tmp_path):
    # Learnable task: label = whether the image is bright.
    images = np.concatenate([np.full((16, 28, 28), 30, np.uint8), np.full((16, 28, 28), 220, np.uint8)])
    labels = np.array([0] * 16 + [1] * 16)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    hist = fit(model, TensorLoader(images, labels, batch_size=8), FitConfig(steps=20, log_every=5),
               out_dir=tmp_path, progress=False)
    assert hist.stopped == "done" and [r["step"] for r in hist.records] == [5, 10, 15, 20]
    _, loss = hist.series("loss")
    assert loss[-1] < loss[0]
    assert any(not torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    assert read_metadata(tmp_path / "last.safetensors")["step"] == 20


# --- callbacks and budgets ----------------------------------------------------------------------


def test_callbacks_log_numbers_and_stop_early(tmp_path):
    seen = []

    def evaluate(step, model, logs):
        seen.append(step)
        return {"score": 10.0 * step}

    def stop_at_3(step, model, logs):
        assert "loss_G" in logs and model is gan
        return step == 3 or None

    gan = tiny_gan()
    hist = fit(gan, tiny_loader(), FitConfig(steps=10, log_every=1, ckpt_every=0),
               out_dir=tmp_path, callbacks=[(2, evaluate), (1, stop_at_3)], progress=False)
    assert hist.stopped == "callback" and hist.step == 3
    assert seen == [2]
    assert [r.get("score") for r in hist.records] == [None, 20.0, None]
    assert read_metadata(tmp_path / "last.safetensors")["step"] == 3, "a final checkpoint"


def test_max_seconds_stops_with_a_checkpoint(tmp_path):
    hist = fit(tiny_gan(), tiny_loader(), FitConfig(steps=1000, max_seconds=1e-9, ckpt_every=0),
               out_dir=tmp_path, progress=False)
    assert hist.stopped == "time" and hist.step == 1
    assert read_metadata(tmp_path / "last.safetensors")["step"] == 1
    # The losses of the interrupted logging interval are kept (a quick-mode notebook stopped by
    # its time budget before the first log_every must still have a loss curve).
    assert [r["step"] for r in hist.records] == [1]
    assert math.isfinite(hist.records[0]["loss_G"])


def test_sample_grids_do_not_change_training(tmp_path):
    runs = {}
    for every in (0, 1):
        gan = tiny_gan()
        fit(gan, tiny_loader(), FitConfig(steps=2, sample_every=every, log_every=1),
            out_dir=tmp_path / str(every), progress=False)
        runs[every] = snapshot(gan)
    assert sorted(p.name for p in (tmp_path / "1" / "samples").iterdir()) == [
        "step_000001.png", "step_000002.png"]
    assert not (tmp_path / "0" / "samples").exists()
    assert_bitwise_equal(runs[0], runs[1])


# --- resume -------------------------------------------------------------------------------------


def test_resume_in_process_is_exact_even_at_an_epoch_boundary(tmp_path):
    cfg = dict(log_every=1, ckpt_every=0)
    gan_a = tiny_gan(ema=0.9)
    hist_a = fit(gan_a, tiny_loader(), FitConfig(steps=6, **cfg), out_dir=tmp_path / "a",
                 progress=False)

    # 3 steps x 2 batches = 6 batches = exactly one epoch of 48 images in batches of 8.
    fit(tiny_gan(ema=0.9), tiny_loader(), FitConfig(steps=3, **cfg), out_dir=tmp_path / "b",
        progress=False)
    torch.manual_seed(12345)  # resume must restore the RNG, not rely on it
    gan_b = tiny_gan(seed=99, ema=0.9)
    hist_b = fit(gan_b, tiny_loader(), FitConfig(steps=6, **cfg), out_dir=tmp_path / "b",
                 progress=False)
    assert hist_b.stopped == "done" and hist_b.step == 6
    assert_bitwise_equal(snapshot(gan_a), snapshot(gan_b))
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in hist_a.records]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in hist_b.records]

    calls = Recorder(gan_b)
    again = fit(calls, tiny_loader(), FitConfig(steps=6, **cfg), out_dir=tmp_path / "b",
                progress=False)
    assert again.stopped == "done" and calls.calls == [], "a finished run is not trained again"


def test_resume_from_corrupt_checkpoint_says_how_to_start_over(tmp_path):
    fit(tiny_gan(), tiny_loader(), FitConfig(steps=1), out_dir=tmp_path, progress=False)
    ckpt = tmp_path / "last.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="resume=False"):
        fit(tiny_gan(), tiny_loader(), FitConfig(steps=2), out_dir=tmp_path, progress=False)
    hist = fit(tiny_gan(), tiny_loader(), FitConfig(steps=2, resume=False), out_dir=tmp_path,
               progress=False)
    assert hist.step == 2 and read_metadata(ckpt)["step"] == 2


RUN_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from medgan_utils.data import TensorLoader
    from medgan_utils.models import GAN, GANConfig
    from medgan_utils.train import FitConfig, fit
    from medgan_utils.utils import seed_everything

    out, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    seed_everything(0)
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    loader = TensorLoader(images, np.arange(40) % 2, batch_size=8, seed=0)
    gan = GAN(GANConfig.preset("dcgan", width=8, latent_dim=16, ema=0.9))
    slow = [(1, lambda step, model, logs: time.sleep(delay))]  # slows the run, touches no RNG
    hist = fit(gan, loader, FitConfig(steps=steps, log_every=1, ckpt_every=2), out_dir=out,
               callbacks=slow, progress=False)
    print(hist.stopped, hist.step)
""")


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    steps = 9

    def start(out: Path, delay: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(out), str(steps), str(delay)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    run_a = start(tmp_path / "a", 0.0)  # uninterrupted, runs alongside B
    run_b = start(tmp_path / "b", 0.4)
    first = tmp_path / "b" / "history.json"  # written just after the first checkpoint
    deadline = time.monotonic() + 120
    while not first.exists():
        assert run_b.poll() is None, f"run B ended before its first checkpoint:\n{run_b.stdout.read()}"
        assert time.monotonic() < deadline, "run B wrote no checkpoint in 120 s"
        time.sleep(0.02)
    run_b.send_signal(signal.SIGKILL)
    run_b.wait(timeout=30)
    run_b.stdout.close()
    assert run_b.returncode == -signal.SIGKILL
    killed_at = read_metadata(tmp_path / "b" / "last.safetensors")["step"]
    assert 2 <= killed_at < steps, "the kill landed mid-run"

    run_b = start(tmp_path / "b", 0.0)
    out_b, _ = run_b.communicate(timeout=120)
    out_a, _ = run_a.communicate(timeout=120)
    assert run_a.returncode == 0, out_a
    assert run_b.returncode == 0, out_b
    assert f"done {steps}" in out_a and f"done {steps}" in out_b

    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in "ab")
    assert_bitwise_equal(a, b)
    sa, sb = (torch.load(tmp_path / r / "last.state.pt", weights_only=True) for r in "ab")
    for name in ("G", "D"):
        for i, st in sa["optimizers"][name]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb["optimizers"][name]["state"][i][k])
    ha, hb = (History.from_json(tmp_path / r / "history.json") for r in "ab")
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in ha.records] == \
        [{k: v for k, v in r.items() if k != "wall_s"} for r in hb.records]


# --- state beyond weights, optimizers and RNG -----------------------------------------------------


class StepAccountant:
    """Stands in for a privacy accountant: a history of (noise, sample rate) per step."""

    def __init__(self):
        self.history: list[tuple[float, float]] = []

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        self.history.append((noise_multiplier, sample_rate))

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state["history"]]


class StatefulModel:
    """A model with each kind of state fit must carry across a resume: a learning-rate schedule,
    an image history pool (whose content feeds the loss) and an accountant."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.pool = ImagePool(size=6, seed=3)
        self.accountant = StepAccountant()

    def train_step(self, batches):
        x, _ = next(batches)
        fakes = self.pool.query(x + 0.1 * torch.randn_like(x))
        loss = ((self.net(fakes) - x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.accountant.step(1.1, x.shape[0] / 48)
        return {"loss": loss.item()}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def state_dict(self):
        return {"sched": self.sched.state_dict(), "pool": self.pool.state_dict(),
                "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state):
        self.sched.load_state_dict(state["sched"])
        self.pool.load_state_dict(state["pool"])
        self.accountant.load_state_dict(state["accountant"])


def test_resume_restores_schedulers_pools_and_accountants_bitwise(tmp_path):
    cfg = dict(log_every=1, ckpt_every=0)
    whole = StatefulModel()
    fit(whole, tiny_loader(), FitConfig(steps=8, **cfg), out_dir=tmp_path / "a", progress=False)

    fit(StatefulModel(), tiny_loader(), FitConfig(steps=5, **cfg), out_dir=tmp_path / "b", progress=False)
    torch.manual_seed(999)
    resumed = StatefulModel()
    fit(resumed, tiny_loader(), FitConfig(steps=8, **cfg), out_dir=tmp_path / "b", progress=False)

    assert torch.equal(whole.net.weight, resumed.net.weight)
    assert resumed.sched.last_epoch == 8 and resumed.opt.param_groups[0]["lr"] == whole.opt.param_groups[0]["lr"]
    assert len(resumed.pool.images) == 6
    assert all(torch.equal(a, b) for a, b in zip(whole.pool.images, resumed.pool.images, strict=True))
    assert resumed.accountant.history == whole.accountant.history and len(whole.accountant.history) == 8


def test_classifier_schedule_survives_resume(tmp_path):
    from medgan_utils.classify import ClassifierModel, ClassifierTrainConfig

    def model():
        torch.manual_seed(0)
        net = Classifier(ClassifierConfig(channels=1, num_classes=2, width=4, stages=1))
        return ClassifierModel(net, ClassifierTrainConfig(), steps=6)

    whole = model()
    fit(whole, tiny_loader(), FitConfig(steps=6, log_every=1, ckpt_every=0), out_dir=tmp_path / "a",
        progress=False)
    fit(model(), tiny_loader(), FitConfig(steps=3, log_every=1, ckpt_every=0), out_dir=tmp_path / "b",
        progress=False)
    resumed = model()
    fit(resumed, tiny_loader(), FitConfig(steps=6, log_every=1, ckpt_every=0), out_dir=tmp_path / "b",
        progress=False)
    assert resumed.sched.last_epoch == 6
    assert all(torch.equal(a, b) for a, b in zip(whole.net.state_dict().values(),
                                                 resumed.net.state_dict().values(), strict=True))


# --- NaN guard ----------------------------------------------------------------------------------


class NaNAt(Recorder):
    """Puts NaN into G's weights just before the k-th g_step, as a too-high learning rate would."""

    def __init__(self, gan: GAN, k: int):
        super().__init__(gan)
        self.k, self.g_calls = k, 0

    def g_step(self, batch):
        self.g_calls += 1
        if self.g_calls == self.k:
            with torch.no_grad():
                for p in self.gan.G.parameters():
                    p.fill_(float("nan"))
        return super().g_step(batch)


def test_divergence_raises_and_keeps_last_good_checkpoint(tmp_path):
    model = NaNAt(tiny_gan(), k=5)
    with pytest.raises(DivergenceError) as err:
        fit(model, tiny_loader(), FitConfig(steps=10, ckpt_every=2, log_every=1), out_dir=tmp_path,
            progress=False)
    msg = str(err.value)
    ckpt = tmp_path / "last.safetensors"
    assert "step 5" in msg and "loss_G" in msg and "nan" in msg
    assert str(ckpt) in msg and "(step 4)" in msg
    assert model.calls.count("g") == 5, "training stopped at the bad step"

    fresh = tiny_gan(seed=1)
    loaded = load_checkpoint(ckpt, fresh.modules(), with_state=True)
    assert loaded["metadata"]["step"] == 4 and loaded["state"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in snapshot(fresh).values())
    diverged = History.from_json(tmp_path / "diverged_history.json")
    assert diverged.stopped == "diverged" and diverged.records[-1]["step"] == 5


def test_divergence_stop_returns_history(tmp_path):
    hist = fit(NaNAt(tiny_gan(), k=3), tiny_loader(),
               FitConfig(steps=10, ckpt_every=2, log_every=1, on_divergence="stop"),
               out_dir=tmp_path, progress=False)
    assert hist.stopped == "diverged"
    assert hist.records[-1] == {"step": 3, "diverged": 1.0}
    assert read_metadata(tmp_path / "last.safetensors")["step"] == 2
    fresh = tiny_gan(seed=1)
    load_checkpoint(tmp_path / "last.safetensors", fresh.modules())
    assert all(torch.isfinite(t).all() for t in snapshot(fresh).values())


def test_divergence_before_any_checkpoint_claims_none(tmp_path):
    with pytest.raises(DivergenceError) as err:
        fit(NaNAt(tiny_gan(), k=1), tiny_loader(), FitConfig(steps=5, ckpt_every=2),
            out_dir=tmp_path, progress=False)
    assert "step 1" in str(err.value) and "last good checkpoint" not in str(err.value)
    assert not (tmp_path / "last.safetensors").exists()


def test_resume_refuses_a_changed_model_and_keeps_the_run_record(tmp_path, medmnist_root):
    from medgan_utils.data import load_arrays
    from medgan_utils.pretrained import train_model

    data = load_arrays("breastmnist", "train", 28, medmnist_root)
    small = dict(width=4, latent_dim=8)
    train_model(GANConfig.preset("dcgan", **small), data, FitConfig(steps=2), out_dir=tmp_path,
                progress=False)
    before = (tmp_path / "config.json").read_text()
    # A new learning rate would be overwritten by the checkpoint's optimizer state: refused.
    with pytest.raises(CheckpointError, match="lr_g.*--no-resume"):
        train_model(GANConfig.preset("dcgan", **small, lr_g=1e-2), data, FitConfig(steps=4),
                    out_dir=tmp_path, progress=False)
    assert (tmp_path / "config.json").read_text() == before
    _, hist = train_model(GANConfig.preset("dcgan", **small), data, FitConfig(steps=4), out_dir=tmp_path,
                          progress=False)
    assert hist.step == 4, "the same model resumes"
