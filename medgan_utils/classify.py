"""Training and judging the small ResNet classifier, through the same ``fit`` as every GAN.

The classifier is a model that is not adversarial: its ``train_step`` is one supervised update, and early stopping on the validation split is a ``fit`` callback. The trained network
serves as the feature extractor of :mod:`medgan_utils.metrics` (shipped as
``checkpoints/extractor_<dataset>_<size>.safetensors``) and as chapter 04's downstream judge.

Introduced in ``notebooks/03_wgan_gp.ipynb``; the extractors are trained by
``medgan train-extractor --dataset NAME``.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .data import Arrays, TensorLoader, to_float
from .data.augment import affine
from .models.classifier import Classifier, ClassifierConfig
from .train import FitConfig, fit
from .utils import CHECKPOINT_DIR, RUNS_DIR, one_cpu_thread


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """The one recipe every classifier of the course is trained with.

    Attributes:
        max_epochs: upper bound on epochs.
        patience: epochs without a better validation AUC before stopping early.
        batch_size, lr, weight_decay: AdamW settings (cosine decay over max_epochs).
        augment: random flips and small rotations (+-``rotate_deg``) of each training batch.
        seed: weight init, batch order and augmentation.
        min_steps_per_epoch: an "epoch" (one validation) is at least this many steps, so a
            27-image subset still gets hundreds of updates within ``max_epochs``.
    """

    max_epochs: int = 30
    patience: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    rotate_deg: float = 10.0
    seed: int = 0
    min_steps_per_epoch: int = 20


def augment_batch(x: torch.Tensor, rotate_deg: float = 10.0) -> torch.Tensor:
    """Random horizontal flips and rotations of (B, C, H, W) images, on their device, no PIL."""
    b = x.shape[0]
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    return affine(x, (torch.rand(b, device=x.device) * 2 - 1) * math.radians(rotate_deg))


class ClassifierModel:
    """Adapter that lets :func:`fit` train a :class:`Classifier` (``train_step`` = one update).

    Its learning-rate schedule is state (``state_dict``), so a resumed run continues the cosine
    decay where it stopped instead of restarting it."""

    def __init__(self, net: Classifier, config: ClassifierTrainConfig, steps: int,
                 device: torch.device | str = "cpu"):
        self.net, self.config = net.to(device), config
        self.device = torch.device(device)
        self.opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(steps, 1))

    def train_step(self, batches) -> dict[str, float]:
        x, y = next(batches)
        self.net.train()
        if self.config.augment:
            x = augment_batch(x, self.config.rotate_deg)
        loss = F.cross_entropy(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        with one_cpu_thread(self.device):  # same gradients on any number of CPU threads
            loss.backward()
        self.opt.step()
        self.sched.step()
        return {"loss": loss.item()}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def state_dict(self) -> dict:
        return {"scheduler": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state["scheduler"])


@torch.no_grad()
def predict_proba(net: Classifier, images: torch.Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, K) for uint8 arrays or float (N, C, H, W) images in [-1, 1]."""
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = to_float(torch.as_tensor(x)) if not torch.is_tensor(x) or x.dtype == torch.uint8 else x
        out.append(F.softmax(net(x.to(dev).float()), dim=1).cpu())
    return torch.cat(out).numpy()


