"""``medgan``: the notebooks' training and sampling as scripts (same code, no second copy).

Commands serve every model kind of :mod:`medgan_utils.registry`: ``train PRESET`` for each kind's
presets, ``sample`` for generators, ``apply`` for image-to-image models, ``evaluate`` for both.
Options are generated from the frozen config dataclasses (the kind's config, ``FitConfig``), with
help text taken from their docstrings, so the CLI cannot drift from the library.

    medgan train wgan-gp --dataset pneumoniamnist --steps 3000 --ema 0.999 --out runs/wgan
    medgan sample runs/wgan/wgan.safetensors --n 1000 --out fake.npz
    medgan evaluate runs/wgan/wgan.safetensors --n 2000
    medgan train-extractor --dataset breastmnist
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np


def _field_help(cls) -> dict[str, str]:
    """Field -> help text from a config dataclass's ``Attributes:`` section (Google style): a
    field line ``name: text`` (or ``a, b: text``) and its deeper-indented continuation lines, at
    whatever indentation the docstring has. A subclass's fields take their text from the class
    that documents them (``DPGANConfig`` adds privacy to ``GANConfig``)."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and "__doc__" in vars(klass):
            helps.update(_own_field_help(klass))
    return helps


def _own_field_help(cls) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    if "Attributes:" in doc:  # the section may start on the docstring's first line
        start = next(i for i, line in enumerate(lines) if line.strip().endswith("Attributes:"))
        lines = lines[start + 1:]
    helps: dict[str, str] = {}
    current, base = None, None
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        m = re.match(r"\s*([\w, ]+):\s*(.*)", line)
        if m and (base is None or indent <= base):
            base = indent
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                helps[n] = m.group(2)
        elif current and base is not None and indent > base:
            for n in current:
                helps[n] += " " + line.strip()
    return helps


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=(), defaults=None) -> None:
    helps = _field_help(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        kind = type(default) if default is not dataclasses.MISSING else str
        shown = default if default is not dataclasses.MISSING else None
        text = helps.get(f.name, "") + f" (default: {shown})"
        if kind is bool:
            group.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag, type=kind, default=None, help=text)


def _pick(ns: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)
            if getattr(ns, f.name, None) is not None}


# Config fields a kind reads from the data (channels, image size) or from --conditional.
FROM_DATA = ("channels", "image_size", "num_classes")


