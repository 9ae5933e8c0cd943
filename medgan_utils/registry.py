"""One registry of model kinds: what a chapter registers to get training, export, loading,
load-else-train and the CLI's ``train``, ``sample``, ``evaluate`` and ``apply`` for free.

A *kind* ties together a frozen config dataclass, the model class built from it, the named
presets the CLI offers, what the model learns from (MedMNIST images and labels, or aligned
input/target pairs made from them) and which networks are shipped. A new model is one model file
under ``medgan_utils/models/`` plus one :func:`register` call (here for the course's own kinds;
anywhere, e.g. in a test, for others)::

    register(ModelKind("gan", GANConfig, GAN, presets=GAN_PRESETS, ...))

The model class is built as ``model_cls(config, device, **kind.build_kwargs(data, config))`` and
follows :mod:`medgan_utils.train`'s protocol (``train_step``, ``modules``, ``optimizers``,
optionally ``state_dict``/``visuals``); a generator adds ``sample(n, labels=None, generator=None)``,
an image-to-image model ``apply(x)``.

Introduced with chapter 05 (the first chapter that is not a GAN of chapters 01-04).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Arrays, TensorLoader
from .models.cyclegan import CYCLEGAN_PRESETS, CycleGAN, CycleGANConfig
from .models.dpgan import DP_PRESETS, DPGAN, DPGANConfig
from .models.gan import GAN, PRESETS, GANConfig
from .models.recon import RECON_PRESETS, ReconConfig, ReconModel
from .models.sr import SR_PRESETS, SRConfig, SRModel
from .train import FitConfig


def _image_fields(data: Arrays, conditional: bool) -> dict[str, Any]:
    return {"channels": data.n_channels, "image_size": data.size,
            "num_classes": len(data.class_names) if conditional else 0}


def _image_loader(data: Arrays, config: Any, batch_size: int, device: torch.device | str,
                  seed: int) -> Iterable:
    return TensorLoader(data.images, data.labels, batch_size, device, seed=seed)


def _no_kwargs(data: Arrays | None, config: Any) -> dict[str, Any]:
    return {}


def _all_modules(model: Any) -> dict[str, nn.Module]:
    return dict(model.modules())


def _serve_stored(model: Any, stored: set[str]) -> dict[str, nn.Module]:
    mods = model.modules()
    missing = stored - set(mods)
    if missing:
        raise ValueError(f"the checkpoint holds {sorted(missing)}, which a {type(model).__name__} "
                         f"does not have ({sorted(mods)})")
    return {k: v for k, v in mods.items() if k in stored}


@dataclass(frozen=True)
class ModelKind:
    """Everything the package needs to know about one kind of model.

    Attributes:
        name: the kind's name, stored in every checkpoint header (``"gan"``).
        config_cls: its frozen config dataclass (with ``to_dict``).
        model_cls: built as ``model_cls(config, device, **build_kwargs(data, config))``.
        presets: CLI preset name -> config field overrides (the CLI's ``medgan train PRESET``).
        description: one line on the kind.
        preset_help: preset name -> one line for ``medgan train --help`` (default: description).
        data_fields: ``(data, conditional) -> dict`` of config fields read from the data
            (channels, image size, classes).
        build_kwargs: ``(data or None, config) -> dict`` of extra constructor arguments (a GAN's
            class prior from the training labels); ``data`` is None when loading a checkpoint.
        loader: ``(data, config, batch_size, device, seed) -> iterable`` of training batches.
        header_facts: ``model -> dict``: what a checkpoint header must carry, beyond the config,
            to rebuild the model as it was trained (a conditional GAN's class prior).
        restore_kwargs: ``(header, config) -> dict`` of constructor arguments read back from
            such a header when a checkpoint is loaded.
        export_modules: ``model -> {name: module}``: what a shipped checkpoint holds.
        serve_modules: ``(model, stored names) -> {name: module}``: where a checkpoint's
            modules load into (a GAN's export ``G`` is its EMA generator and replaces ``G``).
        make_pairs: for image-to-image kinds, ``(images (N,C,H,W) in [-1,1], config, seed) ->
            (inputs, targets)``: the degradation the model learns to undo; ``evaluate`` and
            ``apply`` use it.
        baseline: for image-to-image kinds, ``(inputs, config) -> outputs``: the classical method
            every evaluation reports beside the model (bicubic upsampling, a median filter...).
        evaluate: for image-to-image kinds with a chapter's own scoring, ``(model, images (N, C,
            H, W) in [-1, 1], dataset, seed) -> dict`` of numbers (``medgan evaluate``); None:
            :func:`medgan_utils.metrics.evaluate_paired` with ``make_pairs`` and ``baseline``.
        batch_size: the default of ``medgan train``'s ``--batch-size`` for this kind.
        prepare: ``(model, loader, fit_config) -> [(every, callback), ...]``, called by
            :func:`~medgan_utils.pretrained.train_model` between building the model and ``fit``:
            set-up that depends on the loader or the run's length (chapter 09 attaches Opacus
            here and returns a callback that logs epsilon each epoch); fit stays unaware of it.
    """

    name: str
    config_cls: type
    model_cls: Callable[..., Any]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    preset_help: Mapping[str, str] = field(default_factory=dict)
    data_fields: Callable[[Arrays, bool], dict[str, Any]] = _image_fields
    build_kwargs: Callable[[Arrays | None, Any], dict[str, Any]] = _no_kwargs
    header_facts: Callable[[Any], dict[str, Any]] = lambda model: {}
    restore_kwargs: Callable[[Mapping[str, Any], Any], dict[str, Any]] = lambda header, config: {}
    loader: Callable[..., Iterable] = _image_loader
    export_modules: Callable[[Any], dict[str, nn.Module]] = _all_modules
    serve_modules: Callable[[Any, set[str]], dict[str, nn.Module]] = _serve_stored
    make_pairs: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    baseline: Callable[..., torch.Tensor] | None = None
    evaluate: Callable[..., dict[str, Any]] | None = None
    batch_size: int = 64
    prepare: Callable[[Any, Iterable, FitConfig], Iterable[tuple[int, Callable]]] = (
        lambda model, loader, fit_config: ())

    def config(self, preset: str | None = None, data: Arrays | None = None,
               conditional: bool = False, **overrides: Any) -> Any:
        """A config from a preset, the data's facts and explicit overrides (which win)."""
        if preset is not None and preset not in self.presets:
            raise ValueError(f"{self.name} has no preset {preset!r}; choose from {sorted(self.presets)}")
        fields = self.data_fields(data, conditional) if data is not None else {}
        return self.config_cls(**{**(self.presets.get(preset, {}) if preset else {}), **fields,
                                  **overrides})

    def build(self, config: Any, device: torch.device | str = "cpu", data: Arrays | None = None,
              header: Mapping[str, Any] | None = None) -> Any:
        """A fresh model of this kind (random weights, from the global torch RNG), set up from
        its training data (or, trained from a ready loader, from the config alone: ``data`` is
        None) or, when a checkpoint is loaded, from the checkpoint's header."""
        kwargs = (self.restore_kwargs(header, config) if header is not None
                  else self.build_kwargs(data, config))
        return self.model_cls(config, device, **kwargs)


