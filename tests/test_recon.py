"""Chapter 06: the reconstruction model and kind, holes, simulated scans, baselines and scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgan_utils import registry
from medgan_utils.data.ct import head_mask, load_ct
from medgan_utils.models.recon import ReconConfig, ReconModel, ReconUNet
from medgan_utils.reconstruction import (
    BM3D_PROFILE,
    BOX_PX,
    InpaintLoader,
    biharmonic,
    bm3d_denoise,
    choose_weight,
    evaluate_task,
    held_out,
    hole_masks,
    inpaint_input,
    scan,
    scored_holes,
    task_data,
    tv,
)
from medgan_utils.superres import masked_psnr


@pytest.fixture
def sim_cache(tmp_path, monkeypatch):
    # Simulated scans go to a temporary cache, not the repository's runs/.
    import medgan_utils.data.ctsim as ctsim

    monkeypatch.setattr(ctsim, "CACHE_DIR", tmp_path / "ct_sim_cache")
    return tmp_path / "ct_sim_cache"


def _smooth_images(n: int = 4, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.stack([0.6 * torch.sin(2 * xx + k) * torch.cos(1.5 * yy) for k in range(n)])
    return base[:, None].clamp(-1, 1)


@pytest.mark.parametrize("bad", [{"task": "denoise"}, {"task": "lowdose", "corruptions": "2.0"},
                                 {"task": "sparseview", "corruptions": "60,x"},
                                 {"task": "inpaint", "corruptions": "circle"}, {"patch": 100},
                                 {"l1_weight": 0.0}, {"gan_loss": "hinge"},
                                 {"task": "lowdose", "prefill": "biharmonic"}, {"task": "inpaint", "prefill": "zeros"},
                                 {"decay_steps": -1}])
def test_config_refuses_bad_settings_with_a_message(bad):
    with pytest.raises(ValueError, match=r"\w"):
        ReconConfig(**bad)


def test_config_levels_parse_per_task():
    assert ReconConfig(task="lowdose").levels() == [0.25, 0.1]
    assert ReconConfig(task="sparseview", corruptions="60, 30").levels() == [60, 30]
    assert ReconConfig(task="inpaint", corruptions="stroke").levels() == ["stroke"]
    assert ReconConfig(task="inpaint").in_channels == 2 and ReconConfig().in_channels == 1


def test_inpainting_generator_keeps_every_known_pixel_and_fills_only_the_hole():
    torch.manual_seed(0)
    g = ReconUNet(ReconConfig(task="inpaint", width=8))
    x = _smooth_images(2, 32)
    m = hole_masks(x.shape, "box", seed=1)
    out = g(inpaint_input(x, m))
    known = m == 0
    assert torch.equal(out[known], x[known])
    assert not torch.allclose(out[~known], x[~known])  # the hole holds the network's guess


def test_prefilled_inpainting_starts_as_biharmonic_inpainting():
    # With the U-Net's last layer at zero the model is exactly the classical fill.
    g = ReconUNet(ReconConfig(task="inpaint", width=8, prefill="biharmonic"))
    last = g.net.final_conv.conv if hasattr(g.net.final_conv, "conv") else g.net.final_conv
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = _smooth_images(2, 32)
    m = hole_masks(x.shape, "box", seed=4)
    out = g(inpaint_input(x, m))
    assert torch.allclose(out, biharmonic(inpaint_input(x, m)[:, :1], m), atol=1e-6)
    assert torch.equal(out[m == 0], x[m == 0])


def test_ct_generator_predicts_a_correction_to_its_input():
    g = ReconUNet(ReconConfig(task="lowdose", width=8))
    last = g.net.final_conv.conv if hasattr(g.net.final_conv, "conv") else g.net.final_conv
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = _smooth_images(2, 32)
    assert torch.allclose(g(x), x)


def test_inpainting_loss_ignores_everything_outside_the_hole():
    m = ReconModel(ReconConfig(task="inpaint", width=8))
    x = _smooth_images(2, 32)
    mask = hole_masks(x.shape, "box", seed=3)
    fake = x + 0.3 * mask
    other_target = x + 0.5 * (1 - mask)  # differs from x only outside the hole
    inp = inpaint_input(x, mask)
    assert float(m.pixel_loss(fake, x, inp)) == pytest.approx(0.3, abs=1e-5)  # mean L1 in the hole
    assert float(m.pixel_loss(fake, other_target, inp)) == pytest.approx(0.3, abs=1e-5)


def test_l1_training_step_lowers_the_loss_and_the_gan_step_trains_a_conditional_d():
    torch.manual_seed(0)
    clean = _smooth_images(8, 32)
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(-1, 1)
    m = ReconModel(ReconConfig(task="lowdose", width=8, lr=2e-3))
    batches = iter([(noisy, clean)] * 200)
    first = m.train_step(batches)["l1"]
    for _ in range(40):
        last = m.train_step(batches)["l1"]
    assert last < 0.85 * first
    gan = ReconModel(ReconConfig(task="lowdose", width=8, adv_weight=0.01, d_width=8),
                     init_state=m.G.state_dict())
    assert gan.D.initial_conv.conv.in_channels == 2  # input beside output (pix2pix)
    log = gan.train_step(iter([(noisy, clean)]))
    assert {"loss_D", "adv", "l1"} <= set(log)
    assert torch.allclose(gan.apply(noisy[:2]), m.apply(noisy[:2]), atol=0.2)


def test_learning_rates_decay_linearly_by_the_models_own_step_which_resume_restores():
    clean = _smooth_images(4, 32)
    noisy = (clean + 0.2 * torch.randn_like(clean, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    batches = iter([(noisy, clean)] * 20)
    c = ReconConfig(task="lowdose", width=4, adv_weight=0.01, d_width=4, lr=4e-4, lr_d=2e-4,
                    constant_steps=2, decay_steps=4)
    m = ReconModel(c)
    seen = []
    for _ in range(5):
        m.train_step(batches)
        seen += [m.opt_G.param_groups[0]["lr"], m.opt_D.param_groups[0]["lr"]]
    # The rate used at step s is lr * factor(s): 1, 1, then 1 - (s - 2) / 4.
    assert seen == pytest.approx([4e-4, 2e-4, 4e-4, 2e-4, 4e-4, 2e-4, 3e-4, 1.5e-4, 2e-4, 1e-4])
    again = ReconModel(c)
    again.load_state_dict(m.state_dict())  # what fit checkpoints and restores
    again.train_step(batches)
    assert again.opt_G.param_groups[0]["lr"] == pytest.approx(1e-4)  # step 5, not step 0
    with pytest.raises(ValueError, match="reaches 0 after 6"):
        c.check_fit(type("Fit", (), {"steps": 7})())
    plain = ReconModel(ReconConfig(task="lowdose", width=4, lr=4e-4))  # the default: constant
    for _ in range(3):
        plain.train_step(batches)
    assert plain.opt_G.param_groups[0]["lr"] == 4e-4 and plain.step == 3


@pytest.mark.needs_ct
def test_training_holes_can_be_kept_on_the_head_like_the_scored_ones():
    slices = load_ct("train", 256).images[:40]

    def on_head(loader, batches=6):
        fr = []
        for (x, y), _ in zip(loader, range(batches)):
            m = x[:, 1:2].bool()
            fr += ((m & head_mask(y)).flatten(1).sum(1) / m.flatten(1).sum(1)).tolist()
        return np.array(fr)

    anywhere = on_head(InpaintLoader(slices, batch_size=8, patch=128, seed=3))
    focused = on_head(InpaintLoader(slices, batch_size=8, patch=128, seed=3, on_head=0.9))
    assert (anywhere >= 0.9).mean() < 0.7
    assert (focused >= 0.9).mean() > 0.9 > (anywhere >= 0.9).mean()
    again = on_head(InpaintLoader(slices, batch_size=8, patch=128, seed=3, on_head=0.9))
    assert np.array_equal(focused, again)  # seeded: a resumed run cuts the same holes
    with pytest.raises(ValueError, match="holes_on_head is for inpainting"):
        ReconConfig(task="lowdose", holes_on_head=0.9)


def test_hole_sizes_are_in_pixels_of_the_whole_slice():
    # A 128 px patch of a 256 px slice gets boxes of the slice's pixel sizes.
    for side, image_side in [(256, None), (128, 256)]:
        m = hole_masks((40, 1, side, side), "box", seed=0, image_side=image_side)
        rows = m.amax(-1).sum(-1).flatten()
        assert BOX_PX[0] - 1 <= rows.min() and rows.max() <= BOX_PX[1] + 1
    small = hole_masks((40, 1, 28, 28), "box", seed=0)  # PneumoniaMNIST: scaled to 28 px
    assert small.amax(-1).sum(-1).max() <= 8


def test_inpaint_loader_is_seeded_resumable_and_matches_its_inputs():
    imgs = (np.random.default_rng(0).random((12, 64, 64)) * 255).astype(np.uint8)
    a = InpaintLoader(imgs, batch_size=4, seed=5, patch=32)
    first = [tuple(t.clone() for t in b) for _, b in zip(range(3), iter(a))]
    x, y = first[0]
    assert x.shape == (4, 2, 32, 32) and y.shape == (4, 1, 32, 32)
    hole = x[:, 1:] > 0.5
    assert hole.any() and torch.equal(x[:, :1][hole], torch.full_like(x[:, :1][hole], -1.0))
    assert torch.equal(x[:, :1][~hole], y[~hole])
    b = InpaintLoader(imgs, batch_size=4, seed=5, patch=32)
    it = iter(b)
    next(it)
    state = b.state_dict()
    c = InpaintLoader(imgs, batch_size=4, seed=5, patch=32)
    c.load_state_dict(state)
    assert torch.equal(next(iter(c))[0], first[1][0])  # a resumed loader cuts the same holes
    other = next(iter(InpaintLoader(imgs, batch_size=4, seed=6, patch=32)))[0]
    assert not torch.equal(other, x)


def test_simulated_scans_are_cached_seeded_and_worse_at_lower_dose(sim_cache):
    u8 = (np.clip(_smooth_images(2, 32)[:, 0].numpy() * 0.5 + 0.5, 0, 1) * 200).astype(np.uint8)
    import medgan_utils.reconstruction as rec

    rec.ct_mu.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rec, "ct_mu", lambda size=32: 0.05)
            hi = scan(u8, "lowdose", 0.25, "test")
            lo = scan(u8, "lowdose", 0.1, "test")
            again = scan(u8, "lowdose", 0.25, "test")
            other_seed = scan(u8, "lowdose", 0.25, "val")
    finally:
        rec.ct_mu.cache_clear()
    assert hi.dtype == np.uint8 and hi.shape == u8.shape
    assert np.array_equal(hi, again) and not np.array_equal(hi, other_seed)
    err = lambda r: np.mean((r.astype(float) - u8) ** 2)  # noqa: E731
    assert err(lo) > err(hi)
    assert len(list(sim_cache.glob("*.npz"))) == 3


def test_tv_and_biharmonic_beat_the_corrupted_input_and_the_weight_is_chosen_inside_the_grid():
    torch.manual_seed(0)
    clean = _smooth_images(4, 48)
    noisy = (clean + 0.15 * torch.randn_like(clean)).clamp(-1, 1)
    assert masked_psnr(tv(noisy, 0.1), clean).mean() > masked_psnr(noisy, clean).mean() + 3
    best, scores = choose_weight(tv, noisy, clean, [0.001, 0.03, 0.1, 0.3, 3.0])
    assert best not in (0.001, 3.0) and scores[best] == max(scores.values())
    m = hole_masks(clean.shape, "box", seed=2)
    holed = inpaint_input(clean, m)[:, :1]
    filled = biharmonic(holed, m)
    hole = m.bool()
    assert masked_psnr(filled, clean, hole).mean() > masked_psnr(holed, clean, hole).mean() + 10


def test_bm3d_denoises_and_is_cached_on_disk_per_input_and_sigma(tmp_path, monkeypatch):
    torch.manual_seed(0)
    clean = _smooth_images(2, 32)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(-1, 1)
    out = bm3d_denoise(noisy, 0.05, cache_dir=tmp_path)
    assert out.shape == noisy.shape and out.dtype == torch.float32
    assert masked_psnr(out, clean).mean() > masked_psnr(noisy, clean).mean() + 3
    assert len(list(tmp_path.glob("bm3d_*.npz"))) == 1
    import bm3d

    def refuse(*a, **k):
        raise AssertionError("a cache hit must not run BM3D")

    monkeypatch.setattr(bm3d, "bm3d", refuse)
    hit = bm3d_denoise(noisy, 0.05, cache_dir=tmp_path)  # read back: same values, shape and dtype
    assert torch.equal(hit, out) and hit.shape == out.shape and hit.dtype == out.dtype
    monkeypatch.undo()
    bm3d_denoise(noisy, 0.08, cache_dir=tmp_path)  # another sigma: its own file
    bm3d_denoise(noisy[:1], 0.05, cache_dir=tmp_path)  # other input: its own file
    same_bytes = noisy.reshape(1, 1, 32, 64)  # the same bytes in another shape: its own file
    assert bm3d_denoise(same_bytes, 0.05, cache_dir=tmp_path).shape == (1, 1, 32, 64)
    assert len(list(tmp_path.glob("bm3d_*.npz"))) == 4 and not list(tmp_path.glob("*.tmp.npz"))
    other = bm3d_denoise(noisy, 0.05, cache_dir=tmp_path, profile="np")  # another profile: its own file
    assert len(list(tmp_path.glob("bm3d_*.npz"))) == 5 and not torch.equal(other, out)
    assert torch.equal(bm3d_denoise(noisy, 0.05, cache_dir=tmp_path, profile=BM3D_PROFILE), out)  # the default
    assert masked_psnr(other, clean).mean() > masked_psnr(noisy, clean).mean() + 3
    with pytest.raises(ValueError, match="profile"):
        bm3d_denoise(noisy, 0.05, cache_dir=tmp_path, profile="fast")


def test_baseline_weights_are_the_ones_their_benchmarks_chose_on_validation():
    # TV_WEIGHT and BM3D_SIGMA are typed into the package (too slow to choose in every run): they
    # must be the best of what benchmarks/tv_weight.py and bm3d_sigma.py last measured, on the
    # scans the package makes today, and the baselines must use them.
    from medgan_utils.reconstruction import (
        BM3D_GRID,
        BM3D_PROFILE,
        BM3D_SIGMA,
        TASKS,
        TV_GRID,
        TV_WEIGHT,
        classical_baselines,
        scan_settings,
    )
    from medgan_utils.results import RESULTS_DIR

    def setting(name):
        return TASKS[name].task, TASKS[name].level

    for file, grid, chosen, metric in (("benchmark_tv.json", TV_GRID, TV_WEIGHT, "{n}/{v:g}/psnr"),
                                       ("benchmark_bm3d.json", BM3D_GRID, BM3D_SIGMA, "{n}/" + BM3D_PROFILE + "/{v:g}/psnr")):
        bench = json.loads((RESULTS_DIR / file).read_text())
        params = bench["params"]
        assert params["grid"] == list(grid) and params["n"] == 12 and params["size"] == 256
        assert "dirty" not in bench["commit"]
        assert {n: scan_settings(*setting(n)) for n in params["scan_settings"]} == params["scan_settings"]
        best = {setting(n): max(grid, key=lambda v, n=n: bench["metrics"][metric.format(n=n, v=v)])
                for n in params["scan_settings"]}
        assert best == chosen
    bm = json.loads((RESULTS_DIR / "benchmark_bm3d.json").read_text())
    assert all(abs(d) < 0.1 for d in bm["extra"]["np_minus_lc_db"].values())  # what the cheaper profile gives up
    for name in ("lowdose_25", "lowdose_10", "sparse_60", "sparse_30"):
        fns, choices = classical_baselines(name)
        assert choices["tv_weight"] == TV_WEIGHT[setting(name)]
        assert set(fns) == ({"baseline_tv", "baseline_bm3d"} if name.startswith("lowdose") else {"baseline_tv"})
        if name.startswith("lowdose"):
            assert choices["bm3d_sigma"] == BM3D_SIGMA[setting(name)] and choices["bm3d_profile"] == BM3D_PROFILE
    with pytest.raises(ValueError, match="val="):
        classical_baselines("lowdose")


def test_baselines_are_chosen_afresh_on_validation_slices_given_them():
    # At another size or dose (needs_tuning) the constants do not hold: given validation slices,
    # TV's weight and BM3D's sigma are the grid values with the best PSNR on them.
    from medgan_utils.reconstruction import BM3D_SIGMA, TV_WEIGHT, classical_baselines, needs_tuning

    torch.manual_seed(0)
    val = {"truth": _smooth_images(2, 32)}
    val["inputs"] = (val["truth"] + 0.2 * torch.randn_like(val["truth"])).clamp(-1, 1)
    fns, choices = classical_baselines("lowdose_10", val)
    assert choices["tv_weight"] == max(choices["tv_grid_psnr"], key=choices["tv_grid_psnr"].get) != TV_WEIGHT[("lowdose", 0.1)]
    assert choices["bm3d_sigma"] == max(choices["bm3d_grid_psnr"], key=choices["bm3d_grid_psnr"].get)
    assert choices["bm3d_sigma"] != BM3D_SIGMA[("lowdose", 0.1)]  # noise std 0.1 in [0, 1] units, not 10 % dose's
    assert masked_psnr(fns["baseline_bm3d"](val["inputs"]), val["truth"]).mean() > masked_psnr(val["inputs"], val["truth"]).mean() + 3
    assert not needs_tuning("lowdose_10", 256) and not needs_tuning("inpaint_ct", 128)
    assert needs_tuning("sparse_30", 128) and needs_tuning("lowdose_25", 256, reference_photons=2e4)
    assert not needs_tuning("sparse_30", 256, reference_photons=2e4)  # the dose plays no part in sparse view

def test_scoring_ranks_the_truth_first_and_added_noise_last():
    # The yardstick: an oracle beats the baseline, a noisier output loses to it, on every image.
    torch.manual_seed(0)
    clean = _smooth_images(6, 48) * 0.5 + 0.2
    fbp = (clean + 0.1 * torch.randn_like(clean)).clamp(-1, 1)

    class Fixed:
        def __init__(self, fn):
            self.apply = fn

    def truth_of(x):  # the clean slices of these inputs (methods run in batches)
        return torch.stack([clean[int((fbp == xi).flatten(1).all(1).nonzero()[0])] for xi in x])

    models = {"oracle": Fixed(truth_of),
              "worse": Fixed(lambda x: (x + 0.2 * torch.randn_like(x)).clamp(-1, 1))}
    _, scores = evaluate_task("lowdose_25", models, clean, fbp,
                              baselines={"baseline_tv": lambda x: tv(x, 0.05)})
    s = scores["summary"]
    assert s["oracle"]["psnr"] > s["baseline_tv"]["psnr"] > s["baseline_fbp"]["psnr"] > s["worse"]["psnr"]
    assert s["oracle"]["psnr_vs_baseline_fbp"].lo > 0 and s["worse"]["psnr_vs_baseline_fbp"].hi < 0
    assert "ssim_vs_baseline_tv" in s["oracle"]


@pytest.mark.needs_ct
def test_scored_holes_lie_on_the_head_and_alternate_shapes():
    x = load_ct("test", 256).tensors()[:4]
    masks, kinds = scored_holes(x, seed=0)
    heads = head_mask(x)
    assert kinds == ["box", "stroke", "box", "stroke"]
    inside = (masks.bool() & heads).flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert bool((inside >= 0.9).all())
    again, _ = scored_holes(x, seed=0)
    assert torch.equal(masks, again)
    # A slice with almost no head has no room for a scored hole: an error, or left out.
    tiny = torch.full((1, 1, 256, 256), -1.0)
    tiny[..., 120:136, 120:136] = 0.0
    with pytest.raises(ValueError, match="no box hole"):
        scored_holes(tiny, seed=0)
    m, k = scored_holes(torch.cat([tiny, x[:1]]), seed=0, index=[0, 1], skip=True)
    assert k == [None, "stroke"] and m[0].sum() == 0 and m[1].sum() > 0


def _tiny_twin(out_dir, steps, **config):
    """A sparse-view twin on six 32 px CT slices, trained ``steps`` steps through the registry."""
    from medgan_utils.pretrained import train_model
    from medgan_utils.train import FitConfig

    kind = registry.get_kind("recon")
    data = load_ct("train", 32)
    data = type(data)(data.name, data.split, data.size, data.images[:6], data.labels[:6])
    cfg = kind.config("sparseview-l1", data, width=8, patch=16, corruptions="30", **config)
    model, hist = train_model(cfg, data, FitConfig(steps=steps, log_every=1), seed=0, batch_size=4, out_dir=out_dir)
    return kind, data, model, hist


@pytest.mark.needs_ct
def test_recon_kind_trains_through_the_registry_and_a_gan_starts_from_its_twin(tmp_path, sim_cache):
    from medgan_utils.pretrained import export

    kind, data, model, hist = _tiny_twin(tmp_path / "run", steps=3)
    assert hist.step == 3
    path = export(model, tmp_path / "twin.safetensors", hist, dataset="ct")
    gan_cfg = kind.config("sparseview", data, width=8, patch=16, corruptions="30", d_width=8,
                          init_from=str(path))
    gan = kind.build(gan_cfg, data=data)
    assert all(torch.equal(a, b) for a, b in zip(gan.G.state_dict().values(), model.G.state_dict().values()))
    with pytest.raises(ValueError, match="task"):
        kind.build(kind.config("lowdose", data, width=8, init_from=str(path)), data=data)
    inputs, targets = task_data(data.images, "sparseview", [30], "train")
    assert inputs.shape == targets.shape == (6, 1, 32, 32)


@pytest.mark.needs_ct
def test_evaluate_model_scores_every_level_of_its_task_against_the_baselines(sim_cache):
    from medgan_utils.reconstruction import evaluate_model

    torch.manual_seed(0)
    model = ReconModel(ReconConfig(task="sparseview", width=8))
    images = load_ct("test", 256).tensors()[:3]
    res = evaluate_model(model, images, "ct")
    for task in ("sparse_60", "sparse_30"):
        assert res[f"{task}/n"] == 3
        for method in ("model", "baseline_fbp", "baseline_tv"):
            assert np.isfinite(res[f"{task}/{method}/psnr"])
        assert f"{task}/model/psnr_vs_baseline_tv_mean" in res
    # TV was tuned on validation slices: it must not lose to the FBP it starts from.
    assert res["sparse_30/baseline_tv/psnr"] >= res["sparse_30/baseline_fbp/psnr"]
    assert not any(k.startswith("lowdose") for k in res)


def test_evaluate_model_on_other_data_scores_inpainting_only():
    from medgan_utils.reconstruction import evaluate_model

    images = _smooth_images(4, 28)
    res = evaluate_model(ReconModel(ReconConfig(task="inpaint", width=8)), images, "pneumoniamnist")
    assert res["inpaint_pneumoniamnist/n"] == 4 and "inpaint_pneumoniamnist/baseline_biharmonic/ssim" in res
    with pytest.raises(ValueError, match="only inpainting"):
        evaluate_model(ReconModel(ReconConfig(task="lowdose", width=8)), images, "pneumoniamnist")


def test_least_squares_losses_are_the_lsgan_formulas():
    m = ReconModel(ReconConfig(task="lowdose", width=8, adv_weight=0.01, d_width=8))
    real, fake = torch.tensor([[0.9, 1.2], [0.4, 1.0]]), torch.tensor([[0.1, -0.3], [0.5, 0.0]])
    want_d = 0.5 * (((real - 1) ** 2).mean() + (fake ** 2).mean())  # no LeakyReLU before the squares
    assert float(m._adv.d(real, fake)) == pytest.approx(float(want_d), rel=1e-6)
    assert float(m._adv.g(fake)) == pytest.approx(float(((fake - 1) ** 2).mean()), rel=1e-6)


def test_inpaint_loader_alternates_hole_shapes_even_one_image_at_a_time():
    imgs = (np.random.default_rng(1).random((4, 64, 64)) * 255).astype(np.uint8)
    boxes = []
    for x, _ in InpaintLoader(imgs, batch_size=1, seed=0):
        m = x[0, 1]
        rows, cols = m.amax(1), m.amax(0)
        # A box fills its bounding rectangle; a brush stroke does not (or is several pieces).
        boxes.append(bool(m.sum() == rows.sum() * cols.sum()))
    assert boxes == [True, False, True, False]


def test_holes_that_cannot_fit_the_patch_are_refused_with_a_message():
    with pytest.raises(ValueError, match="do not fit"):
        hole_masks((2, 1, 16, 16), "box", seed=0, image_side=256)


@pytest.mark.needs_ct
def test_a_model_trained_in_two_runs_ships_as_one_file_with_both_stages(tmp_path, sim_cache):
    from medgan_utils.pretrained import export, history_path, join_runs, load, read_facts
    from medgan_utils.train import History

    _, _, m1, h1 = _tiny_twin(tmp_path / "a", steps=3)
    first = export(m1, tmp_path / "twin.safetensors", h1, steps=3, wall_s=h1.wall_s, command="stage one")
    _, _, m2, h2 = _tiny_twin(tmp_path / "b", steps=2, init_from=str(first), constant_steps=1, decay_steps=1)
    second = export(m2, tmp_path / "more.safetensors", h2, steps=2, wall_s=h2.wall_s, command="stage two")
    joined = join_runs(first, second, first)  # in place, as a shipped twin is continued
    facts = read_facts(joined)
    assert facts["steps"] == 5 and [s["command"] for s in facts["stages"]] == ["stage one", "stage two"]
    assert facts["wall_s"] == pytest.approx(h1.wall_s + h2.wall_s, abs=0.1)
    assert facts["config"]["decay_steps"] == 1  # the config is the second run's
    hist = History.from_json(history_path(joined))
    assert [r["step"] for r in hist.records] == [1, 2, 3, 4, 5] and hist.step == 5
    assert hist.records[3]["wall_s"] == pytest.approx(h1.wall_s + h2.records[0]["wall_s"])  # time runs on too
    model, _ = load(joined)
    assert all(torch.equal(a, b) for a, b in zip(model.G.state_dict().values(), m2.G.state_dict().values()))


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path):
    # Run folders of chapter 06 were saved before the schedule and holes_on_head existed: their
    # header lacks those fields, which read as the defaults; a real difference is still refused.
    from medgan_utils.checkpoint import CheckpointError, save_checkpoint
    from medgan_utils.train import _check_same_model

    m = ReconModel(ReconConfig(task="lowdose", width=4))
    old = {k: v for k, v in m.config.to_dict().items() if k not in ("constant_steps", "decay_steps", "holes_on_head")}
    save_checkpoint(tmp_path / "last.safetensors", {"G": m.G}, metadata={"kind": "recon", "config": old})
    _check_same_model(tmp_path / "last.safetensors", {"kind": "recon", "config": m.config.to_dict()})
    other = ReconConfig(task="lowdose", width=4, decay_steps=10).to_dict()
    with pytest.raises(CheckpointError, match="decay_steps"):
        _check_same_model(tmp_path / "last.safetensors", {"kind": "recon", "config": other})


def test_a_resumed_fit_continues_the_learning_rate_schedule(tmp_path):
    from medgan_utils.train import FitConfig, fit

    clean = _smooth_images(4, 32)
    batches = [((clean + 0.1 * torch.randn_like(clean, generator=torch.Generator().manual_seed(i))).clamp(-1, 1), clean)
               for i in range(3)]
    c = ReconConfig(task="lowdose", width=4, lr=4e-4, constant_steps=2, decay_steps=4)
    cfg = dict(log_every=1, ckpt_every=1)
    fit(ReconModel(c), batches, FitConfig(steps=3, **cfg), out_dir=tmp_path, progress=False)
    resumed = ReconModel(c)
    fit(resumed, batches, FitConfig(steps=5, **cfg), out_dir=tmp_path, progress=False)
    assert resumed.step == 5
    assert resumed.opt_G.param_groups[0]["lr"] == pytest.approx(4e-4 * (1 - (4 - 2) / 4))  # step 4's rate


@pytest.mark.needs_ct
def test_held_out_inpainting_leaves_out_a_slice_with_no_room_for_a_hole():
    real = load_ct("test", 256).images[:1]
    crown = np.zeros_like(real)
    crown[0, 120:136, 120:136] = 120  # a 16 px head: no hole fits 90 % on it
    h = held_out("inpaint_ct", "test", images_u8=np.concatenate([crown, real]), index=np.array([7, 0]))
    assert h["index"].tolist() == [0] and len(h["truth"]) == len(h["inputs"]) == len(h["masks"]) == 1
    assert h["kinds"] == ["box"]