def auc_acc(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC (binary, or one-vs-rest macro for multi-class) and accuracy, as MedMNIST reports them."""
    labels = np.asarray(labels).reshape(-1)
    acc = float((probs.argmax(1) == labels).mean())
    if probs.shape[1] == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        auc = roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1])))
    return {"auc": float(auc), "acc": acc}


def train_classifier(
    train_images: np.ndarray, train_labels: np.ndarray, val: Arrays,
    num_classes: int, config: ClassifierTrainConfig = ClassifierTrainConfig(),
    net_config: ClassifierConfig | None = None, device: torch.device | str = "cpu",
    out_dir: str | os.PathLike | None = None, progress: bool = False,
) -> tuple[Classifier, dict]:
    """Train with early stopping on ``val``'s AUC; returns the best network and its record.

    Args:
        train_images: uint8 (N, H, W) or (N, H, W, C); may mix real and synthetic images.
        train_labels: int (N,).
        val: the validation split, used only to choose the epoch.
        num_classes: output classes.
    """
    torch.manual_seed(config.seed)
    channels = 1 if train_images.ndim == 3 else train_images.shape[-1]
    net = Classifier(net_config or ClassifierConfig(channels=channels, num_classes=num_classes))
    loader = TensorLoader(train_images, train_labels, config.batch_size, device, seed=config.seed)
    steps_per_epoch = max(len(loader), config.min_steps_per_epoch)
    steps = config.max_epochs * steps_per_epoch
    model = ClassifierModel(net, config, steps, device)
    best = {"auc": -1.0, "epoch": 0, "state": None}

    def validate(step: int, _model, _logs):
        epoch = step // steps_per_epoch
        m = auc_acc(predict_proba(net, val.images), val.labels)
        if m["auc"] > best["auc"]:
            best.update(auc=m["auc"], acc=m["acc"], epoch=epoch, state=copy.deepcopy(net.state_dict()))
        if epoch - best["epoch"] >= config.patience:
            return True
        return {"val_auc": m["auc"], "val_acc": m["acc"]}

    hist = fit(model, loader, FitConfig(steps=steps, log_every=steps_per_epoch, ckpt_every=0, resume=False),
               out_dir=out_dir, callbacks=[(steps_per_epoch, validate)], progress=progress)
    net.load_state_dict(best["state"])
    net.eval()
    return net, {"best_epoch": best["epoch"], "val_auc": best["auc"], "val_acc": best["acc"],
                 "epochs_run": hist.step // steps_per_epoch, "history": hist.records,
                 "train_config": asdict(config)}


def extractor_path(dataset: str, size: int = 28, root: str | os.PathLike | None = None) -> Path:
    """Where the shipped feature extractor for ``dataset`` at ``size`` px lives."""
    return Path(root or CHECKPOINT_DIR) / f"extractor_{dataset}_{size}.safetensors"


def save_classifier(net: Classifier, path: str | os.PathLike, **metadata) -> Path:
    """Write a classifier (weights + its config and test scores in the header)."""
    return save_checkpoint(path, {"net": net}, metadata={"classifier": net.config.to_dict(), **metadata})


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> Classifier:
    """Rebuild a classifier from its checkpoint (config read from the header)."""
    meta = read_metadata(path)
    net = Classifier(ClassifierConfig(**meta["classifier"]))
    load_checkpoint(path, {"net": net})
    return net.to(device).eval()


def load_extractor(dataset: str, size: int = 28, device: torch.device | str = "cpu",
                   root: str | os.PathLike | None = None) -> Classifier:
    """The shipped in-domain feature extractor (raises FileNotFoundError naming the command
    that trains one: ``medgan train-extractor --dataset NAME --size N``)."""
    path = extractor_path(dataset, size, root)
    if not path.exists():
        raise FileNotFoundError(
            f"no feature extractor for {dataset} at {size} px ({path}). Train one with:\n"
            f"  medgan train-extractor --dataset {dataset} --size {size}"
        )
    return load_classifier(path, device)


def get_extractor(dataset: str, size: int = 28, device: torch.device | str = "cpu",
                  quick: bool = False) -> tuple[Classifier, str]:
    """The shipped extractor, or (for a data set without one) one trained now and saved to
    ``runs/``; returns ``(net, how)`` where ``how`` says which, for the notebook to print."""
    try:
        return load_extractor(dataset, size, device), f"shipped ({extractor_path(dataset, size).name})"
    except FileNotFoundError:
        pass
    local = RUNS_DIR / extractor_path(dataset, size).name
    if local.exists():
        return load_classifier(local, device), f"trained earlier ({local})"
    from .data import dataset_info, load_arrays

    tr, va = load_arrays(dataset, "train", size), load_arrays(dataset, "val", size)
    epochs = 1 if quick else 10
    net, rec = train_classifier(tr.images, tr.labels, va, len(dataset_info(dataset)["label"]),
                                ClassifierTrainConfig(max_epochs=epochs), device=device)
    save_classifier(net, local, dataset=dataset, size=size, val_auc=rec["val_auc"])
    return net, (f"no shipped extractor for {dataset}: trained one now for {epochs} epoch(s) "
                 f"(val AUC {rec['val_auc']:.3f}), saved to {local}")
