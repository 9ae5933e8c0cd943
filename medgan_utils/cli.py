"""``medgan``: the notebooks' training and sampling as scripts (same code, no second copy).

Options are generated from the frozen config dataclasses (``GANConfig``, ``FitConfig``), with help
text taken from their docstrings, so the CLI cannot drift from the library.

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
import re
import sys
import time
from pathlib import Path

import numpy as np


def _field_help(cls) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    helps: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        m = re.match(r"\s{4}([\w, ]+):\s*(.*)", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                helps[n] = m.group(2)
            current = names
        elif current and line.startswith(" " * 8):
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


def build_parser() -> argparse.ArgumentParser:
    from .models.gan import GANConfig
    from .train import FitConfig

    p = argparse.ArgumentParser(prog="medgan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GAN of chapters 01-03 (checkpoints, resume, export)",
                       description="Train a GAN with the one fit() loop. Re-running the same command "
                                   "resumes from OUT/last.safetensors.")
    t.add_argument("preset", choices=["gan", "dcgan", "wgan-gp", "wgan-clip"],
                   help="gan = MLP + BCE (01), dcgan = conv + BatchNorm + BCE (02), "
                        "wgan-gp = conv critic + gradient penalty (03), wgan-clip = weight clipping "
                        "(03). The preset sets some GANConfig options (see GANConfig.preset); "
                        "options given here override it.")
    _data_args(t)
    t.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    t.add_argument("--conditional", action="store_true", help="class-conditional G and D (chapter 04)")
    t.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<preset>_<dataset>)")
    t.add_argument("--export", type=Path, default=None,
                   help="also write the shippable generator here (default: OUT/<name>.safetensors)")
    _add_dataclass_args(t, GANConfig, skip=("channels", "image_size", "num_classes"))
    _add_dataclass_args(t, FitConfig)

    s = sub.add_parser("sample", help="write generated images as a MedMNIST-like uint8 .npz")
    s.add_argument("checkpoint", type=Path, help="an exported generator or a run's last.safetensors")
    s.add_argument("--n", type=int, default=1000, help="number of images (default: %(default)s)")
    s.add_argument("--out", type=Path, required=True, help="output .npz: 'images' uint8 (N,H,W) or "
                   "(N,H,W,C), and 'labels' (N,) for conditional models")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    s.add_argument("--label", type=int, default=None, help="only this class (conditional models)")
    s.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")

    e = sub.add_parser("evaluate", help="FD/KID/precision/recall/coverage of a generator vs the floor")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--n", type=int, default=2000, help="generated images (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)

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

    ex = sub.add_parser("experiment", help="the grids behind chapter 03 (writes results/03_*.json)")
    ex.add_argument("which", choices=["stability", "small-data", "augmentation"],
                    help="stability: DCGAN vs WGAN-GP over learning rates and seeds (FD over training, "
                         "divergence, class coverage); small-data: EMA and DiffAugment on a small set; "
                         "augmentation: chapter 04's conditional-GAN augmentation grid")
    _data_args(ex)
    ex.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3])
    ex.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ex.add_argument("--steps", type=int, default=800, help="generator steps per run")
    ex.add_argument("--eval-every", type=int, default=100, help="steps between FD evaluations")
    ex.add_argument("--n-eval", type=int, default=1000, help="images per FD evaluation")
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--name", default=None, help="results file name (default: 03_<which>, "
                    "04_augmentation_<dataset>)")
    ex.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 1.0],
                    help="augmentation: training-set fractions")
    ex.add_argument("--gan-steps", type=int, default=None,
                    help="augmentation: cGAN steps on the full set, scaled by sqrt(fraction) "
                         "(default: the stored study's, 4000 for breastmnist, else 2000)")
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
                         "(default: the stored study's, 4000 for breastmnist, else 2000)")

    d = sub.add_parser("download", help="fetch a MedMNIST file through medmnist (needs the internet)")
    d.add_argument("name")
    d.add_argument("--size", type=int, default=28)
    d.add_argument("--root", type=Path, default=Path("data/medmnist"))
    return p


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="pneumoniamnist", help="MedMNIST 2D flag (default: %(default)s)")
    p.add_argument("--size", type=int, default=28, help="28, 64, 128 or 224 (default: %(default)s)")
    p.add_argument("--root", default=None, help="folder with the .npz (else $MEDMNIST_ROOT, data/medmnist)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and batch order")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _setup(ns):
    import torch

    from .utils import get_device, seed_everything

    if getattr(ns, "threads", 0):
        torch.set_num_threads(ns.threads)
    seed_everything(getattr(ns, "seed", 0))
    return get_device(ns.device)


def cmd_train(ns) -> int:
    import torch

    from .data import TensorLoader, dataset_info, load_arrays
    from .models.gan import GANConfig
    from .pretrained import export_gan
    from .train import FitConfig, fit

    device = _setup(ns)
    train = load_arrays(ns.dataset, "train", ns.size, ns.root)
    n_classes = len(dataset_info(ns.dataset)["label"])
    cfg = GANConfig.preset(ns.preset, channels=train.n_channels, image_size=ns.size,
                           num_classes=n_classes if ns.conditional else 0,
                           **{k: v for k, v in _pick(ns, GANConfig).items()
                              if k not in ("channels", "image_size", "num_classes")})
    fcfg = FitConfig(**_pick(ns, FitConfig))
    name = f"{ns.preset}{'_cond' if ns.conditional else ''}_{ns.dataset}_{ns.size}"
    out = ns.out or Path("runs") / name
    print(json.dumps({"gan": cfg.to_dict(), "fit": dataclasses.asdict(fcfg), "dataset": ns.dataset,
                      "device": str(device), "out": str(out)}, indent=1))
    from .models.gan import GAN

    prior = torch.bincount(torch.as_tensor(train.labels), minlength=n_classes).float()
    gan = GAN(cfg, device, class_prior=prior)
    loader = TensorLoader(train.images, train.labels, ns.batch_size, device, seed=ns.seed)
    facts = {"dataset": ns.dataset, "size": ns.size, "seed": ns.seed, "batch_size": ns.batch_size}
    hist = fit(gan, loader, fcfg, out_dir=out, metadata={"gan": cfg.to_dict(), **facts})
    export = ns.export or out / f"{name}.safetensors"
    export_gan(gan, export, hist, steps=hist.step, wall_s=round(hist.wall_s, 1),
               device=str(device), stopped=hist.stopped, **facts)
    print(f"{hist.stopped} after {hist.step} steps in {hist.wall_s:.0f} s; generator: {export}")
    return 0


def cmd_sample(ns) -> int:
    import torch

    from .data import to_uint8
    from .pretrained import load_gan

    device = _setup(ns)
    gan, _ = load_gan(ns.checkpoint, device)
    gen = torch.Generator().manual_seed(ns.seed)
    labels = None
    if gan.config.num_classes:
        labels = (torch.full((ns.n,), ns.label) if ns.label is not None
                  else torch.multinomial(gan.class_prior.cpu(), ns.n, replacement=True, generator=gen))
    images = to_uint8(gan.sample(ns.n, labels=labels, generator=gen))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    np.savez_compressed(ns.out, **arrays)
    print(f"wrote {images.shape} {images.dtype} to {ns.out}")
    return 0


def cmd_evaluate(ns) -> int:
    import torch

    from .classify import load_extractor
    from .data import load_arrays
    from .metrics import evaluate
    from .pretrained import load_gan

    device = _setup(ns)
    gan, meta = load_gan(ns.checkpoint, device)
    ds, size = meta.get("dataset", "pneumoniamnist"), meta.get("size", gan.config.image_size)
    ext = load_extractor(ds, size, device)
    train, test = load_arrays(ds, "train", size), load_arrays(ds, "test", size)
    fake = gan.sample(ns.n, generator=torch.Generator().manual_seed(ns.seed))
    res = evaluate(ext, fake, train.tensors(), test.tensors(), seed=ns.seed)
    print(json.dumps(res, indent=1))
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
    from .data import dataset_info, load_arrays

    device = _setup(ns)
    t0 = time.perf_counter()
    tr, va, te = (load_arrays(ns.dataset, s, ns.size, ns.root) for s in ("train", "val", "test"))
    k = len(dataset_info(ns.dataset)["label"])
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
    import papermill as pm

    from .utils import REPO_ROOT

    nb_dir = REPO_ROOT / "notebooks"
    paths = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb"))
    if ns.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in ns.names)]
        if not paths:
            raise SystemExit(f"no notebook matches {ns.names} in {nb_dir}")
    params = {"quick": True} if ns.quick else {}
    for item in ns.param:
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    out_dir = REPO_ROOT / "runs" / "notebooks"
    timings = {}
    for path in paths:
        target = path if ns.inplace else out_dir / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        print(f"== {path.name} {params or '(default parameters)'}", flush=True)
        pm.execute_notebook(str(path), str(target), parameters=params, cwd=str(nb_dir),
                            kernel_name="python3", progress_bar=False, log_output=False)
        timings[path.name] = round(time.perf_counter() - t0, 1)
        print(f"   done in {timings[path.name]} s", flush=True)
    print(json.dumps(timings, indent=1))
    return 0


def cmd_experiment(ns) -> int:
    from .classify import load_extractor
    from .data import load_arrays
    from .experiments import grid, summarize
    from .models.gan import GANConfig
    from .results import start_run
    from .train import FitConfig

    device = _setup(ns)
    if ns.which == "augmentation":
        return _augmentation(ns, device)
    train, test = load_arrays(ns.dataset, "train", ns.size, ns.root), load_arrays(ns.dataset, "test", ns.size, ns.root)
    extractor = load_extractor(ns.dataset, ns.size, device)
    base = dict(channels=train.n_channels, image_size=ns.size)
    if ns.which == "stability":
        configs = [(f"{p}/lr{lr:g}", GANConfig.preset(p, lr_g=lr, lr_d=lr, **base))
                   for p in ("dcgan", "wgan-gp") for lr in ns.lrs]
    else:
        wg = GANConfig.preset("wgan-gp", **base)
        configs = [("plain", wg), ("ema", dataclasses.replace(wg, ema=0.999)),
                   ("diffaugment", dataclasses.replace(wg, diffaugment="color,translation,cutout")),
                   ("ema+diffaugment", dataclasses.replace(wg, ema=0.999,
                                                           diffaugment="color,translation,cutout"))]
    run = start_run(ns.name or f"03_{ns.which.replace('-', '_')}", vars(ns) | {"root": None}, device)
    results = grid(configs, ns.seeds, train=train, test=test, extractor=extractor,
                   fit_config=FitConfig(steps=ns.steps, log_every=max(1, ns.eval_every // 2), ckpt_every=0),
                   batch_size=ns.batch_size, eval_every=ns.eval_every, n_eval=ns.n_eval,
                   device=device, judge=extractor)
    summary = summarize(results)
    path = run.finish(summary, extra={"runs": results, "command": "medgan " + " ".join(sys.argv[1:])})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")
    return 0


def cmd_train_cgan(ns) -> int:
    from .augmentation import cgan_config, cgan_steps, study_gan_steps, train_cgan
    from .data import load_arrays, stratified_subset
    from .pretrained import CHECKPOINT_DIR, export_gan

    device = _setup(ns)
    ns.gan_steps = study_gan_steps(ns.dataset, ns.gan_steps)
    train = load_arrays(ns.dataset, "train", ns.size, ns.root)
    for frac in ns.fractions:
        idx = stratified_subset(train.labels, frac, seed=0)
        steps = cgan_steps(ns.gan_steps, frac)
        overrides = {} if ns.aux_weight is None else {"aux_weight": ns.aux_weight}
        gan, hist = train_cgan(train.images[idx], train.labels[idx], cgan_config(train, **overrides), steps,
                               seed=0, device=device)
        path = export_gan(gan, CHECKPOINT_DIR / f"cgan_{ns.dataset}_{ns.size}_f{frac:g}.safetensors", hist,
                          dataset=ns.dataset, size=ns.size, fraction=frac, n_real=int(len(idx)),
                          steps=steps, subset_seed=0, wall_s=round(hist.wall_s, 1))
        print(f"{path}: {steps} steps on {len(idx)} images in {hist.wall_s:.0f} s", flush=True)
    return 0


def _augmentation(ns, device) -> int:
    from .augmentation import AUGMENTATION_DATASETS, augmentation_experiment, study_gan_steps
    from .data import load_arrays
    from .results import combine_results, start_run

    ns.gan_steps = study_gan_steps(ns.dataset, ns.gan_steps)
    tr, va, te = (load_arrays(ns.dataset, s, ns.size, ns.root) for s in ("train", "val", "test"))
    name = ns.name or f"04_augmentation_{ns.dataset}"
    run = start_run(name, vars(ns) | {"root": None}, device)
    overrides = {} if ns.aux_weight is None else {"aux_weight": ns.aux_weight}
    res = augmentation_experiment(tr, va, te, ns.fractions, ns.seeds, ns.gan_steps, device,
                                  work_dir=Path("runs") / name, gan_overrides=overrides)
    path = run.finish(res["summary"], extra={"per_fraction": res["per_fraction"], "gans": res["gans"],
                                              "gan_config": res["gan_config"],
                                              "command": "medgan " + " ".join(sys.argv[1:])})
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {path}; cGANs in runs/{name}/")
    if ns.name is None:  # the chapter's one file: every data set's study, prefixed by its name
        both = combine_results("04_augmentation", {ds: f"04_augmentation_{ds}" for ds in AUGMENTATION_DATASETS},
                               root=path.parent)
        print(f"wrote {both}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
               "train-extractor": cmd_train_extractor, "download": cmd_download,
               "run-notebooks": cmd_run_notebooks, "experiment": cmd_experiment,
               "train-cgan": cmd_train_cgan}[ns.command]
    return handler(ns)


if __name__ == "__main__":
    sys.exit(main())
