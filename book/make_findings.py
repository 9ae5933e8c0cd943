"""Write the numbers of the article's Findings section from results/*.json (never by hand).

    python book/make_findings.py          # rewrite the block between the markers in article.md
    python book/make_findings.py --check  # exit 1 if article.md is out of date (tests use this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK.parent))  # run as a script from a clone without installing

from medgan_utils.results import MEDMNIST_RESNET18_28, groups, heads, key, under  # noqa: E402

RESULTS = BOOK.parent / "results"
ARTICLE = BOOK / "article.md"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(v, d=3) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def _sig(v, n=2) -> str:
    """``n`` significant figures, no exponent: the classifier's FD ratios are known to about that."""
    return "n/a" if v is None else f"{float(f'{v:.{n}g}'):g}"


SPACES = ("classifier", "autoencoder")


def _pm(r: dict, metric: str, d: int = 2) -> str:
    """``mean ± half-width`` of a 95 % t-interval over seeds (``n/a`` where absent)."""
    return f"{_f(r.get(f'{metric}_mean'), d)} ± {_f(r.get(f'{metric}_ci95'), d)}"


def _separate(a: dict, b: dict, metric: str) -> bool:
    """True when the two 95 % t-intervals of ``metric`` do not overlap."""
    if not all(f"{metric}_{x}" in r for r in (a, b) for x in ("mean", "ci95")):
        return False
    lo, hi = sorted((a, b), key=lambda r: r[f"{metric}_mean"])
    return lo[f"{metric}_mean"] + lo[f"{metric}_ci95"] < hi[f"{metric}_mean"] - hi[f"{metric}_ci95"]


def _compare(rows: dict, a: str, b: str, metric: str, names=None, lower_is_better: bool = True) -> str:
    """A sentence fragment comparing two configurations on ``metric``."""
    ra, rb = rows[a], rows[b]
    na, nb = names or (a, b)
    if f"{metric}_mean" not in ra or f"{metric}_mean" not in rb:
        return f"{na} vs {nb}: n/a"
    first = na if ra[f"{metric}_mean"] < rb[f"{metric}_mean"] else nb
    if not lower_is_better:
        first = nb if first == na else na
    word = "lower" if lower_is_better else "higher"
    if _separate(ra, rb, metric):
        return f"**{first} {word}** (intervals separate)"
    return f"{first} {word} (intervals overlap, no difference shown)"


