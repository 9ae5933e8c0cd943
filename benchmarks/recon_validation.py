"""Chapter 06's recipe choices, on validation slices: the shipped reconstruction models, and any
candidate checkpoints, scored on the CT *validation* split with the same tasks, regions, PSNR,
SSIM and paired intervals as notebook 06 scores the test split, but against FBP or biharmonic
inpainting only (no TV or BM3D, whose weights are themselves chosen on validation slices, and no
feature distance). Recipes are compared here, on validation slices, not on the test slices (which
were looked at between choices: notebook 06, section 3, says when).

    python benchmarks/recon_validation.py [--n 24] [--threads 1] [--candidate NAME=SOURCE ...]

SOURCE is a checkpoint path, or ``COMMIT:PATH`` for a model shipped earlier (read with
``git show``, so anyone with the history can re-score it, e.g. the first recipe:
``first_sparse_gan=bd9c33e:checkpoints/sparseview_gan_ct.safetensors``). A candidate under
``runs/`` (a variant that was trained and not shipped) can only be re-scored where its file is:
the results keep each scored file's sha256, whether it is shipped, and where it came from.

Writes ``results/benchmark_recon_validation.json``: ``<task>/<model>/psnr``, ``/ssim`` and
``/psnr_vs_<baseline>_mean`` / ``_ci95`` (and ssim) for every model of that task, with the
baseline's own scores as ``<task>/baseline_<name>/...``, and every other model's paired difference
to the shipped GAN as ``/psnr_vs_shipped_gan_mean`` / ``_ci95`` (and ssim). Notebook 06 reads it
(section 3).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
from pathlib import Path

import torch

from medgan_utils import reconstruction as rc
from medgan_utils.pretrained import load, read_facts
from medgan_utils.results import start_run
from medgan_utils.stats import paired_ci
from medgan_utils.superres import flatten_summary
from medgan_utils.utils import REPO_ROOT

SHIPPED = ("inpaint_l1_ct", "inpaint_gan_ct", "lowdose_l1_ct", "lowdose_gan_ct",
           "sparseview_l1_ct", "sparseview_gan_ct")


def resolve(source: str, tmp: Path) -> Path:
    """A checkpoint path, or ``COMMIT:PATH`` copied out of the git history into ``tmp``."""
    if ":" in source and not Path(source).exists():
        commit, path = source.split(":", 1)
        blob = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        out = tmp / f"{commit}_{Path(path).name}"
        out.write_bytes(blob)
        return out
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"{source}: no such checkpoint (a path, or COMMIT:PATH from the git history)")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24, help="validation slices per task (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=SOURCE")
    ns = p.parse_args()
    torch.set_num_threads(max(1, ns.threads))
    run = start_run("benchmark_recon_validation", vars(ns))
    sources = {n: f"checkpoints/{n}.safetensors" for n in SHIPPED}
    for c in ns.candidate:
        name, _, source = c.partition("=")
        if not source or name in sources:
            raise SystemExit(f"--candidate {c!r}: NAME=SOURCE with a new NAME")
        sources[name] = source
    metrics: dict[str, float] = {}
    models_info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name, source in sources.items():
            path = resolve(source, Path(tmp))
            models[name], _ = load(path)
            facts = read_facts(path)
            models_info[name] = {"source": source, "shipped": name in SHIPPED,
                                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                 "task": models[name].config.task,
                                 "commands": [r.get("command") for r in facts.get("stages", [facts])]}
    scored: set[str] = set()
    for task_name, task in rc.TASKS.items():
        mine = {n: m for n, m in models.items() if m.config.task == task.task
                and (task.level is None or task.level in m.config.levels())}
        if not mine:
            continue
        scored |= set(mine)
        val = rc.held_out(task_name, "val", ns.n)
        baselines = rc.classical_baselines(task_name)[0] if task.task == "inpaint" else {}
        _, scores = rc.evaluate_task(task_name, mine, val["truth"], val["inputs"], val["masks"], baselines)
        metrics[f"{task_name}/n"] = float(len(val["truth"]))
        flat = flatten_summary(scores["summary"], f"{task_name}/")
        metrics |= {k: v for k, v in flat.items() if not k.endswith("ms_per_image")}
        # Candidates differ by tenths of a dB: each model against the shipped GAN, image by image.
        shipped_gan = f"{task.task}_gan_ct"
        for n in mine:
            if n != shipped_gan:
                for metric in ("psnr", "ssim"):
                    ci = paired_ci(scores["per_image"][n][metric].numpy(), scores["per_image"][shipped_gan][metric].numpy())
                    metrics[f"{task_name}/{n}/{metric}_vs_shipped_gan_mean"] = ci.mean
                    metrics[f"{task_name}/{n}/{metric}_vs_shipped_gan_ci95"] = ci.half
        ref = "baseline_biharmonic" if task.task == "inpaint" else "baseline_fbp"
        for n in mine:
            print(f"{task_name:11s} {n:28s} PSNR {metrics[f'{task_name}/{n}/psnr']:6.2f} dB, "
                  f"{metrics[f'{task_name}/{n}/psnr_vs_{ref}_mean']:+.2f} +/- "
                  f"{metrics[f'{task_name}/{n}/psnr_vs_{ref}_ci95']:.2f} dB over {ref}", flush=True)
    if set(models) - scored:
        raise SystemExit(f"no chapter-06 task matches {sorted(set(models) - scored)} (task and levels)")
    print(f"-> {run.finish(metrics, extra={'models': models_info, 'split': 'val'})}")


if __name__ == "__main__":
    main()