_KINDS: dict[str, ModelKind] = {}
# Option names `medgan train PRESET` already has: a config field of the same name would clash.
RESERVED_FIELDS = frozenset({"dataset", "size", "root", "seed", "device", "threads", "batch_size",
                             "conditional", "out", "export"}
                            | {f.name for f in dataclasses.fields(FitConfig)})


def register(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Add ``kind`` (an error if its name or a preset name is taken, unless ``replace``)."""
    clash = {f.name for f in dataclasses.fields(kind.config_cls)} & RESERVED_FIELDS
    if clash:
        raise ValueError(f"{kind.config_cls.__name__} fields {sorted(clash)} clash with the CLI's own "
                         "options (data, run and FitConfig settings): rename them")
    if not replace:
        if kind.name in _KINDS:
            raise ValueError(f"a model kind named {kind.name!r} is registered already")
        offered = set(kind.presets or {kind.name: {}})  # a kind without presets is offered by name
        taken = set(presets()) & offered
        if taken:
            raise ValueError(f"preset names {sorted(taken)} belong to another kind already")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> dict[str, ModelKind]:
    """Every registered kind by name."""
    return dict(_KINDS)


def get_kind(name: str) -> ModelKind:
    if name not in _KINDS:
        raise ValueError(f"unknown model kind {name!r}; registered: {sorted(_KINDS)}")
    return _KINDS[name]


def kind_of(config: Any) -> ModelKind:
    """The kind whose config class ``config`` is."""
    for kind in _KINDS.values():
        if type(config) is kind.config_cls:
            return kind
    raise ValueError(f"no registered model kind uses {type(config).__name__}")


def presets() -> dict[str, tuple[ModelKind, str | None]]:
    """CLI preset name -> (kind, preset); a kind without presets is offered under its own name."""
    out: dict[str, tuple[ModelKind, str | None]] = {}
    for kind in _KINDS.values():
        for p in kind.presets or {kind.name: {}}:
            out[p] = (kind, p if kind.presets else None)
    return out


def config_from_dict(kind: ModelKind, values: Mapping[str, Any]) -> Any:
    """Rebuild a config from a checkpoint header, ignoring fields a newer version dropped."""
    known = {f.name for f in dataclasses.fields(kind.config_cls)}
    return kind.config_cls(**{k: v for k, v in values.items() if k in known})


# -- the course's kinds -----------------------------------------------------------------------


def _gan_build_kwargs(data: Arrays | None, config: GANConfig) -> dict[str, Any]:
    # Fakes are drawn with the training set's class mix (a uniform prior would ask an
    # imbalanced set's rare class as often as the common one).
    if data is None or not config.num_classes:
        return {}
    labels = torch.as_tensor(np.asarray(data.labels).reshape(-1))
    return {"class_prior": torch.bincount(labels, minlength=config.num_classes).float()}


def _gan_facts(gan: GAN) -> dict[str, Any]:
    return {"class_prior": gan.class_prior.cpu().tolist()} if gan.config.num_classes else {}


def _gan_restore(header: Mapping[str, Any], config: GANConfig) -> dict[str, Any]:
    prior = header.get("class_prior")
    return {"class_prior": torch.tensor(prior)} if prior and config.num_classes else {}


def _gan_serve(model: GAN, stored: set[str]) -> dict[str, nn.Module]:
    if "G_ema" not in stored:  # a shipped export: its G (the EMA one when there was one) samples
        model.ema = None
    return _serve_stored(model, stored)


register(ModelKind(
    "gan", GANConfig, GAN, presets=PRESETS,
    description="the GANs of chapters 01-04",
    preset_help={"gan": "MLP generator and discriminator, BCE loss (chapter 01)",
                 "dcgan": "convolutional G and D with BatchNorm, BCE loss (chapter 02)",
                 "wgan-gp": "Wasserstein critic with gradient penalty, 5 critic steps (chapter 03)",
                 "wgan-clip": "Wasserstein critic with weight clipping (chapter 03)"},
    build_kwargs=_gan_build_kwargs,
    header_facts=_gan_facts,
    restore_kwargs=_gan_restore,
    export_modules=lambda gan: {"G": gan.generator_for_export()},
    serve_modules=_gan_serve,
))


# -- chapter 05: super-resolution -------------------------------------------------------------


def _paired_build_kwargs(data: Arrays | None, config: Any) -> dict[str, Any]:
    # Image-to-image kinds (sr, recon): training needs the frozen encoder of a feature loss and,
    # for a GAN, the pixel-loss model it starts from (SRGAN from SRResNet); both are named in the
    # config (paths relative to the repository).
    from .checkpoint import load_checkpoint, read_metadata
    from .superres import load_patch_encoder, resolve

    def header_for_this_data(path: str, what: str) -> dict[str, Any]:
        # The GAN presets name the course's CT files: training on another data set must name
        # its own (a CT encoder judging ultrasound, or a CT SRResNet as the start, is a mistake).
        header = read_metadata(resolve(path))
        trained_on = header.get("dataset")
        if data is not None and trained_on and trained_on != data.name:
            raise ValueError(f"{what} {path} was trained on {trained_on}, but this run trains on "
                             f"{data.name}: pass --{what.replace('_', '-')} with a checkpoint for {data.name}")
        return header

    kwargs: dict[str, Any] = {}
    if config.feature_weight > 0:
        header_for_this_data(config.feature_net, "feature_net")
        kwargs["feature_net"] = load_patch_encoder(config.feature_net)
    if config.init_from:
        start = header_for_this_data(config.init_from, "init_from").get("config", {})
        # Shapes are checked when the weights load; fields without weights are checked here.
        for key in getattr(config, "UNWEIGHTED", ()):
            if start.get(key, getattr(config, key)) != getattr(config, key):
                raise ValueError(f"init_from {config.init_from} has {key}={start[key]!r}, this config "
                                 f"{getattr(config, key)!r}: the generators must match")
        tensors = load_checkpoint(resolve(config.init_from))["tensors"]
        kwargs["init_state"] = {k[2:]: v for k, v in tensors.items() if k.startswith("G.")}
        if not kwargs["init_state"]:
            raise ValueError(f"{config.init_from} holds no generator 'G' to start from")
    return kwargs


def _sr_loader(data: Arrays, config: SRConfig, batch_size: int, device: torch.device | str,
               seed: int) -> Iterable:
    from .data import PairedLoader
    from .superres import lr_images

    hr = data.tensors()
    return PairedLoader(lr_images(hr, config.scale), hr, batch_size, device, seed=seed,
                        patch=config.patch or None)


def _sr_pairs(images: torch.Tensor, config: SRConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .superres import lr_images

    return lr_images(images, config.scale), images


def _sr_baseline(inputs: torch.Tensor, config: SRConfig) -> torch.Tensor:
    from .data import upsample

    return upsample(inputs, config.scale, "bicubic")


def _sr_evaluate(model: SRModel, images: torch.Tensor, dataset: str, seed: int) -> dict[str, Any]:
    from .superres import evaluate_model

    return evaluate_model(model, images, dataset)


register(ModelKind(
    "sr", SRConfig, SRModel, presets=SR_PRESETS,
    description="super-resolution generators of chapter 05",
    preset_help={"srresnet": "residual network trained with L1 (chapter 05)",
                 "srgan": "SRResNet + feature loss + adversarial loss, from a trained SRResNet (chapter 05)"},
    data_fields=lambda data, conditional: {"channels": data.n_channels},
    build_kwargs=_paired_build_kwargs,
    loader=_sr_loader,
    export_modules=lambda model: {"G": model.G},
    make_pairs=_sr_pairs,
    baseline=_sr_baseline,
    evaluate=_sr_evaluate,
))


# -- chapter 06: reconstruction ---------------------------------------------------------------


def _recon_loader(data: Arrays, config: ReconConfig, batch_size: int, device: torch.device | str,
                  seed: int) -> Iterable:
    from .data import PairedLoader
    from .reconstruction import InpaintLoader, task_data

    patch = config.patch or None
    if config.task == "inpaint":
        return InpaintLoader(data.images, batch_size, device, seed=seed, patch=patch, kinds=config.levels(),
                             on_head=config.holes_on_head)
    if data.n_channels != 1 or data.images.ndim != 3:
        raise ValueError(f"{config.task} simulates CT scans of grayscale slices; {data.name} has "
                         f"{data.n_channels} channels")
    inputs, targets = task_data(data.images, config.task, config.levels(), data.split,
                                config.reference_photons)
    return PairedLoader(inputs, targets, batch_size, device, seed=seed, patch=patch)


def _recon_evaluate(model: ReconModel, images: torch.Tensor, dataset: str, seed: int) -> dict[str, Any]:
    from .reconstruction import evaluate_model

    return evaluate_model(model, images, dataset)


register(ModelKind(
    "recon", ReconConfig, ReconModel, presets=RECON_PRESETS,
    description="reconstruction generators of chapter 06 (inpainting, low-dose and sparse-view CT)",
    preset_help={"inpaint-l1": "U-Net that fills holes, L1 inside the hole (chapter 06)",
                 "inpaint": "the inpainting U-Net + conditional patch GAN, from inpaint-l1 (chapter 06)",
                 "lowdose-l1": "U-Net on low-dose FBP (25 and 10 percent of the dose), L1 (chapter 06)",
                 "lowdose": "low-dose U-Net + conditional patch GAN, from lowdose-l1 (chapter 06)",
                 "sparseview-l1": "U-Net on sparse-view FBP (60 and 30 views), L1 (chapter 06)",
                 "sparseview": "sparse-view U-Net + conditional patch GAN, from sparseview-l1 (chapter 06)"},
    data_fields=lambda data, conditional: {"channels": data.n_channels},
    build_kwargs=_paired_build_kwargs,
    loader=_recon_loader,
    export_modules=lambda model: {"G": model.G},
    evaluate=_recon_evaluate,
))


# -- chapter 07: unpaired translation ---------------------------------------------------------


def _domain_names(data: Arrays, conditional: bool) -> dict[str, Any]:
    # Domain A is label 0, B label 1; chapter 07's CT/MRI keep the config's own names (ct, mr).
    names = data.class_names
    if len(names) != 2:
        raise ValueError(f"a CycleGAN translates between two domains, labels 0 and 1; {data.name} has "
                         f"{len(names)} classes")
    fields: dict[str, Any] = {"channels": data.n_channels}
    if not data.name.startswith("ctmri"):
        short = [str(names[k]).split()[0].split(",")[0].lower().replace("2", "two")[:12] for k in (0, 1)]
        if short[0] != short[1]:
            fields.update(a_name=short[0], b_name=short[1])
        else:
            fields.update(a_name="a", b_name="b")
    return fields


def _unpaired_loader(data: Arrays, config: Any, batch_size: int, device: torch.device | str,
                     seed: int) -> Iterable:
    from .data import UnpairedLoader

    labels = np.asarray(data.labels).reshape(-1)
    a, b = data.images[labels == 0], data.images[labels == 1]
    if not len(a) or not len(b):
        raise ValueError(f"{data.name} {data.split} needs images of both label 0 and label 1 "
                         f"(found {len(a)} and {len(b)})")
    return UnpairedLoader(a, b, batch_size, device, seed=seed)


def _cyclegan_evaluate(model: Any, images: torch.Tensor, dataset: str, seed: int) -> dict[str, Any]:
    from .translation import evaluate_model

    # Both directions on the whole test split of each modality (``images`` mixes the two).
    return evaluate_model(model, dataset)


register(ModelKind(
    "cyclegan", CycleGANConfig, CycleGAN, presets=CYCLEGAN_PRESETS,
    description="unpaired translation of chapter 07 (CycleGAN: head CT <-> brain MRI)",
    preset_help={"cyclegan": "two ResNet generators + two patch discriminators, LSGAN, cycle and "
                             "identity losses, image pool (chapter 07; --dataset ctmri --size 128)"},
    data_fields=_domain_names,
    loader=_unpaired_loader,
    evaluate=_cyclegan_evaluate,
    batch_size=1,  # as in the paper: one image per domain per step (the pool holds 50)
))


# -- chapter 09: differential privacy ---------------------------------------------------------


def _poisson_loader(data: Arrays, config: Any, batch_size: int, device: torch.device | str,
                    seed: int) -> Iterable:
    # The sampling DP-SGD's accounting assumes: each image in each batch with probability B / N.
    return TensorLoader(data.images, data.labels, batch_size, device, seed=seed, sampling="poisson")


def _dp_prepare(model: DPGAN, loader: Any, fit_config: FitConfig) -> list[tuple[int, Callable]]:
    if getattr(loader, "sampling", None) != "poisson":
        raise ValueError("a DPGAN trains on Poisson-sampled batches (TensorLoader(..., sampling='poisson')): "
                         "the privacy accounting assumes them")
    d_steps = fit_config.steps * model.config.n_critic
    model.make_private(loader.sample_rate, d_steps, loader.batch_size)
    if model.sampling_seed is not None:  # secret batches; the loader's state (with it) stays local
        loader.seed = model.sampling_seed
    every = max(1, len(loader) // model.config.n_critic)  # fit steps per epoch of D steps

    def epsilon(step: int, m: DPGAN, logs: Mapping[str, float]) -> dict[str, float]:
        eps = m.epsilon()
        return {"epsilon": eps} if np.isfinite(eps) else {}

    return [(every, epsilon)]


def _dp_facts(model: DPGAN) -> dict[str, Any]:
    return {**_gan_facts(model), "privacy": model.privacy_facts()}


def _dp_restore(header: Mapping[str, Any], config: DPGANConfig) -> dict[str, Any]:
    return {**_gan_restore(header, config), "privacy": header.get("privacy")}


register(ModelKind(
    "dpgan", DPGANConfig, DPGAN, presets=DP_PRESETS,
    description="the differentially private conditional GAN of chapter 09 (Opacus DP-SGD on D)",
    preset_help={"dp-gan": "conditional DCGAN, GroupNorm D trained with DP-SGD to a target --epsilon "
                           "(inf: the same GAN without privacy) (chapter 09)"},
    data_fields=lambda data, conditional: _image_fields(data, True),  # TSTR needs labelled fakes
    build_kwargs=_gan_build_kwargs,
    header_facts=_dp_facts,
    restore_kwargs=_dp_restore,
    loader=_poisson_loader,
    prepare=_dp_prepare,
    # G (the EMA one) samples; D ships too, for chapter 09's white-box membership attack.
    export_modules=lambda gan: {"G": gan.generator_for_export(), "D": gan.D},
    serve_modules=_gan_serve,
    batch_size=128,
))