def build_parser() -> argparse.ArgumentParser:
    from . import registry
    from .train import FitConfig

    p = argparse.ArgumentParser(prog="medgan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train any registered model (checkpoints, resume, export)",
                       description="Train a model with the one fit() loop. Re-running the same command "
                                   "resumes from OUT/last.safetensors. PRESET names a registered model "
                                   "kind's preset; `medgan train PRESET --help` lists its options.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tp = t.add_subparsers(dest="preset", required=True, metavar="PRESET")
    for name, (kind, preset) in registry.presets().items():
        line = kind.preset_help.get(name, kind.description)
        pp = tp.add_parser(name, help=f"[{kind.name}] {line}",
                           description=f"Train the {name!r} preset of the {kind.name!r} model kind "
                                       f"({line}). The preset sets some "
                                       f"{kind.config_cls.__name__} options; options given here override it.")
        _data_args(pp)
        pp.add_argument("--batch-size", type=int, default=kind.batch_size,
                        help="images per batch (default: %(default)s)")
        pp.add_argument("--conditional", action="store_true", help="class-conditional G and D (chapter 04)")
        pp.add_argument("--holdout-reference", action="store_true",
                        help="train only on the training images that `medgan evaluate` does not use as its "
                             "reference (BreastMNIST: the half that is not the reference; a no-op where the "
                             "reference is the validation split), so the judgement is on unseen images")
        pp.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<preset>_<dataset>)")
        pp.add_argument("--export", type=Path, default=None,
                        help="also write the shippable model here (default: OUT/<name>.safetensors)")
        _add_dataclass_args(pp, kind.config_cls, skip=FROM_DATA,
                            defaults=kind.presets.get(preset, {}) if preset else {})
        _add_dataclass_args(pp, FitConfig)

    s = sub.add_parser("sample", help="write generated images as a MedMNIST-like uint8 .npz")
    s.add_argument("checkpoint", type=Path, help="an exported generator or a run's last.safetensors")
    s.add_argument("--n", type=int, default=1000, help="number of images (default: %(default)s)")
    s.add_argument("--out", type=Path, required=True, help="output .npz: 'images' uint8 (N,H,W) or "
                   "(N,H,W,C), and 'labels' (N,) for conditional models")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    s.add_argument("--label", type=int, default=None, help="only this class (conditional models)")
    s.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")

    e = sub.add_parser("evaluate", help="score a model: a generator's FD/KID/precision/recall/"
                       "coverage against held-out images of its own training distribution, with the "
                       "real-vs-real floor and the test split's shift, in the classifier's and a "
                       "label-free feature space; an image-to-image model's PSNR/SSIM on the test "
                       "split against its classical baseline")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--n", type=int, default=2000, help="generated or test images (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--root", default=None, help="folder with the .npz (else $MEDMNIST_ROOT, data/medmnist)")
    e.add_argument("--dataset", default=None, help="the data set to judge against (default: the one "
                   "in the checkpoint's header)")
    e.add_argument("--device", default=None)

    a = sub.add_parser("apply", help="run an image-to-image model (super-resolution, reconstruction, "
                       "translation) on your own images, at their own size",
                       description="Apply an image-to-image model to PNG/JPEG/DICOM/NIfTI files or "
                                   "folders at their own size, in overlapping tiles: DIR/<name>.png "
                                   "(uint8) and DIR/<name>.npy (float32 in [-1, 1]) per image or slice, "
                                   "and DIR/apply_note.json saying what was done. A super-resolution "
                                   "model's input is the low-resolution image; its output is SCALE "
                                   "times larger.")
    a.add_argument("checkpoint", type=Path, help="an exported model or a run's last.safetensors")
    a.add_argument("input", type=Path, nargs="+", help="image files or folders (PNG, JPEG, DICOM, "
                   "NIfTI), or a .npz with 'images' (uint8 (N,H,W) or (N,H,W,C), as MedMNIST and "
                   "`medgan sample` write)")
    a.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder; or, for one "
                   ".npz input, an output .npz ('images' uint8, one per input image)")
    a.add_argument("--scale", type=int, default=None, metavar="N", help="the enlargement you expect "
                   "(e.g. 4): an error if the model's differs (default: the model's)")
    a.add_argument("--tile", type=int, default=None, metavar="N",
                   help="tile side in input pixels (default: the model's; 256 for super-resolution, "
                   "whole images for chapter 06's U-Nets)")
    a.add_argument("--overlap", type=int, default=None, metavar="N",
                   help="context around each tile in input pixels, at least the model's receptive "
                   "radius for seamless tiles (default: the model's; 32 for super-resolution, "
                   "whose radius is 24; 96 for the U-Nets)")
    a.add_argument("--window", type=float, nargs=2, default=None, metavar=("CENTER", "WIDTH"),
                   help="intensity window in stored units (HU for CT), e.g. 40 400 (default: 8-bit "
                   "PNG/JPEG get the 0 -> -1, 255 -> 1 mapping the course's models were trained with, "
                   "other files min-max of each file)")
    a.add_argument("--minmax", action="store_true", help="stretch every file to its own min-max "
                   "(also 8-bit ones)")
    a.add_argument("--mask", type=Path, default=None, metavar="FILE", help="inpainting models: the "
                   "hole, a picture of the images' size (white = missing), used for every input")
    a.add_argument("--direction", default=None, metavar="A2B", help="translators (CycleGAN, chapter "
                   "07): ct2mr or mr2ct, the domains named in the checkpoint (default: A -> B, ct2mr). "
                   "They were trained on whole slices of 128 px: give them slices of about that size")
    a.add_argument("--force", action="store_true", help="overwrite existing outputs")
    a.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")

    x = sub.add_parser("train-extractor", help="train the in-domain feature extractor for metrics")
    _data_args(x)
    x.add_argument("--out", type=Path, default=None, help="default: checkpoints/extractor_<dataset>_<size>.safetensors")
    x.add_argument("--max-epochs", type=int, default=30)

    r = sub.add_parser("run-notebooks", help="execute notebooks with papermill (default mode, in place)")
    r.add_argument("names", nargs="*", help="notebook file names or prefixes (default: all)")
    r.add_argument("--quick", action="store_true", help="inject quick=True (seconds-long runs)")
    r.add_argument("--no-inplace", dest="inplace", action="store_false",
                   help="write executed copies to runs/notebooks/ instead of over the originals")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter (value parsed as JSON when possible)")
    r.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the kernels: 1, as `medgan reproduce` runs them, so the "
                        "committed numbers reproduce (GAN training rounds differently on another "
                        "thread count); 0 keeps the environment's (default: %(default)s)")
    r.add_argument("--jobs", type=int, default=1,
                   help="notebooks executed at once, each on --threads threads (default: %(default)s)")

    rp = sub.add_parser("reproduce", help="re-execute notebooks into runs/reproduce/ and compare their "
                        "numbers with the committed results (non-zero exit on a regression)",
                        description="Execute notebooks with papermill into a scratch folder (never over "
                                    "notebooks/ or results/), compare every metric with its reference "
                                    "(results/<notebook>.json; results/quick/ with --quick) under the "
                                    "tolerances of medgan_utils.reproduce.TOLERANCES, print the table and "
                                    "write it to OUT/report.json. Exit code 1 on any regression.")
    rp.add_argument("names", nargs="*", help="notebook file names or prefixes, e.g. 02 (default: all)")
    rp.add_argument("--quick", action="store_true", help="quick runs, against results/quick/ (what CI runs)")
    rp.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override a parameter (value parsed as JSON when possible); the reference "
                         "must have been made with it")
    rp.add_argument("--out", type=Path, default=None, help="scratch folder (default: runs/reproduce/<time>)")
    rp.add_argument("--references", type=Path, default=None,
                    help="folder of reference results files (default: results/, or results/quick/)")
    rp.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the kernels, as the references were made (training "
                         "on another thread count rounds differently; 0: keep the environment's) "
                         "(default: %(default)s)")
    rp.add_argument("--jobs", type=int, default=1,
                    help="notebooks executed at once, each on --threads threads (the numbers do not "
                         "change; 2 on a 2-core machine halves the time) (default: %(default)s)")
    rp.add_argument("--update-quick-references", action="store_true",
                    help="with --quick: copy this run's results files to results/quick/ (when a "
                         "notebook's quick numbers change on purpose)")

    ex = sub.add_parser("experiment", help="the grids behind chapter 03 (writes results/03_*.json)")
    ex.add_argument("which", choices=["stability", "small-data", "augmentation", "cgan-diversity"],
                    help="stability: DCGAN vs WGAN-GP over learning rates and seeds (FD over training, "
                         "divergence, class coverage); small-data: EMA and DiffAugment on a small set; "
                         "augmentation: chapter 04's conditional-GAN augmentation grid; cgan-diversity: "
                         "chapter 04's cGAN recipes against the DCGAN, per class (results/04_cgan_diversity.json)")
    _data_args(ex)
    ex.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3])
    ex.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="seeds (stability, small-data: GAN seeds, default 0 1; augmentation: classifier "
                         "seeds, default 0 1; cgan-diversity: TSTR classifier seeds, default 0 1 2)")
    ex.add_argument("--steps", type=int, default=800, help="generator steps per run")
    ex.add_argument("--eval-every", type=int, default=100, help="steps between FD evaluations")
    ex.add_argument("--n-eval", type=int, default=1000, help="images per FD evaluation")
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--name", default=None, help="results file name (default: 03_<which>, "
                    "04_augmentation_<dataset>, 04_cgan_diversity)")
    ex.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 1.0],
                    help="augmentation: training-set fractions")
    ex.add_argument("--gan-steps", type=int, default=None,
                    help="augmentation: cGAN steps on the full set, scaled by sqrt(fraction) "
                         "(default: the stored study's, 4000 for breastmnist, 3000 for pneumoniamnist, else 2000)")
    ex.add_argument("--aux-weight", type=float, default=None,
                    help="augmentation: the cGAN's AC-GAN auxiliary-classifier weight "
                         "(default: medgan_utils.augmentation.cgan_config's)")

    cg = sub.add_parser("train-cgan", help="train chapter 04's conditional GANs on stratified subsets "
                        "and ship them to checkpoints/cgan_<dataset>_<size>_f<fraction>.safetensors")
    _data_args(cg)
    cg.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    cg.add_argument("--aux-weight", type=float, default=None,
                    help="the AC-GAN auxiliary-classifier weight (default: cgan_config's)")
    cg.add_argument("--gan-steps", type=int, default=None,
                    help="steps on the full set, scaled by sqrt(fraction), at least 600 "
                         "(default: the stored study's, 4000 for breastmnist, 3000 for pneumoniamnist, else 2000)")

    fd = sub.add_parser("federated", help="chapter 08: train the GAN across simulated hospitals on Flower "
                        "(fedavg), or the same GAN pooled (centralised) or per hospital alone (local)",
                        description="Federated GAN training on Flower's simulation engine (Ray). `fedavg` runs "
                                    "the federation; `centralised` and `local` train the same GAN at the same "
                                    "number of images seen (rounds x local-steps x n-clients steps) on the pooled "
                                    "images or on one hospital's. Re-running a command resumes it from OUT.")
    fd.add_argument("arm", choices=["fedavg", "centralised", "local"])
    fd.add_argument("--hospital", type=int, nargs="+", default=None,
                    help="local: the hospitals (partition ids) to train alone (default: all)")
    fd.add_argument("--export", type=Path, default=None,
                    help="write the shippable generator here (default: OUT/<name>.safetensors)")
    fd.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    from .federated import FederatedConfig

    _add_dataclass_args(fd, FederatedConfig)

    pv = sub.add_parser("privacy", help="chapter 09: the DP-GAN privacy-utility study and membership audits",
                        description="`study` trains (or loads the shipped) DP-GANs at each epsilon and D-steps "
                                    "setting, scores them (FD, precision, recall, TSTR, membership attacks) and "
                                    "audits shipped non-private generators; writes results/09_privacy_study.json. "
                                    "`audit NAME...` audits shipped generators only. One DP-GAN: "
                                    "`medgan train dp-gan --epsilon 10`.")
    pv.add_argument("action", choices=["study", "audit"])
    pv.add_argument("names", nargs="*", help="audit: shipped generators (checkpoints/<name>.safetensors) or paths "
                                              "to .safetensors exports (default: the course's non-private ones)")
    pv.add_argument("--epsilons", type=float, nargs="+", default=None, help="study: targets (inf allowed)")
    pv.add_argument("--n-ds", type=int, nargs="+", default=None, help="study: D steps per G step")
    pv.add_argument("--d-steps", type=int, default=None, help="study: private D steps per model")
    pv.add_argument("--train-from-scratch", action="store_true", help="study: train even if shipped")
    pv.add_argument("--out", type=Path, default=None,
                    help="study: the JSON to write (default: results/09_privacy_study.json)")
    _data_args(pv)

    d = sub.add_parser("download", help="fetch a MedMNIST file through medmnist (needs the internet)")
    d.add_argument("name")
    d.add_argument("--size", type=int, default=28)
    d.add_argument("--root", type=Path, default=Path("data/medmnist"))
    return p


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="pneumoniamnist",
                   help="MedMNIST 2D flag, ct for chapter 05's head-CT slices, or ctmri for chapter 07's "
                   "unpaired CT and MRI (labels 0 CT, 1 MRI) (default: %(default)s)")
    p.add_argument("--size", type=int, default=28,
                   help="28, 64, 128 or 224 for MedMNIST; 512 (or a divisor) for ct; 128 (or any) for ctmri "
                   "(default: %(default)s)")
    p.add_argument("--root", default=None, help="folder with the .npz (else $MEDMNIST_ROOT, data/medmnist); "
                                                "for ct a folder of ctN.png (else ../shared/data/ct_mri, data/ct_mri)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and batch order")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _setup(ns):
    import torch

    from .utils import get_device, seed_everything

    if getattr(ns, "threads", 0):
        torch.set_num_threads(ns.threads)
    if getattr(ns, "root", None):
        # --root is where this process's loaders look first, including the evaluation module's
        # cached reference sets, which take no root argument (they are keyed by data set only).
        os.environ["MEDMNIST_ROOT"] = str(ns.root)
    seed_everything(getattr(ns, "seed", 0))
    return get_device(ns.device)


