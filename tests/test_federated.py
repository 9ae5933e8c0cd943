"""Chapter 08: the federated GAN on Flower (simulation and deployment engines).

The simulations start Ray (~15-25 s each on 2 cores), so each test below runs one or two tiny
federations (2-3 hospitals, 1-2 rounds of 2-3 local steps) and asserts several things at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from medgan_utils import federated as fl  # noqa: E402
from medgan_utils.checkpoint import read_metadata  # noqa: E402
from medgan_utils.pretrained import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def flower_env(medmnist_root, tmp_path, monkeypatch):
    """Real PneumoniaMNIST, no telemetry, a private FLWR_HOME (Flower writes its state there)."""
    monkeypatch.setenv("MEDMNIST_ROOT", str(medmnist_root))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    return tmp_path


def test_config_round_trips_through_flower_run_config_and_rejects_bad_settings():
    cfg = fl.FederatedConfig(alpha=0.1, share="generator", rounds=3, secagg=False)
    run_config = cfg.to_run_config()
    assert run_config["local-steps"] == 20 and run_config["share"] == "generator"
    assert fl.FederatedConfig.from_run_config(run_config) == cfg
    assert cfg.name == "fedgen_alpha0.1" and cfg.total_steps == 3 * 20 * 4
    with pytest.raises(ValueError, match="unknown federated setting"):
        fl.FederatedConfig.from_run_config({"local-epochs": 1})
    with pytest.raises(ValueError, match="share"):
        fl.FederatedConfig(share="discriminator")
    with pytest.raises(ValueError, match="secagg runs plain FedAvg"):
        fl.FederatedConfig(secagg=True, server_momentum=0.75)


def test_the_shipped_flower_app_lists_every_setting_with_its_default():
    import tomllib

    app = tomllib.loads((REPO / "medgan_utils" / "flowerapp" / "pyproject.toml").read_text())
    settings = app["tool"]["flwr"]["app"]["config"]
    defaults = fl.FederatedConfig().to_run_config()
    assert set(settings) == set(defaults)
    # the app runs 2 hospitals for 3 rounds by default; everything else is the chapter's setting
    differ = {k for k in settings if settings[k] != defaults[k]}
    assert differ == {"n-clients", "rounds"}
    assert app["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "medgan_utils.flower_apps:server_app", "clientapp": "medgan_utils.flower_apps:client_app"}


def test_hospitals_partition_the_training_split_and_skew_with_alpha(flower_env):
    mixes = {a: fl.label_mix(fl.FederatedConfig(alpha=a)) for a in (0.1, 0.5, 10.0)}
    iid = fl.label_mix(fl.FederatedConfig(scheme="iid"))
    for mix in [*mixes.values(), iid]:
        assert mix.sum() == 4708 and mix.shape == (4, 2)  # every training image, in one hospital
    # Smaller alpha, hospitals further from the global mix (one draw of two classes can go either
    # way, so averaged over ten partition seeds): mean |pneumonia share - overall share|.
    def skew(alpha: float) -> float:
        gaps = []
        for seed in range(10):
            m = fl.label_mix(fl.FederatedConfig(alpha=alpha, partition_seed=seed))
            gaps.append(np.abs(m[:, 1] / m.sum(1) - m[:, 1].sum() / m.sum()).mean())
        return float(np.mean(gaps))

    assert skew(0.1) > skew(0.5) > skew(10.0)
    assert float(np.ptp(iid[:, 1] / iid.sum(1))) < 0.03
    hospitals = fl.hospital_arrays(fl.FederatedConfig())
    assert [len(h) for h in hospitals] == mixes[0.5].sum(1).tolist()


def test_pack_unpack_round_trip_and_the_generator_only_share(flower_env):
    cfg = fl.FederatedConfig()
    a, b = fl._build(cfg), fl._build(fl.FederatedConfig(seed=1))
    assert not torch.equal(next(iter(a.G.parameters())), next(iter(b.G.parameters())))
    record = fl.pack(fl.shared_modules(a, "all"))
    assert {k.split(".")[0] for k in record} == {"G", "D", "G_ema"}  # ema=0.999, as in chapter 02
    assert not any(k.endswith("num_batches_tracked") for k in record)
    fl.unpack(fl.shared_modules(b, "all"), record)
    for name in ("G", "D", "G_ema"):
        sa, sb = a.modules()[name].state_dict(), b.modules()[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("num_batches_tracked"))
    gen_only = fl.shared_modules(a, "generator")
    assert set(gen_only) == {"G", "G_ema"}
    with pytest.raises(ValueError, match="does not share"):
        fl.unpack(gen_only, record)  # a full record cannot load into the generator-only share


def test_adam_state_survives_the_trip_through_an_array_record(flower_env):
    cfg = fl.FederatedConfig()
    model = fl._build(cfg)
    data = fl.hospital_arrays(cfg)[0]
    from medgan_utils.data import TensorLoader
    from medgan_utils.train import FitConfig, fit

    fit(model, TensorLoader(data.images, data.labels, 16, "cpu", seed=0),
        FitConfig(steps=2, log_every=2, ckpt_every=0, resume=False), progress=False)
    record = fl._optimizer_record(model)
    fresh = fl._build(cfg)
    fl._restore_optimizers(fresh, record)
    for name, opt in model.optimizers().items():
        want, got = opt.state_dict()["state"], fresh.optimizers()[name].state_dict()["state"]
        assert want.keys() == got.keys()
        for idx in want:
            for key in want[idx]:
                assert torch.equal(torch.as_tensor(want[idx][key]), torch.as_tensor(got[idx][key]))
    assert fl._adam_steps(fresh) == 2


def test_a_hospital_that_drops_out_does_not_stop_the_federation_and_replies_hold_no_images(flower_env):
    out = flower_env / "run"
    cfg = fl.FederatedConfig(n_clients=3, rounds=2, local_steps=2, n_eval=200, fail_client=1,
                             fail_round=1, out=str(out))
    result = fl.run_federated(cfg)
    r1, r2 = result.rounds[1], result.rounds[2]
    assert (r1["replies"], r1["failures"]) == (2, 1) and "dropped out in round 1" in r1["errors"][0]
    assert (r2["replies"], r2["failures"]) == (3, 0)
    # Adam's state persisted in each hospital's context.state: 2 local steps a round, so after
    # round 2 the two hospitals that trained twice are at step 4 and the one that dropped out at 2.
    n = [len(h) for h in fl.hospital_arrays(cfg)]
    assert r2["train/adam-steps"] == pytest.approx((4 * n[0] + 2 * n[1] + 4 * n[2]) / sum(n))
    # Only the networks' tensors (exactly the model's names and shapes) and numbers leave a hospital.
    assert r1["replies_model_only"] == 1.0 and r2["replies_model_only"] == 1.0
    assert r2["reply_keys"] == sorted(["arrays:D", "arrays:G", "arrays:G_ema", "metrics:D_fake",
                                       "metrics:D_real", "metrics:G_grad_norm", "metrics:adam-steps",
                                       "metrics:loss_D", "metrics:loss_G", "metrics:num-examples",
                                       "metrics:partition-id", "metrics:train-seconds"])
    model_bytes = sum(t.numel() * t.element_size() for t in fl.pack(fl.shared_modules(result.model, "all"))
                      .to_torch_state_dict().values())
    assert model_bytes <= r2["bytes_up"] / 3 <= model_bytes * 1.01  # arrays plus their key names
    assert np.isfinite(r2["fd"]) and r2["fd_ratio"] > 0 and r2["total_rss_mb"] > r2["server_rss_mb"]
    assert 0 <= r2["precision"] <= 1 and 0 <= r2["recall"] <= 1  # scored every round, beside FD
    # The server checkpointed every round and the result ships like any GAN.
    assert read_metadata(out / "last.safetensors")["round"] == 2
    path = fl.export_federated(result, flower_env / "fed.safetensors")
    model, meta = load(path)
    assert meta["federated"]["n_clients"] == 3 and model.sample(4).shape == (4, 1, 28, 28)

    # Resume: the same run asked for one more round continues from round 2.
    more = fl.run_federated(fl.FederatedConfig(**{**cfg.to_dict(), "rounds": 3, "fail_client": -1}))
    assert [r["round"] for r in more.rounds] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="alpha differ"):
        fl._server_main(fl.FederatedConfig(**{**cfg.to_dict(), "alpha": 0.1}), None, None)


def test_too_few_replies_stop_the_run_and_one_simulation_per_process(flower_env):
    cfg = fl.FederatedConfig(n_clients=2, rounds=1, local_steps=1, n_eval=0, min_clients=2,
                             fail_client=0, fail_round=1)
    with pytest.raises(RuntimeError, match="fewer than min_clients=2"):
        fl.run_federated(cfg)
    assert fl._LOCK.acquire(blocking=False)  # released after the failure
    try:
        with pytest.raises(RuntimeError, match="already running in this Python process"):
            fl.run_federated(cfg)
    finally:
        fl._LOCK.release()


def test_generator_only_sharing_keeps_each_discriminator_home(flower_env):
    cfg = fl.FederatedConfig(n_clients=2, rounds=2, local_steps=2, n_eval=0, share="generator")
    result = fl.run_federated(cfg)
    r2 = result.rounds[2]
    assert r2["reply_keys"][:2] == ["arrays:G", "arrays:G_ema"] and "arrays:D" not in r2["reply_keys"]
    g_bytes = sum(t.numel() * 4 for name in ("G", "G_ema") for t in result.model.modules()[name].state_dict().values()
                  if t.is_floating_point())
    assert g_bytes <= r2["bytes_up"] / 2 <= g_bytes * 1.01
    # the server's D was never trained: it is still the initial one every hospital started from
    initial = fl._build(cfg).D.state_dict()
    assert all(torch.equal(v, result.model.D.state_dict()[k]) for k, v in initial.items())
    assert r2["train/adam-steps"] == 4  # each hospital's D and its Adam state stayed in context.state


def test_secagg_plus_aggregate_matches_plain_fedavg_within_its_quantisation_bound(flower_env):
    weights = {}
    for run, secagg in (("secagg", True), ("plain", False), ("plain again", False)):
        cfg = fl.FederatedConfig(n_clients=3, rounds=1, local_steps=2, n_eval=0, secagg=secagg)
        result = fl.run_federated(cfg)
        assert result.rounds[-1]["replies"] == 3
        weights[run] = fl._shared_state(fl.shared_modules(result.model, "all"))
    # FedAvg averages the replies in hospital order: a re-run is bit-identical
    assert all(torch.equal(weights["plain"][k], weights["plain again"][k]) for k in weights["plain"])
    weights = {True: weights["secagg"], False: weights["plain"]}
    diff = max(float((weights[True][k] - weights[False][k]).abs().max()) for k in weights[False])
    bound = fl.secagg_error_bound(cfg)
    assert 0 < diff <= bound, (diff, bound)  # masked and quantised, yet the same average
    assert bound < 2e-5


def test_server_momentum_step():
    before = {"G.w": np.zeros(3, np.float32)}
    momentum: dict = {}
    step1 = fl.server_step(before, {"G.w": np.full(3, 2.5)}, momentum, lr=2.0, beta=0.5)
    assert np.allclose(step1["G.w"], 5.0) and step1["G.w"].dtype == np.float32
    # round 2: the average equals the weights sent (no new update), yet the momentum carries on
    step2 = fl.server_step(step1, {"G.w": step1["G.w"]}, momentum, lr=2.0, beta=0.5)
    assert np.allclose(step2["G.w"], 5.0 + 2.0 * 0.5 * 2.5)
    # plain FedAvg is lr 1, beta 0: the new weights are the average
    assert np.allclose(fl.server_step(before, {"G.w": np.full(3, 2.5)}, {}, 1.0, 0.0)["G.w"], 2.5)


@pytest.mark.skipif(os.name != "posix", reason="the recipe is a bash script")
def test_deployment_engine_recipe_runs_the_same_app_with_superlink_and_supernodes(flower_env):
    out = flower_env / "deployed"
    env = {**os.environ, "FLWR_HOME": str(flower_env / "flwr_deploy"), "LINK_PORT": "18731",
           "NODE_PORT": "19731", "RUN_TIMEOUT": "300"}
    proc = subprocess.run(["bash", str(REPO / "medgan_utils" / "flowerapp" / "deploy_local.sh"), "2",
                           f"rounds=1 local-steps=2 n-eval=200 out='{out}'"],
                          capture_output=True, text=True, env=env, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished:completed" in proc.stdout
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1]
    assert history["rounds"][1]["replies"] == 2 and history["config"]["n_clients"] == 2
    # nothing is left running
    left = subprocess.run(["pgrep", "-f", "(18731|19731|19732)( |$)"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