def _generators(out: list[str]) -> None:
    rows, reference = [], None
    for nb, key_, label in [("01_vanilla_gan", "gan", "vanilla GAN (MLP, BCE)"),
                           ("02_dcgan", "dcgan", "DCGAN (+EMA)"),
                           ("03_wgan_gp", "wgan_gp", "WGAN-GP (+EMA)")]:
        r = _load(nb)
        if not r:
            continue
        g = under(r["metrics"], key_).get
        if g("classifier_fd_ratio") is None:
            continue
        reference = reference or r.get("extra", {}).get("reference")
        rows.append(f"| {label} | {_sig(g('classifier_fd_ratio'))} | {_f(g('classifier_precision'), 2)} | "
                    f"{_f(g('classifier_recall'), 2)} | {_sig(g('autoencoder_fd_ratio'))} | "
                    f"{_f(g('autoencoder_recall'), 2)} | {_f(g('classifier_test_shift_fd'), 2)} "
                    f"({_f(g('classifier_floor_test_fd'), 2)}) | {_f(g('classifier_copy_frac'), 3)} | "
                    f"`{nb}` @ {r['commit']} |")
    if rows:
        out += [f"**Generators on PneumoniaMNIST (28 px)**, 2,000 samples judged against held-out images of "
                f"their own distribution ({reference or 'the validation split'}), in the features of the "
                "course's classifier and of its label-free autoencoder. FD / floor is about 1 for real "
                "images; the test split's shift is a second number (the floor's in brackets):", "",
                "| model | FD / floor (classifier) | precision | recall | FD / floor (autoencoder) | "
                "recall (autoencoder) | FD to the test split (floor) | near-copies | source |",
                "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def _yardstick(out: list[str], m: dict, commit: str) -> None:
    ext = [f"{ds}: test AUC {_f(m.get(key('extractor', ds, 'test_auc')))} / ACC "
           f"{_f(m.get(key('extractor', ds, 'test_acc')))} (MedMNIST ResNet-18: {ref['auc']} / {ref['acc']})"
           for ds, ref in MEDMNIST_RESNET18_28.items() if key("extractor", ds, "test_auc") in m]
    if ext:
        out += ["**Feature extractors** (trained on MedMNIST itself): " + "; ".join(ext) + ".", ""]
    rt = under(m, "reference_table")
    lines = []
    for space in SPACES:
        t, v = under(rt, key(space, "test_split")), under(rt, key(space, "validation_split"))
        if t and v:
            lines.append(f"in the {space}'s features, against the test split the floor is {_f(t['floor'], 2)} and "
                         f"DCGAN / WGAN-GP score {_f(t['dcgan'], 2)} / {_f(t['wgan-gp'], 2)}; against the validation "
                         f"split the floor is {_f(v['floor'], 2)} and they score {_f(v['dcgan'], 2)} / "
                         f"{_f(v['wgan-gp'], 2)}")
    if lines:
        below = [s for s in SPACES if under(rt, key(s, "test_split")).get("dcgan", 1e9)
                 < under(rt, key(s, "test_split")).get("floor", 0)
                 and under(rt, key(s, "test_split")).get("wgan-gp", 1e9) < under(rt, key(s, "test_split")).get("floor", 0)]
        ahead = [s for s in SPACES if under(rt, key(s, "validation_split")).get("dcgan", 1e9)
                 < under(rt, key(s, "validation_split")).get("wgan-gp", 0)]
        above = all(under(rt, key(s, "validation_split")).get(g, 0) > under(rt, key(s, "validation_split")).get("floor", 1e9)
                    for s in SPACES for g in ("dcgan", "wgan-gp"))
        out += [f"**The yardstick** (`03_wgan_gp` @ {commit}): " + "; ".join(lines) + ". "
                + (f"Against the shifted test split both generators score below the floor in the {' and '.join(below)} "
                   "space (they look better than real data). " if below else "")
                + ("Against the validation split both are above the floor in every space" if above else
                   "Against the validation split not every score is above the floor")
                + (f", and the DCGAN is ahead in the {' and the '.join(ahead)} space." if ahead else "."), ""]
    bat = under(m, "battery")
    if "problems" in bat:
        ratios = {k: v for k, v in bat.items() if k.endswith("/fd_ratio")}
        one = {k.split("/")[0] + "/" + k.split("/")[1]: v for k, v in ratios.items() if "/one_class/" in k}
        weakest = min(one, key=one.get) if one else None
        out += [f"**Calibration battery** (noise, blur, down-up sampling, intensity shift at two severities, one "
                f"class only, exact copies; PneumoniaMNIST and BreastMNIST, both feature spaces): "
                f"{int(bat['problems'])} failed checks. Every degradation scores above the floor's spread and in "
                "order of severity" + (f"; the weakest signal is the one-class set in {weakest} "
                                       f"({_f(one[weakest], 2)}x the floor)" if weakest else "") + ".", ""]
    shipped = under(m, "shipped")
    order = {}
    for ds in ("pneumoniamnist", "breastmnist"):
        sh = under(shipped, ds)
        for s in SPACES:
            if sh:
                order[f"{ds}, {s} space"] = sorted(groups(sh), key=lambda g: sh[key(g, f"{s}_fd_ratio")])
    if order:
        out += ["**Ranking of the shipped generators** by FD / floor, best first: "
                + "; ".join(f"{k}: {' > '.join(v)}" for k, v in order.items())
                + (" (all agree)." if len({tuple(v) for v in order.values()}) == 1 else " (they do not all agree)."), ""]


def _grid(out: list[str], name: str, title: str, pairs) -> None:
    st = _load(name)
    if not st:
        return
    m = st["metrics"]
    rows = {n: under(m, n) for n in groups(m)}
    if not any("classifier_fd_ratio_mean" in r for r in rows.values()):
        return
    lines = [f"| {n} | {int(r.get('diverged', 0))} / {int(r.get('runs', 0))} | {_pm(r, 'classifier_fd_ratio', 1)} | "
             f"{_pm(r, 'classifier_recall')} | {_pm(r, 'autoencoder_fd_ratio', 1)} | {_pm(r, 'autoencoder_recall')} |"
             for n, r in rows.items()]
    verdicts = [f"{label}: FD / floor, classifier {_compare(rows, a, b, 'classifier_fd_ratio', names)}, autoencoder "
                f"{_compare(rows, a, b, 'autoencoder_fd_ratio', names)}; recall, classifier "
                f"{_compare(rows, a, b, 'classifier_recall', names, False)}, autoencoder "
                f"{_compare(rows, a, b, 'autoencoder_recall', names, False)}"
                for label, a, b, names in pairs if a in rows and b in rows]
    out += [f"**{title}** (`{st['extra']['command']}`, commit {st['commit']}; mean ± 95 % t-interval over seeds):", "",
            "| configuration | diverged | FD / floor (classifier) | recall | FD / floor (autoencoder) | recall (autoencoder) |",
            "|---|---|---|---|---|---|", *lines, "", "; ".join(verdicts) + ".", ""]


def _augmentation(out: list[str]) -> None:
    study = _load("04_augmentation")
    for ds, part in (study["extra"]["parts"].items() if study else []):
        m = under(study["metrics"], ds)
        bits = []
        if key(1.0, "real", "auc_mean") in m:
            bits.append(f"real-only at 100 %: AUC {_f(m[key(1.0, 'real', 'auc_mean')])} ± "
                        f"{_f(m.get(key(1.0, 'real', 'auc_ci95')))} "
                        f"(ResNet-18 baseline {MEDMNIST_RESNET18_28[ds]['auc']})")
        if key(1.0, "tstr_over_trtr") in m:
            first = _load(f"04_augmentation_{ds}_projection_only")
            was = first and first["metrics"].get(key(1.0, "tstr_over_trtr"))
            bits.append(f"TSTR/TRTR at 100 %: {_f(m[key(1.0, 'tstr_over_trtr')])}"
                        + (f" (first generator, projection only: {_f(was)})" if was else ""))
        for arm in ("real+syn1:1", "real+syn1:2", "real+classic"):
            if key(0.1, arm, "auc_gain_mean") in m:
                gain, half = m[key(0.1, arm, "auc_gain_mean")], m.get(key(0.1, arm, "auc_gain_ci95"), float("nan"))
                zero = "includes 0" if abs(gain) <= half else "excludes 0"
                bits.append(f"{arm} vs real at 10 %: {100 * gain:+.1f} pp (95 % t-CI ± {100 * half:.1f}, {zero})")
        tested = [(frac, arm) for frac in heads(m, "real/auc_mean") for arm in ("real+classic", "real+syn1:1", "real+syn1:2")
                  if key(frac, arm, "auc_gain_ci95") in m]
        sure = [f"{arm} at {float(frac):.0%} ({100 * m[key(frac, arm, 'auc_gain_mean')]:+.1f} ± "
                f"{100 * m[key(frac, arm, 'auc_gain_ci95')]:.1f} pp)"
                for frac in heads(m, "real/auc_mean") for arm in ("real+classic", "real+syn1:1", "real+syn1:2")
                if key(frac, arm, "auc_gain_ci95") in m
                and abs(m[key(frac, arm, "auc_gain_mean")]) > m[key(frac, arm, "auc_gain_ci95")]]
        bits.append(f"gains whose interval excludes 0, at any fraction: {len(sure)} of {len(tested)} intervals"
                    + (f" ({', '.join(sure)})" if sure else "")
                    + f", against {0.05 * len(tested):.1f} expected by chance alone at the 5 % level")
        out += [f"**Augmentation, {ds}** (`{part['command']}`, commit {part['commit']}, "
                f"results/04_augmentation.json; intervals over classifier seeds, subset and GAN fixed): "
                + "; ".join(bits) + ".", ""]


def _diversity(out: list[str]) -> None:
    d = _load("04_cgan_diversity")
    if not d:
        return
    m, extra = d["metrics"], d.get("extra", {})
    variants = extra.get("variants")
    if not isinstance(variants, dict) or "real/tstr_auc_mean" not in m:
        return  # an older format of the file: nothing this section can read
    rows = []
    for name, v in variants.items():
        g = under(m, name)
        if key("normal", "classifier_recall") not in g:
            continue
        row = (f"{v['change']}{' (the chapter’s recipe)' if v.get('chapter_recipe') else ''}: normal "
               f"{_f(g[key('normal', 'classifier_recall')], 2)} / {_f(g[key('normal', 'autoencoder_recall')], 2)}, "
               f"pneumonia {_f(g[key('pneumonia', 'classifier_recall')], 2)} / "
               f"{_f(g[key('pneumonia', 'autoencoder_recall')], 2)}")
        if "tstr_over_trtr" in g:
            row += f", TSTR/TRTR {_f(g['tstr_over_trtr'], 3)}"
        rows.append(row)
    if rows:
        out += [f"**Per-class diversity on PneumoniaMNIST** (`{extra.get('command')}` @ {d['commit']}; recall in the "
                f"classifier / autoencoder space, {extra.get('n_per_class', 0):,} fakes per class against the validation "
                f"split; TSTR over classifier seeds {', '.join(map(str, extra.get('tstr_seeds', [])))}, TRTR "
                f"{_f(m['real/tstr_auc_mean'], 3)}): " + "; ".join(rows) + ".", ""]


def _super_resolution(out: list[str]) -> None:
    r = _load("05_super_resolution")
    if not r:
        return
    m = r["metrics"]
    methods = [x for x in ("nearest", "bicubic", "lanczos", "srresnet", "srl1", "srfeat", "srgan") if key("ct", x, "psnr") in m]
    n = int(m.get(key("ct", "n_scored"), 0))
    cells = [f"{x} {_f(m[key('ct', x, 'psnr')], 2)} dB / {_f(m[key('ct', x, 'ssim')], 3)} / "
             f"{_sig(m[key('ct', x, 'feature')], 2)}" for x in methods]
    bits = ["PSNR / SSIM inside the head mask / feature distance in the judge encoder: " + "; ".join(cells)]
    for x in ("srresnet", "srl1", "srgan"):
        if key("ct", x, "psnr_vs_bicubic_mean") in m:
            bits.append(f"{x} - bicubic: {m[key('ct', x, 'psnr_vs_bicubic_mean')]:+.2f} ± "
                        f"{m[key('ct', x, 'psnr_vs_bicubic_ci95')]:.2f} dB (95 % t-CI over slices)")
    if key("ct", "srgan_vs_srl1", "feature_mean") in m:
        bits.append("SRGAN - the L1 control with as many steps (srl1): feature "
                    f"{_sig(m[key('ct', 'srgan_vs_srl1', 'feature_mean')], 2)} ± {_sig(m[key('ct', 'srgan_vs_srl1', 'feature_ci95')], 2)}, "
                    f"PSNR {m[key('ct', 'srgan_vs_srl1', 'psnr_mean')]:+.2f} ± {m[key('ct', 'srgan_vs_srl1', 'psnr_ci95')]:.2f} dB")
    if key("ct", "srgan", "detail") in m:
        bits.append("fine-detail energy over the truth's (realism; 1 = the real slice's): " + ", ".join(
            f"{x} {_f(m[key('ct', x, 'detail')], 2)}" for x in methods))
    if key("ct", "srgan", "excess_detail_frac") in m:
        bits.append("head pixels with more fine detail than the truth: " + ", ".join(
            f"{x} {100 * m[key('ct', x, 'excess_detail_frac')]:.2f} %" for x in ("bicubic", "srresnet", "srl1", "srfeat", "srgan")
            if key("ct", x, "excess_detail_frac") in m))
    out += [f"**Super-resolution x4 on head CT** (`05_super_resolution` @ {r['commit']}; {n} held-out test "
            "slices from a block of file numbers no model trained on; intervals treat slices as independent): "
            + "; ".join(bits) + ".", ""]


def _reconstruction(out: list[str]) -> None:
    r = _load("06_reconstruction")
    if not r:
        return
    m = r["metrics"]
    n = int(m.get("ct/n_scored", 0))
    bits = []
    for task in ("inpaint_ct", "lowdose_25", "lowdose_10", "sparse_60", "sparse_30"):
        methods = [x for x in ("baseline_fbp", "baseline_tv", "baseline_bm3d", "baseline_biharmonic", "unet_l1", "gan")
                   if key(task, x, "psnr") in m]
        if not methods:
            continue
        cells = ", ".join(f"{x.removeprefix('baseline_')} {_f(m[key(task, x, 'psnr')], 2)} / {_f(m[key(task, x, 'ssim')], 3)}"
                          for x in methods)
        ref = "baseline_biharmonic" if task == "inpaint_ct" else "baseline_fbp"
        gain = key(task, "gan", f"psnr_vs_{ref}_mean")
        extra = (f"; GAN - {ref.removeprefix('baseline_')} {m[gain]:+.2f} ± {m[key(task, 'gan', f'psnr_vs_{ref}_ci95')]:.2f} dB"
                 if gain in m else "")
        ssim_gain = key(task, "gan", f"ssim_vs_{ref}_mean")
        if task == "inpaint_ct" and ssim_gain in m:  # its goal is on both
            extra += f", SSIM {m[ssim_gain]:+.3f} ± {m[key(task, 'gan', f'ssim_vs_{ref}_ci95')]:.3f}"
        bm3d_ssim = key(task, "gan", "ssim_vs_baseline_bm3d_mean")
        if bm3d_ssim in m:  # at low dose BM3D comes closest in SSIM
            extra += (f", SSIM - bm3d {m[bm3d_ssim]:+.3f} ± "
                      f"{m[key(task, 'gan', 'ssim_vs_baseline_bm3d_ci95')]:.3f}")
        bits.append(f"{task}: {cells}{extra}")
    if key("lesion_10", "gan", "contrast_retained_median") in m:
        bits.append("a 3 px lesion at 10 % dose keeps (median) " + ", ".join(
            f"{x.removeprefix('baseline_')} {_f(m[key('lesion_10', x, 'contrast_retained_median')], 2)}"
            for x in ("baseline_fbp", "baseline_tv", "baseline_bm3d", "unet_l1", "gan")
            if key("lesion_10", x, "contrast_retained_median") in m) + " of its contrast")
    out += [f"**Reconstruction on head CT** (`06_reconstruction` @ {r['commit']}; {n} held-out test slices per task; "
            "PSNR dB / SSIM inside the head mask, or inside the hole for inpainting; simulated scans of 8-bit display "
            "images; BM3D in the bm3d package's low-complexity profile): " + "; ".join(bits) + ".", ""]


def _translation(out: list[str]) -> None:
    r = _load("07_cyclegan")
    if not r:
        return
    m = r["metrics"]
    bits = []
    for d, target in (("ct2mr", "MRI"), ("mr2ct", "CT")):
        if key(d, "domain_acc") not in m:
            continue
        def g(k: str, d: str = d) -> float:
            return m[key(d, k)]

        bits.append(
            f"{d} ({int(g('n'))} test slices): classified as {target} {100 * g('domain_acc'):.0f} % (baseline "
            f"{100 * g('baseline_domain_acc'):.0f} %, real held-out {target} {100 * g('real_domain_acc'):.0f} %); "
            f"FD {_f(g('fd'), 1)} vs source {_f(g('fd_source'), 1)}, baseline {_f(g('baseline_fd'), 1)}, floor "
            f"{_f(g('floor_fd'), 1)}; texture FD {_f(g('texture_fd'), 2)} (source {_f(g('texture_fd_source'), 1)}, "
            f"baseline {_f(g('baseline_texture_fd'), 2)}, floor {_f(g('floor_texture_fd'), 2)}); head-mask Dice "
            f"{_f(g('mask_dice'), 3)} (baseline {_f(g('baseline_mask_dice'), 3)}); cycle PSNR {_f(g('cycle_psnr'), 1)} dB "
            f"(baseline round trip {_f(g('baseline_cycle_psnr'), 1)} dB)")
    out += [f"**Unpaired CT <-> MRI translation** (`07_cyclegan` @ {r['commit']}; CycleGAN with 16-channel ResNet "
            "generators at 128 px; FD against held-out slices of the target modality in the label-free autoencoder "
            "space, texture FD in a second encoder; baseline: inversion + histogram matching): "
            + "; ".join(bits) + ".", ""]


def _federated(out: list[str]) -> None:
    r = _load("08_federated")
    if not r:
        return
    m = r["metrics"]
    if "centralised/fd_ratio" not in m:
        return
    arms = [("centralised", "pooled"), ("fedavg_iid", "FedAvg IID"), ("fedavg_alpha0.5", "FedAvg alpha 0.5"),
            ("fedavgm_alpha0.5", "FedAvgM alpha 0.5"), ("fedgen_alpha0.5", "shared G, local D, alpha 0.5"),
            ("fedavg_alpha0.1", "FedAvg alpha 0.1")]
    parts = [f"{label} {_sig(m[f'{a}/fd_ratio'])}x (recall {_f(m.get(f'{a}/classifier_recall'), 2)})"
             for a, label in arms if f"{a}/fd_ratio" in m]
    locs = [_sig(m[f"local{h}_alpha0.5/fd_ratio"]) for h in range(8) if f"local{h}_alpha0.5/fd_ratio" in m]
    out += [f"**Federated DCGAN across 4 simulated hospitals** (`08_federated` @ {r['commit']}; Flower 1.42 "
            "simulation, PneumoniaMNIST 28 px, 1,600 steps of 64 images in every arm but the x4 one (6,400); FD / floor "
            "against the "
            "validation split, classifier features, 2,000 fakes): " + "; ".join(parts)
            + f"; each hospital alone (alpha 0.5) {', '.join(locs)}x, median {_sig(m['local_median/fd_ratio'])}x"
            + (f"; FedAvg alpha 0.5 with four times the rounds {_sig(m['fedavg_alpha0.5_x4/fd_ratio'])}x"
               if "fedavg_alpha0.5_x4/fd_ratio" in m else "") + ". "
            + f"A round moves {_f(m['bytes_per_round'] / 1e6, 1)} MB (4 hospitals, both directions); SecAgg+ "
            f"matched FedAvg to {m.get('secagg/max_abs_diff', float('nan')):.1e} (bound "
            f"{m.get('secagg/bound', float('nan')):.1e}).", ""]


def _privacy(out: list[str]) -> None:
    r = _load("09_privacy")
    if not r:
        return
    m = r["metrics"]
    if "eps10/tstr_auc" not in m:
        return
    parts = []
    for tag, label in (("eps1", "epsilon 1"), ("eps3", "epsilon 3"), ("eps10", "epsilon 10"), ("epsinf", "no DP")):
        parts.append(f"{label}: FD {_sig(m[f'{tag}/fd_ratio'])}x, recall {_f(m[f'{tag}/recall'], 2)}, TSTR "
                     f"{_f(m[f'{tag}/tstr_auc'], 3)} ({_f(m[f'{tag}/tstr_over_trtr'], 2)} x TRTR), attack AUC "
                     f"{_f(m[f'{tag}/mia_auc'], 3)} black-box / {_f(m[f'{tag}/d_mia_auc'], 3)} white-box")
    nd1 = (f"; the usual 1 D step per G step at epsilon 10: FD {_sig(m['eps10/nd1/fd_ratio'])}x, recall "
           f"{_f(m['eps10/nd1/recall'], 2)}, TSTR {_f(m['eps10/nd1/tstr_auc'], 3)}" if "eps10/nd1/fd_ratio" in m else "")
    audits = [(k.split("/")[1], v) for k, v in m.items() if k.startswith("audit/") and k.endswith("/classifier_mia_auc")]
    out += [f"**Differentially private conditional DCGAN** (`09_privacy` @ {r['commit']}; Opacus 1.6 DP-SGD on D, "
            "delta 1e-5, 2,000 Poisson batches of 128, 5 D steps per G step; PneumoniaMNIST 28 px; FD / floor "
            "against the validation split, classifier features, 2,000 fakes; TSTR: chapter 04's classifier "
            f"trained on synthetic images only, TRTR {_f(m['trtr_auc'], 3)}): " + "; ".join(parts) + nd1 + ". "
            + "Black-box attack AUC of the non-private generators of chapters 01-08: "
            + ", ".join(f"{n} {_f(v, 3)}" for n, v in audits) + ".", ""]


def render() -> str:
    out: list[str] = ["*Generated by `book/make_findings.py` from `results/`; each line names the "
                      "result file and commit that produced it.*", ""]
    _generators(out)
    r3 = _load("03_wgan_gp")
    if r3:
        _yardstick(out, r3["metrics"], r3["commit"])
    _grid(out, "03_stability", "Stability, DCGAN vs WGAN-GP on PneumoniaMNIST, 300 steps",
          [(f"lr {lr}", f"dcgan/lr{lr}", f"wgan-gp/lr{lr}", ("DCGAN", "WGAN-GP")) for lr in ("0.0001", "0.001", "0.005")])
    _grid(out, "03_small_data", "BreastMNIST, WGAN-GP on 272 training images: EMA and DiffAugment",
          [(f"{v} vs plain", v, "plain", (v, "plain")) for v in ("ema", "diffaugment", "ema+diffaugment")])
    _augmentation(out)
    _diversity(out)
    _super_resolution(out)
    _reconstruction(out)
    _translation(out)
    _federated(out)
    _privacy(out)
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    text = ARTICLE.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{ARTICLE} lacks the markers {START} / {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}{END}{tail}"
    if "--check" in sys.argv:
        if new != text:
            print("book/article.md's findings are out of date: run python book/make_findings.py")
            return 1
        return 0
    ARTICLE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