def cmd_train(ns) -> int:
    from . import registry
    from .data.ct import load_split
    from .pretrained import export, train_model
    from .train import FitConfig

    device = _setup(ns)
    kind, preset = registry.presets()[ns.preset]
    train = load_split(ns.dataset, "train", ns.size, ns.root)
    n_split = len(train)
    if ns.holdout_reference:
        from .evaluation import generator_training_arrays

        train = generator_training_arrays(train)
    cfg = kind.config(preset, train, ns.conditional,
                      **{k: v for k, v in _pick(ns, kind.config_cls).items() if k not in FROM_DATA})
    fcfg = FitConfig(**_pick(ns, FitConfig))
    name = f"{ns.preset}{'_cond' if ns.conditional else ''}_{ns.dataset}_{ns.size}"
    out = ns.out or Path("runs") / name
    print(json.dumps({"kind": kind.name, "config": cfg.to_dict(), "fit": dataclasses.asdict(fcfg),
                      "dataset": ns.dataset, "device": str(device), "out": str(out)}, indent=1))
    facts = {"dataset": ns.dataset, "size": ns.size, "seed": ns.seed, "batch_size": ns.batch_size,
             "n_train": len(train), "train_part": ("all of train" if len(train) == n_split else
                                                   "train minus the evaluation reference (--holdout-reference)"),
             "command": "medgan " + " ".join(sys.argv[1:])}
    model, hist = train_model(cfg, train, fcfg, seed=ns.seed, batch_size=ns.batch_size, device=device,
                              out_dir=out, facts=facts)
    path = ns.export or out / f"{name}.safetensors"
    export(model, path, hist, steps=hist.step, wall_s=round(hist.wall_s, 1), device=str(device),
           stopped=hist.stopped, **facts)
    print(f"{hist.stopped} after {hist.step} steps in {hist.wall_s:.0f} s; model: {path}")
    return 0


