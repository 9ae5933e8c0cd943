"""The differentially private GAN of chapter 09 (DP-SGD on the discriminator, with Opacus).

Only the discriminator ever sees a real image; the generator learns from D's gradients alone. So
if D is trained with DP-SGD (each real image's gradient clipped to ``max_grad_norm``, Gaussian
noise added to the sum, Poisson-sampled batches, Abadi et al. 2016), G is differentially private
too, by post-processing (Xie et al. 2018, DPGAN). :class:`DPGAN` is the course's :class:`GAN`
with three changes, each forced by per-sample gradients:

* D uses GroupNorm (``d_norm="layer"``), never BatchNorm: BatchNorm mixes the images of a batch, so
  "one image's gradient" does not exist (Opacus' ``ModuleValidator`` refuses it), and D's
  activations are not in place (Opacus' backward hooks need the layers' inputs intact).
* Each D step sees a Poisson batch of real images and as many fakes, labelled as the reals; D's
  per-sample gradient is that of the pair (real i, fake i), clipped as one. For that bound to
  cover each real image, pair i must depend on record i alone: the fakes of a D step come from G
  in eval mode (:meth:`DPGAN.fakes_for_d`), because G's BatchNorm in batch mode would mix every
  fake with the batch's other labels and its size.
* G's step draws its labels from the class prior and never touches a real batch, and it runs with
  Opacus' hooks off (``disable_hooks``): G's pass through D must not add per-sample gradients to
  D's next private step. (G's BatchNorm statistics are updated in G's steps only, from fakes.)
* Nothing computed from a real batch is logged (no D(real), no loss of D): a private run's
  history holds G's losses and the epsilon spent, so it can ship beside the weights.
* The Gaussian noise and the Poisson batches come from a fresh secret seed
  (``private_rng=True``), kept only in the run's local trainer state for resume and never in an
  export: noise drawn from a published seed could be replayed and subtracted.

The privacy machinery is Opacus' own (``GradSampleHooks``, ``DPOptimizer``, its RDP or PRV
accountant, ``get_noise_multiplier``): :meth:`DPGAN.make_private` wires it in from outside the one
``fit`` loop, which stays unaware of privacy. It is called by the registered kind's ``prepare``
(:func:`medgan_utils.pretrained.train_model`), because the noise needed for a target epsilon
depends on the loader's sampling rate and on the run's length, which the model alone does not
know. ``epsilon=inf`` trains the same networks with the same sampling and no clipping or noise:
the non-private twin every private model is compared with.

Introduced in ``notebooks/09_privacy.ipynb``.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .gan import GAN, GANConfig

ACCOUNTANTS = ("rdp", "prv")

DP_PRESETS: dict[str, dict] = {
    # Chapter 04's conditional DCGAN recipe (projection D + AC-GAN head, EMA) at width 16 (fewer
    # parameters: the noise is added to every one of them), with GroupNorm in D, no DiffAugment.
    "dp-gan": dict(arch="dcgan", loss="bce", d_norm="layer", width=16, ema=0.999, aux_weight=1.0),
}


@dataclass(frozen=True)
class DPGANConfig(GANConfig):
    """A :class:`GANConfig` plus the privacy target (saved in every checkpoint header).

    Attributes:
        epsilon: the (epsilon, delta)-DP guarantee to reach at the end of training; the noise
            multiplier is calibrated for it. ``inf``: no clipping and no noise (the twin).
        delta: the delta of the guarantee; below 1 / (number of training images).
        max_grad_norm: the clip C of each image's gradient of D's loss.
        accountant: Opacus' "rdp" (Renyi DP, Mironov 2017) or "prv" (numerical composition,
            Gopi et al. 2021: tighter, slower).
        private_rng: draw the DP noise and the Poisson batches from a fresh secret seed (as the
            guarantee requires); False: from the run's public seed, so that a run repeats
            exactly and its noise can be replayed (teaching and tests only: no guarantee).
    """

    epsilon: float = 10.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    private_rng: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0 (inf: no privacy), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.d_norm == "batch":
            raise ValueError("a private discriminator cannot use BatchNorm (it mixes the images of a "
                             "batch, so one image's gradient is not defined): set d_norm='layer'")
        if self.loss != "bce":
            raise ValueError("DPGAN trains the BCE game: WGAN-GP's gradient penalty needs a double "
                             "backward that Opacus' per-sample gradients do not support")
        if self.n_critic < 1:
            raise ValueError(f"n_critic (D steps per G step) must be >= 1, got {self.n_critic}")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


class DPGAN(GAN):
    """:class:`GAN` whose discriminator can be made differentially private (module docstring).

    Args:
        config: a :class:`DPGANConfig`.
        device, class_prior: as for :class:`GAN`. The class prior (the training labels' class
            mix) is treated as public: G's labels are drawn from it.
    """

    def __init__(self, config: DPGANConfig, device: torch.device | str = "cpu",
                 class_prior: torch.Tensor | None = None, privacy: dict[str, Any] | None = None):
        super().__init__(config, device, class_prior)
        self._shipped_privacy = privacy  # a loaded export's header facts (no accountant then)
        for m in self.D.modules():  # Opacus' hooks need each layer's input intact
            if getattr(m, "inplace", False):
                m.inplace = False
        self._hooks: Any = None
        self.accountant: Any = None
        self.noise_multiplier = 0.0
        self.sample_rate = 0.0
        self.planned_d_steps = 0
        self.batch_size = 64  # G's batch: the expected size of D's Poisson batches once prepared
        self.d_steps = 0
        self.empty_batches = 0
        self.noise_generator: torch.Generator | None = None
        self.sampling_seed: int | None = None  # the loader's secret seed (private_rng)

    # -- privacy, wired in from outside fit() --------------------------------------------------
    def make_private(self, sample_rate: float, d_steps: int, expected_batch_size: int) -> float:
        """Attach Opacus to D for ``d_steps`` private steps on Poisson batches of rate
        ``sample_rate``; returns the noise multiplier that reaches ``config.epsilon`` at ``delta``
        after exactly those steps (0 for ``epsilon=inf``: nothing is attached)."""
        c: DPGANConfig = self.config  # type: ignore[assignment]
        if not 0 < sample_rate <= 1 or d_steps < 1 or expected_batch_size < 1:
            raise ValueError(f"need 0 < sample_rate <= 1, d_steps >= 1, expected_batch_size >= 1; got "
                             f"{sample_rate}, {d_steps}, {expected_batch_size}")
        if self._hooks is not None:
            raise RuntimeError("this DPGAN is private already: build a new one for another run")
        self.sample_rate, self.planned_d_steps = float(sample_rate), int(d_steps)
        self.batch_size = int(expected_batch_size)
        if not c.private:
            return 0.0
        try:
            from opacus.accountants import create_accountant
            from opacus.accountants.utils import get_noise_multiplier
            from opacus.grad_sample import GradSampleHooks
            from opacus.optimizers import DPOptimizer
            from opacus.validators import ModuleValidator
        except ImportError as err:
            raise ImportError("a private DPGAN needs Opacus: pip install 'opacus>=1.6,<1.7' "
                              "(make venv installs it)") from err
        n_train = expected_batch_size / sample_rate
        if c.delta >= 1 / n_train:
            raise ValueError(f"delta={c.delta} is not below 1/N = {1 / n_train:.2g} (N = {n_train:.0f} training "
                             "images): such a delta allows releasing an image outright; choose a smaller one")
        ModuleValidator.validate(self.D, strict=True)  # no BatchNorm, only supported layers
        with warnings.catch_warnings():  # the search for sigma warns about RDP orders it tries
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=c.epsilon, target_delta=c.delta, sample_rate=sample_rate,
                steps=d_steps, accountant=c.accountant))
        if c.private_rng:
            seeds = secrets.SystemRandom()
            self.noise_generator = torch.Generator(self.device).manual_seed(seeds.getrandbits(62))
            self.sampling_seed = seeds.getrandbits(62)
        self._hooks = GradSampleHooks(self.D, loss_reduction="mean")
        self._hooks.forbid_grad_accumulation()  # a second backward before a step raises
        self.opt_D = DPOptimizer(self.opt_D, noise_multiplier=self.noise_multiplier,
                                 max_grad_norm=c.max_grad_norm, expected_batch_size=expected_batch_size,
                                 generator=self.noise_generator)
        self.accountant = create_accountant(c.accountant)
        self.opt_D.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        return self.noise_multiplier

    def epsilon(self) -> float:
        """The epsilon spent so far at ``config.delta`` (0 before the first step, inf without DP;
        for a loaded export, what its header records)."""
        if not self.config.private:  # type: ignore[attr-defined]
            return math.inf
        if self.accountant is None and self._shipped_privacy:
            return float(self._shipped_privacy["epsilon_spent"])
        if self.accountant is None or not len(self.accountant):
            return 0.0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(self.accountant.get_epsilon(delta=self.config.delta))  # type: ignore[attr-defined]

    def privacy_facts(self) -> dict[str, Any]:
        """What a checkpoint header records about the guarantee (a loaded export: its header's)."""
        if self.accountant is None and self._hooks is None and self._shipped_privacy:
            return dict(self._shipped_privacy)
        c: DPGANConfig = self.config  # type: ignore[assignment]
        eps = self.epsilon()
        return {"epsilon_spent": eps if math.isfinite(eps) else "inf", "delta": c.delta,
                "target_epsilon": c.epsilon if c.private else "inf", "accountant": c.accountant,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": c.max_grad_norm,
                "sample_rate": self.sample_rate, "d_steps": self.d_steps,
                "planned_d_steps": self.planned_d_steps, "empty_batches": self.empty_batches,
                "secret_randomness": bool(c.private_rng),
                "public": "the class counts of the training labels (G's labels are drawn from them) and the "
                          "number of training images; the guarantee holds given those"}

    # -- what fit() drives -----------------------------------------------------------------------
    def train_step(self, batches: Iterator) -> dict[str, float]:
        """``n_critic`` private D steps, each on a fresh Poisson batch, then one G step that
        draws no real batch."""
        if self.config.private and self._hooks is None:  # type: ignore[attr-defined]
            raise RuntimeError("call make_private(sample_rate, d_steps, batch_size) before training a "
                               "private DPGAN (train_model does, through the kind's prepare)")
        if self.planned_d_steps and self.d_steps + self.config.n_critic > self.planned_d_steps:
            raise RuntimeError(f"the privacy budget was planned for {self.planned_d_steps} D steps and "
                               f"{self.d_steps} are done: another step would spend more than "
                               f"epsilon={self.config.epsilon}")  # type: ignore[attr-defined]
        logs: dict[str, float] = {}
        for _ in range(self.config.n_critic):
            logs.update(self.d_step(next(batches)))
        n = self.batch_size
        logs.update(self.g_step((torch.empty(n, 0), self._g_labels(n))))
        return logs

    def _g_labels(self, n: int) -> torch.Tensor:
        if not self.config.num_classes:
            return torch.zeros(n, dtype=torch.long)
        return self.sample_labels(n).cpu()

    @torch.no_grad()
    def fakes_for_d(self, n: int, y: torch.Tensor | None) -> torch.Tensor:
        """The fakes of a D step from G in eval mode: fake i depends on (z_i, y_i) alone, so the
        pair (real i, fake i) depends on record i alone (BatchNorm in batch mode would mix in the
        batch's other labels and its size, and its running statistics would record them)."""
        was = self.G.training
        self.G.eval()
        try:
            return self.G(self._noise(n), y)
        finally:
            self.G.train(was)

    def d_step(self, batch) -> dict[str, float]:
        """One D step on a Poisson batch; an empty batch still adds the noise (and is charged).

        A private step returns no numbers: every one (D(real), D's loss, its class head's
        accuracy) is computed from the real batch without noise, and a history ships."""
        self.d_steps += 1
        empty = len(batch[0]) == 0
        self.empty_batches += empty
        if empty and not self.config.private:  # type: ignore[attr-defined]
            return {}
        with warnings.catch_warnings():
            # D's first layer takes images that need no gradient, so torch notes that Opacus'
            # hooks see only output gradients: expected, and all they need.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            logs = super().d_step(batch)  # an empty batch: a clipped sum of nothing + noise
        self.opt_D.zero_grad(set_to_none=True)  # clears the per-sample gradients right after the step
        return {} if self.config.private else logs  # type: ignore[attr-defined]

    def g_step(self, batch) -> dict[str, float]:
        if self._hooks is None:
            return super().g_step(batch)
        self._hooks.disable_hooks()  # G's pass through D must not leave per-sample gradients in D
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                return super().g_step(batch)
        finally:
            self._hooks.enable_hooks()

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the step counts: a resumed run goes on spending the same
        budget (fit saves this with each checkpoint)."""
        state = {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                 "planned_d_steps": self.planned_d_steps, "d_steps": self.d_steps,
                 "empty_batches": self.empty_batches,
                 "accountant": [list(h) for h in self.accountant.history] if self.accountant else []}
        if self.noise_generator is not None:  # local trainer state only, never an export
            state["noise_rng"] = self.noise_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        same = (math.isclose(float(state["noise_multiplier"]), self.noise_multiplier, rel_tol=1e-9)
                and math.isclose(float(state["sample_rate"]), self.sample_rate, rel_tol=1e-9)
                and int(state["planned_d_steps"]) == self.planned_d_steps)
        if not same:
            raise ValueError(
                f"this checkpoint was trained with noise multiplier {state['noise_multiplier']:.4g}, "
                f"sample rate {state['sample_rate']:.4g} for {state['planned_d_steps']} D steps; the run "
                f"being resumed plans {self.noise_multiplier:.4g}, {self.sample_rate:.4g}, "
                f"{self.planned_d_steps}. Resume with the same --steps and --batch-size, or start over "
                "(--no-resume): mixing them would not reach the target epsilon")
        self.d_steps, self.empty_batches = int(state["d_steps"]), int(state["empty_batches"])
        if self.accountant is not None:
            self.accountant.history = [(float(s), float(q), int(k)) for s, q, k in state["accountant"]]
        if self.noise_generator is not None and "noise_rng" in state:
            self.noise_generator.set_state(state["noise_rng"])
