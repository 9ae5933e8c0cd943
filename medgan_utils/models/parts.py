"""Pieces every model class of the course shares: the EMA of a generator, gradient-norm logging,
a history pool of fakes, and the linear learning-rate decay of a config (:class:`LinearDecay`). A new model (SRGAN, pix2pix, CycleGAN, a DP-GAN) composes them
instead of copying them out of :class:`~medgan_utils.models.gan.GAN`.

DiffAugment lives in :mod:`medgan_utils.models.diffaugment` and the loss families in
:mod:`medgan_utils.models.losses` (``make_game``).

Introduced in ``notebooks/03_wgan_gp.ipynb`` (EMA) and ``07_cyclegan`` (the image pool).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class LinearDecay:
    """A config's learning-rate schedule (CycleGAN's, Zhu et al. 2017): ``lr`` for
    ``constant_steps`` steps, then linearly down to 0 over ``decay_steps`` (0: never decays).

    Mixed into a frozen config dataclass that has the two fields; the model multiplies its
    learning rates by :meth:`lr_factor` of its own step count, which it checkpoints, so a resumed
    run continues the schedule. ``train_model`` calls :meth:`check_fit` before training.
    """

    constant_steps: int
    decay_steps: int

    def check_schedule(self) -> None:
        """Called from the config's ``__post_init__``: step counts must be >= 0."""
        if min(self.constant_steps, self.decay_steps) < 0:
            raise ValueError(f"constant_steps and decay_steps must be >= 0, got "
                             f"{self.constant_steps} and {self.decay_steps}")

    def check_fit(self, fit_config: Any) -> None:
        """The schedule must fit the run's length (``--steps``): an error where the rate would
        reach 0 before the end, a warning where the run stops before it has decayed."""
        total = self.constant_steps + self.decay_steps
        if self.decay_steps and fit_config.steps > total:
            raise ValueError(f"{fit_config.steps} steps but the learning rate reaches 0 after {total} "
                             f"(constant_steps {self.constant_steps} + decay_steps {self.decay_steps}): "
                             "the rest would not train. Set --constant-steps and --decay-steps to add up "
                             "to --steps (half and half in the CycleGAN paper)")
        if self.decay_steps and fit_config.steps < total:
            warnings.warn(f"{fit_config.steps} steps: training stops before the learning rate has decayed "
                          f"(constant_steps {self.constant_steps} + decay_steps {self.decay_steps} = {total})",
                          stacklevel=2)

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` (0-based) as a fraction of ``lr``."""
        if not self.decay_steps or step < self.constant_steps:
            return 1.0
        return max(0.0, 1.0 - (step - self.constant_steps) / self.decay_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """An exponential moving average of a network's weights (Karras et al.; timm's ``ModelEmaV2``).

    Early on the average would be dominated by the random initial weights, so the decay warms up
    as ``min(decay, (1 + t) / (10 + t))`` with ``t`` the number of updates so far. For a GAN ``t``
    is Adam's own step counter, which checkpoints save, so a resumed run continues the same
    schedule without extra state; the EMA also counts its updates for optimizers without one.

    Args:
        module: the network to average; a frozen copy in eval mode is kept as ``ema.module``.
        decay: the target decay in (0, 1), e.g. 0.999.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0  # the warm-up's own count, for optimizers that keep none (SGD)

    @torch.no_grad()
    def update(self, source: nn.Module, t: float | None = None) -> None:
        """Move the average towards ``source`` after its ``t``-th update (buffers are copied).

        ``t``: the optimizer's step count when it keeps one (Adam's survives resume in its
        state); the larger of it and this EMA's own count of updates is used, so an optimizer
        without a count (SGD) still gets the warm-up instead of a decay stuck at 0.1."""
        self.updates += 1
        t = max(float(t or 0.0), float(self.updates))
        d = min(self.decay, (1 + t) / (10 + t))
        for p_ema, p in zip(self.module.parameters(), source.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.module.buffers(), source.buffers(), strict=True):
            b_ema.copy_(b)


def adam_steps(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> float:
    """How many updates ``optimizer`` has applied to the first of ``params`` (0 before any)."""
    state = optimizer.state.get(next(iter(params)), {})
    return float(state.get("step", 0))


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all gradients of ``params`` together (logged to show vanishing gradients)."""
    sq = [(p.grad.detach() ** 2).sum() for p in params if p.grad is not None]
    return float(torch.sqrt(sum(sq))) if sq else 0.0


class ImagePool:
    """A history of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN).

    Once full, each incoming fake is, with probability 1/2, swapped for a stored one, so D also
    sees older fakes and G cannot chase a D that forgets. Its content and its random stream are
    state (``state_dict``), so a resumed run draws exactly what an uninterrupted one would.

    Args:
        size: images kept (0 disables the pool: ``query`` returns its input).
        seed: seed of the pool's own ``torch.Generator`` (the global RNG is not touched).
    """

    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        """``fakes`` (B, C, H, W) -> a batch of the same shape mixing new and stored fakes."""
        if self.size == 0:
            return fakes
        out = []
        for img in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=self.gen) < 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.gen))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"images": [x.cpu() for x in self.images], "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore images (onto ``device``: the model's, so that stored and new fakes can be
        stacked; default the pool's current images' device, else the CPU) and the random stream."""
        device = device or (self.images[0].device if self.images else "cpu")
        self.images = [x.to(device) for x in state["images"]]
        self.gen.set_state(state["rng"])