def _load_model(ns, need: str):
    """The model in ``ns.checkpoint`` and its header; a clear exit if it cannot ``need``."""
    from .pretrained import load

    device = _setup(ns)
    model, meta = load(ns.checkpoint, device)
    if need and not callable(getattr(model, need, None)):
        other = {"sample": "`medgan apply` (it maps images to images)",
                 "apply": "`medgan sample` (it generates images from noise)"}[need]
        raise SystemExit(f"{ns.checkpoint} holds a {type(model).__name__}, which has no {need}(): "
                         f"use {other}")
    return model, meta, device


def cmd_sample(ns) -> int:
    import torch

    from .data import to_uint8

    model, _, _ = _load_model(ns, "sample")
    gen = torch.Generator().manual_seed(ns.seed)
    labels = None
    k = getattr(model.config, "num_classes", 0)
    if ns.label is not None and not 0 <= ns.label < k:
        raise SystemExit(f"--label {ns.label}: {ns.checkpoint} " + (
            f"has classes 0 to {k - 1}" if k else "is not class-conditional (drop --label)"))
    if k:
        labels = (torch.full((ns.n,), ns.label) if ns.label is not None
                  else model.sample_labels(ns.n, gen).cpu())
    images = to_uint8(model.sample(ns.n, labels=labels, generator=gen))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    np.savez_compressed(ns.out, **arrays)
    print(f"wrote {images.shape} {images.dtype} to {ns.out}")
    return 0


def cmd_evaluate(ns) -> int:
    import torch

    from .data.ct import load_split

    model, meta, device = _load_model(ns, "")
    ds = ns.dataset or meta.get("dataset")
    if not ds:
        raise SystemExit(f"{ns.checkpoint}'s header names no data set: say which with --dataset NAME")
    size = meta.get("size", getattr(model.config, "image_size", 28))
    if callable(getattr(model, "sample", None)):
        from .evaluation import SPACES, autoencoder_path, score_generator

        # Judged against held-out images of its own training distribution, in every feature
        # space shipped for the data set (the label-free one only where it exists).
        spaces = [s for s in SPACES if s != "autoencoder" or autoencoder_path(ds, size).exists()]
        fake = model.sample(ns.n, generator=torch.Generator().manual_seed(ns.seed))
        res = score_generator(fake, ds, size, spaces=spaces, seed=ns.seed)
    elif callable(getattr(model, "apply", None)):
        from .metrics import evaluate_paired
        from .registry import kind_of

        kind = kind_of(model.config)
        images = load_split(ds, "test", size, ns.root).tensors()[:ns.n]
        res = (kind.evaluate(model, images, ds, ns.seed) if kind.evaluate is not None
               else evaluate_paired(model, kind, images, seed=ns.seed))
    else:
        raise SystemExit(f"{ns.checkpoint} holds a {type(model).__name__}, which neither samples nor "
                         "applies: nothing to evaluate")
    print(json.dumps(res, indent=1))
    return 0


def cmd_apply(ns) -> int:
    import torch

    from .apply import apply_to_files, check_scale, read_npz_images
    from .data import to_uint8

    model, _, device = _load_model(ns, "apply")
    try:
        if ns.direction is not None:
            if not callable(getattr(model, "resolve", None)):
                raise ValueError(f"--direction is for translators (CycleGAN); {ns.checkpoint} holds a "
                                 f"{type(model).__name__}, which has one direction")
            model.direction = model.resolve(ns.direction)  # an unknown one fails, naming the valid ones
        if ns.out.suffix.lower() != ".npz":
            if ns.minmax and ns.window:
                raise ValueError("--minmax and --window exclude each other")
            window = tuple(ns.window) if ns.window else None if ns.minmax else "auto"
            records = apply_to_files(model, ns.input, ns.out, scale=ns.scale, tile=ns.tile,
                                     overlap=ns.overlap, window=window, force=ns.force,
                                     checkpoint=ns.checkpoint, mask=ns.mask)
            for r in records:
                h, w = r["output_size"]
                print(f"{r['source']} -> {ns.out / r['outputs'][0]} ({h}x{w}), .npy beside it")
            print(f"what was done: {ns.out / 'apply_note.json'}")
            if any("min-max" in r["intensity"] for r in records):
                print("note: some files were stretched to their own min-max (16-bit, DICOM, NIfTI, or "
                      "--minmax). The course's models were trained on 8-bit images mapped 0 -> -1, "
                      "255 -> 1; a CT DICOM may need a window in HU instead, e.g. --window 40 80.")
            return 0
        # A MedMNIST-like batch in, one out (the layout `medgan sample` writes).
        if ns.mask is not None:
            raise ValueError("--mask works with image files and folders, not with an output .npz")
        if len(ns.input) != 1 or ns.input[0].suffix.lower() != ".npz":
            raise ValueError(f"--out {ns.out}: an output .npz takes one .npz input; for image files "
                             f"and folders give an output folder")
        check_scale(model, ns.scale)
        x, _ = read_npz_images(ns.input[0])
        channels = getattr(model.config, "channels", x.shape[1])
        if x.shape[1] != channels:
            raise ValueError(f"{ns.input[0]} gives {x.shape[1]}-channel images; the model takes {channels}")
        if ns.out.exists() and not ns.force:
            raise FileExistsError(f"{ns.out} exists already; pass --force to overwrite it")
    except (ValueError, OSError) as err:  # ImageReadError is a ValueError: all say what to do
        raise SystemExit(f"medgan apply: {err}") from err
    with torch.no_grad():
        y = torch.cat([model.apply(x[i:i + 256].to(device)).cpu() for i in range(0, len(x), 256)])
    images = to_uint8(y)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ns.out, images=images)
    print(f"wrote {images.shape} {images.dtype} to {ns.out}")
    return 0


def cmd_train_extractor(ns) -> int:
    from .classify import (
        ClassifierTrainConfig,
        auc_acc,
        extractor_path,
        predict_proba,
        save_classifier,
        train_classifier,
    )
    from .data.ct import load_split

    device = _setup(ns)
    t0 = time.perf_counter()
    tr, va, te = (load_split(ns.dataset, s, ns.size, ns.root) for s in ("train", "val", "test"))
    k = len(tr.class_names)
    net, rec = train_classifier(tr.images, tr.labels, va, k,
                                ClassifierTrainConfig(max_epochs=ns.max_epochs, seed=ns.seed),
                                device=device, progress=True)
    test = auc_acc(predict_proba(net, te.images), te.labels)
    out = ns.out or extractor_path(ns.dataset, ns.size)
    facts = {"dataset": ns.dataset, "size": ns.size, "test_auc": test["auc"], "test_acc": test["acc"],
             "val_auc": rec["val_auc"], "best_epoch": rec["best_epoch"], "seed": ns.seed,
             "train_seconds": round(time.perf_counter() - t0, 1)}
    save_classifier(net, out, **facts)
    print(json.dumps(facts, indent=1))
    print(f"wrote {out}")
    return 0


def cmd_download(ns) -> int:
    from .data import find_medmnist

    path = find_medmnist(ns.name, ns.size, ns.root, download=True)
    print(f"verified {path}")
    return 0


def cmd_run_notebooks(ns) -> int:
    import os

    from .reproduce import execute_all, kernel_environment, parse_params, select_notebooks
    from .utils import REPO_ROOT

    params = {**({"quick": True} if ns.quick else {}), **parse_params(ns.param)}
    results = os.environ.get("MEDGAN_RESULTS_DIR")  # make course sends them to runs/course/
    env = kernel_environment(Path(results) if results else None, ns.quick, ns.threads)
    paths = select_notebooks(ns.names)
    targets = [path if ns.inplace else REPO_ROOT / "runs" / "notebooks" / path.name for path in paths]
    timings, failed = {}, []

    def done(path: Path, seconds: float, error: str | None) -> None:
        if error is None:
            timings[path.name] = round(seconds, 1)
            print(f"   {path.name} done in {timings[path.name]} s", flush=True)
        else:
            failed.append(path.name)
            print(f"   {path.name} FAILED after {seconds:.0f} s (the executed copy, if the kernel started: "
                  f"{targets[paths.index(path)]}):\n{error}", file=sys.stderr, flush=True)

    print(f"executing {len(paths)} notebook(s) {params or '(default parameters)'}, {ns.jobs} at a time", flush=True)
    execute_all(paths, targets, params, env, ns.jobs, done)
    print(json.dumps(timings, indent=1))
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_reproduce(ns) -> int:
    from .reproduce import parse_params, reproduce

    return reproduce(ns.names, quick=ns.quick, params=parse_params(ns.param), out_dir=ns.out,
                     references=ns.references, threads=ns.threads,
                     update_quick_references=ns.update_quick_references, jobs=ns.jobs)


def cmd_experiment(ns) -> int:
    from .classify import load_extractor
    from .data import load_arrays
    from .experiments import run_grid
    from .results import start_run

    device = _setup(ns)
    if ns.which == "augmentation":
        return _augmentation(ns, device)
    if ns.which == "cgan-diversity":
        return _cgan_diversity(ns, device)
    ns.seeds = ns.seeds or [0, 1]
    train = load_arrays(ns.dataset, "train", ns.size, ns.root)
    extractor = load_extractor(ns.dataset, ns.size, device)
    run = start_run(ns.name or f"03_{ns.which.replace('-', '_')}", vars(ns) | {"root": None}, device)
    results, summary = run_grid(ns.which, train, extractor, lrs=ns.lrs, seeds=ns.seeds, steps=ns.steps,
                                eval_every=ns.eval_every, n_eval=ns.n_eval, batch_size=ns.batch_size,
                                device=device)
    path = run.finish(summary, extra={"runs": results, "command": "medgan " + " ".join(sys.argv[1:])})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")
    return 0


def cmd_train_cgan(ns) -> int:
    from .augmentation import cgan_config, cgan_steps, study_gan_steps, train_cgan
    from .data import load_arrays, stratified_subset
    from .pretrained import CHECKPOINT_DIR, export

    device = _setup(ns)
    ns.gan_steps = study_gan_steps(ns.dataset, ns.gan_steps)
    train = load_arrays(ns.dataset, "train", ns.size, ns.root)
    for frac in ns.fractions:
        idx = stratified_subset(train.labels, frac, seed=0)
        steps = cgan_steps(ns.gan_steps, frac)
        overrides = {} if ns.aux_weight is None else {"aux_weight": ns.aux_weight}
        gan, hist = train_cgan(train.images[idx], train.labels[idx], cgan_config(train, **overrides), steps,
                               seed=0, device=device)
        path = export(gan, CHECKPOINT_DIR / f"cgan_{ns.dataset}_{ns.size}_f{frac:g}.safetensors", hist,
                          dataset=ns.dataset, size=ns.size, fraction=frac, n_real=int(len(idx)),
                          steps=steps, subset_seed=0, wall_s=round(hist.wall_s, 1))
        print(f"{path}: {steps} steps on {len(idx)} images in {hist.wall_s:.0f} s", flush=True)
    return 0


def _cgan_diversity(ns, device) -> int:
    from .augmentation import diversity_study
    from .data import load_arrays
    from .results import start_run

    if ns.dataset != "pneumoniamnist":
        raise SystemExit("cgan-diversity compares with the shipped DCGAN, which exists for pneumoniamnist only "
                         "(results/04_cgan_diversity.json)")
    ns.seeds = ns.seeds or [0, 1, 2]
    tr, va, te = (load_arrays(ns.dataset, s, ns.size, ns.root) for s in ("train", "val", "test"))
    name = ns.name or "04_cgan_diversity"
    run = start_run(name, vars(ns) | {"root": None}, device)
    res = diversity_study(tr, va, te, seed=ns.seed, tstr_seeds=ns.seeds, device=device)
    path = run.finish(res.pop("metrics"), extra=res | {"command": "medgan " + " ".join(sys.argv[1:])})
    print(f"wrote {path}; variant cGANs in runs/cgan_variants/")
    return 0


def _augmentation(ns, device) -> int:
    from .augmentation import AUGMENTATION_DATASETS, augmentation_experiment, study_gan_steps
    from .data import load_arrays
    from .results import combine_results, start_run

    ns.seeds = ns.seeds or [0, 1]

    ns.gan_steps = study_gan_steps(ns.dataset, ns.gan_steps)
    tr, va, te = (load_arrays(ns.dataset, s, ns.size, ns.root) for s in ("train", "val", "test"))
    name = ns.name or f"04_augmentation_{ns.dataset}"
    run = start_run(name, vars(ns) | {"root": None}, device)
    overrides = {} if ns.aux_weight is None else {"aux_weight": ns.aux_weight}
    res = augmentation_experiment(tr, va, te, ns.fractions, ns.seeds, ns.gan_steps, device,
                                  work_dir=Path("runs") / name, gan_overrides=overrides)
    path = run.finish(res["summary"], extra={"per_fraction": res["per_fraction"], "gans": res["gans"],
                                              "gan_config": res["gan_config"], "compute_seconds": res["compute_seconds"],
                                              "untimed_classifier_runs": res["untimed_classifier_runs"],
                                              "command": "medgan " + " ".join(sys.argv[1:])})
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {path}; cGANs in runs/{name}/")
    if ns.name is None:  # the chapter's one file: every data set's study, prefixed by its name
        both = combine_results("04_augmentation", {ds: f"04_augmentation_{ds}" for ds in AUGMENTATION_DATASETS},
                               root=path.parent)
        print(f"wrote {both}")
    return 0


# Non-private generators of chapters 01-04 and 08 that chapter 09 audits.
AUDITED = ("gan_pneumoniamnist_28", "dcgan_pneumoniamnist_28", "wgan-gp_pneumoniamnist_28",
           "cgan_pneumoniamnist_28_f1", "fed_centralised", "fed_fedavg_alpha0.5")


def cmd_privacy(ns) -> int:
    from .pretrained import load
    from .privacy import STUDY, audit, privacy_study, study_arms
    from .utils import CHECKPOINT_DIR, git_commit, write_json

    _setup(ns)
    if ns.action == "audit":
        for name in ns.names or AUDITED:
            path = Path(name) if name.endswith(".safetensors") else CHECKPOINT_DIR / f"{name}.safetensors"
            if not path.exists():
                raise SystemExit(f"no generator at {path} (give a shipped name or a .safetensors path)")
            gan, meta = load(path)
            res = audit(gan, meta.get("dataset", ns.dataset), meta.get("size", ns.size), seed=ns.seed,
                        with_discriminator=meta.get("kind") == "dpgan")
            print(json.dumps({"name": name, **res}, indent=1))
        return 0
    if ns.names:
        raise SystemExit("`medgan privacy study` takes no names (they are for `audit`)")
    out = ns.out or Path("results") / "09_privacy_study.json"
    # The whole study (with its extra arms and generator seeds) unless some arms are asked for.
    arms = (None if ns.epsilons is None and ns.n_ds is None
            else study_arms(ns.epsilons or STUDY["epsilons"], ns.n_ds or STUDY["n_ds"], ()))
    res = privacy_study(dataset=ns.dataset, size=ns.size, arms=arms, d_steps=ns.d_steps or STUDY["d_steps"],
                        train_from_scratch=ns.train_from_scratch, seed=ns.seed,
                        audit_shipped=[a for a in AUDITED if (CHECKPOINT_DIR / f"{a}.safetensors").exists()])
    write_json(out, {**res, "commit": git_commit(), "command": "medgan " + " ".join(sys.argv[1:])})
    print(f"wrote {out}")
    return 0


def cmd_federated(ns) -> int:
    from .federated import FederatedConfig, export_federated, run_federated, train_baseline
    from .pretrained import export
    from .utils import RUNS_DIR

    cfg = FederatedConfig(**_pick(ns, FederatedConfig))
    mix = "iid" if cfg.scheme == "iid" else f"alpha{cfg.alpha:g}_seed{cfg.partition_seed}"
    arm_name = {"fedavg": f"{cfg.name}_seed{cfg.partition_seed}", "centralised": "centralised"}.get(
        ns.arm, f"local_{mix}")
    # The folder names the partition: a run with another alpha never resumes this one's hospitals.
    base = Path(cfg.out) if cfg.out else RUNS_DIR / "federated" / (
        f"{cfg.dataset}_{cfg.size}_{cfg.n_clients}h_{arm_name}_{cfg.rounds}x{cfg.local_steps}")
    print(json.dumps({"arm": ns.arm, **cfg.to_dict(), "out": str(base)}, indent=1))
    if ns.arm == "fedavg":
        cfg = dataclasses.replace(cfg, out=str(base))
        res = run_federated(cfg, quiet=not ns.verbose)
        path = export_federated(res, ns.export or base / f"{cfg.name}.safetensors")
        last = res.rounds[-1]
        print(f"{cfg.name}: {cfg.rounds} rounds in {res.wall_s:.0f} s; final FD {last.get('fd', float('nan')):.2f} "
              f"(x{last.get('fd_ratio', float('nan')):.2f} the floor); model: {path}")
        return 0
    hospitals = [-1] if ns.arm == "centralised" else (ns.hospital if ns.hospital else list(range(cfg.n_clients)))
    bad = [h for h in hospitals if ns.arm == "local" and not 0 <= h < cfg.n_clients]
    if bad:
        raise SystemExit(f"--hospital {bad}: hospitals are numbered 0 to {cfg.n_clients - 1}")
    if ns.export and len(hospitals) > 1:
        raise SystemExit("--export names one file: give one --hospital, or leave --export out "
                         "(each hospital's model goes to OUT/hospital<h>/)")
    for h in hospitals:
        out = base if h < 0 else base / f"hospital{h}"
        model, hist = train_baseline(cfg, ns.arm, max(h, 0), out=out)
        name = "centralised" if h < 0 else f"local_hospital{h}"
        path = ns.export or out / f"{name}.safetensors"
        export(model, path, hist, steps=hist.step, wall_s=round(hist.wall_s, 1), stopped=hist.stopped,
               federated=cfg.to_dict(), arm=ns.arm, hospital=h, dataset=cfg.dataset, size=cfg.size,
               command="medgan " + " ".join(sys.argv[1:]))
        fds = [r["fd_ratio"] for r in hist.records if "fd_ratio" in r]
        print(f"{name}: {hist.step} steps in {hist.wall_s:.0f} s; final FD ratio {fds[-1] if fds else float('nan'):.2f}; "
              f"model: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "apply": cmd_apply,
               "train-extractor": cmd_train_extractor, "download": cmd_download,
               "run-notebooks": cmd_run_notebooks, "reproduce": cmd_reproduce, "experiment": cmd_experiment,
               "train-cgan": cmd_train_cgan, "federated": cmd_federated,
               "privacy": cmd_privacy}[ns.command]
    return handler(ns)


if __name__ == "__main__":
    sys.exit(main())
