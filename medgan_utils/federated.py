"""Federated GAN training across simulated hospitals, on Flower (chapter 08).

Hospitals cannot pool patient images, but they can pool *weights*. Each simulated hospital (a
Flower SuperNode running :data:`client_app`) holds one partition of the training split
(:func:`hospital_arrays`: IID or Dirichlet label skew, :func:`medgan_utils.data.partition_clients`),
trains the course's GAN on it with the one :func:`medgan_utils.train.fit` for
``local_steps`` steps, and replies with its weights; the server (:data:`server_app`) averages them
with Flower's ``FedAvg`` and scores the global generator every round with the evaluation
toolkit's same-distribution reference (:func:`medgan_utils.evaluation.fd_to_reference`).

Built on Flower's Message API (1.42: ``flwr.clientapp.ClientApp``, ``flwr.serverapp.ServerApp``,
``flwr.serverapp.strategy.FedAvg``, ``flwr.app.ArrayRecord``):

* one ``ArrayRecord`` per reply holds every shared network (``G.*``, ``D.*``, ``G_ema.*``: the
  module names of :meth:`medgan_utils.models.GAN.modules`); BatchNorm buffers are averaged too;
* ``share="generator"`` sends only the generator(s): each hospital keeps its discriminator in
  its ``context.state`` (a shared generator with discriminators that stay at their site, in the
  spirit of MD-GAN, Hardy et al. 2019; FedGAN, Rasouli et al. 2020, averages both);
* each hospital's Adam moments (and its local discriminator) persist across rounds in
  ``context.state``, which Flower keeps per node and run;
* a hospital whose training raises replies with an error; ``FedAvg`` averages the others
  (``min_clients`` below: the server stops if fewer reply), so one drop-out does not stop the
  federation;
* the deployment engine's entry points are ``medgan_utils.flower_apps:server_app`` and
  ``:client_app`` (that module builds them at import; this one imports flwr only when used);
* a reply carries model arrays and metrics only (:func:`reply_content_keys` lists them; a test
  checks that no image tensor leaves a hospital).

Run it in a notebook or script with :func:`run_federated` (Flower's simulation engine, Ray
backend), from a shell with ``medgan federated fedavg ...``, or across processes and machines on
Flower's deployment engine with the app in ``medgan_utils/flowerapp/`` (README, chapter 08).

What the server reads: the GAN's shape from MedMNIST's metadata (no image), and, to score the
global generator each round (``n_eval > 0``), the evaluation toolkit's validation split and its
training-split floor. In a real federation the coordinator scores on images it may hold (a
public or consented set), or sets ``n-eval=0``; no training image is needed to aggregate.

Introduced in ``notebooks/08_federated.ipynb``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Arrays, TensorLoader, label_histogram, partition_clients
from .data.ct import load_split
from .train import FitConfig, fit

__all__ = [
    "FederatedConfig", "FederatedResult", "curve", "export_federated", "gan_config",
    "hospital_arrays", "label_mix", "load_or_run", "make_apps", "pack", "reply_content_keys",
    "run_federated", "secagg_error_bound", "server_step", "shared_modules",
    "shipped_name", "train_baseline", "unpack",
]


@dataclass(frozen=True)
class FederatedConfig:
    """One federated run: the hospitals, the GAN, the schedule and what is shared.

    Attributes:
        dataset, size: the MedMNIST data set (its training split is partitioned) and image side.
        preset: the GAN preset every hospital trains (``"dcgan"``: chapter 02's model).
        ema: decay of the generator's weight average (chapter 02 ships its DCGAN with 0.999).
            Its warm-up, ``min(decay, (1 + t) / (10 + t))``, counts each hospital's own Adam steps
            t; while it lasts (t below ~9,000: all of this chapter's runs) the average spans about
            as many rounds in the federation as in the centralised run (about round / 9).
        n_clients: simulated hospitals (Flower SuperNodes).
        scheme: ``"iid"`` or ``"dirichlet"`` (label skew, concentration ``alpha``).
        alpha: Dirichlet concentration: 0.1 = each hospital sees mostly one class, 10 = near IID.
        partition_seed: the partition is a pure function of (labels, n_clients, scheme, alpha, seed).
        rounds: federated rounds.
        local_steps: ``fit`` steps (generator updates, one batch each) per hospital and round.
        batch_size: images per local step.
        share: ``"all"`` (FedAvg of G, D and the EMA generator) or ``"generator"`` (D stays home).
        seed: seeds the initial global model and each hospital's noise (per round and hospital).
        n_eval: fakes scored by the server after each round (0: no per-round scoring).
        min_clients: the server needs at least this many successful replies in a round, else it
            stops with an error (0: half the hospitals, rounded up).
        fail_client, fail_round: the hospital (partition id) whose training raises in that round,
            to show and test a drop-out (-1: none).
        threads: torch threads of each hospital's training process.
        secagg: aggregate with SecAgg+ (Bell et al. 2020; Flower's ``SecAggPlusWorkflow`` with
            ``secaggplus_mod``): the server learns only the weighted sum of the hospitals'
            weights, never one hospital's. Flower 1.42 runs it on its legacy strategy API only.
        server_lr, server_momentum: the server's own optimiser step on the averaged update
            (FedAvgM, Hsu et al. 2019; Reddi et al. 2021): the new global weights are
            ``w + server_lr * m`` with ``m = server_momentum * m + (average - w)``. 1.0 and 0.0 are
            plain FedAvg. Averaging K hospitals' updates moves the model about as far as *one*
            hospital's ``local_steps`` would; momentum 1 - 1/K lets it go about K times as far.
            Applied to G's and D's weights only; BatchNorm's running statistics and the EMA
            generator are plain averages.
        out: the server writes ``last.safetensors`` (global model, each round), ``history.json``
            there; a run restarted with the same ``out`` resumes from its last finished round.
    """

    dataset: str = "pneumoniamnist"
    size: int = 28
    preset: str = "dcgan"
    ema: float = 0.999
    n_clients: int = 4
    scheme: str = "dirichlet"
    alpha: float = 0.5
    partition_seed: int = 0
    rounds: int = 20
    local_steps: int = 20
    batch_size: int = 64
    share: str = "all"
    seed: int = 0
    n_eval: int = 1000
    min_clients: int = 0
    fail_client: int = -1
    fail_round: int = 0
    threads: int = 1
    secagg: bool = False
    server_lr: float = 1.0
    server_momentum: float = 0.0
    out: str = ""

    def __post_init__(self) -> None:
        if self.scheme not in ("iid", "dirichlet"):
            raise ValueError(f"scheme must be 'iid' or 'dirichlet', got {self.scheme!r}")
        if self.share not in ("all", "generator"):
            raise ValueError(f"share must be 'all' or 'generator', got {self.share!r}")
        if self.n_clients < 1 or self.rounds < 1 or self.local_steps < 1 or self.batch_size < 1:
            raise ValueError(f"n_clients, rounds, local_steps and batch_size must be >= 1: {self}")
        if self.secagg and (self.server_lr != 1.0 or self.server_momentum):
            raise ValueError("secagg runs plain FedAvg (Flower's legacy API): server_lr 1, server_momentum 0")
        if not 0 <= self.min_clients <= self.n_clients:
            raise ValueError(f"min_clients must be in [0, n_clients={self.n_clients}], got {self.min_clients}")

    @property
    def name(self) -> str:
        """``fedavg_iid``, ``fedavg_alpha0.5``, ``fedgen_alpha0.5`` (generator shared only)."""
        mix = "iid" if self.scheme == "iid" else f"alpha{self.alpha:g}"
        algo = ("fedavg" if self.share == "all" else "fedgen") + ("m" if self.server_momentum else "")
        return f"{algo}_{mix}{'_secagg' if self.secagg else ''}"

    @property
    def total_steps(self) -> int:
        """Local steps summed over hospitals and rounds: the centralised run's length at equal
        images seen (each step sees ``batch_size`` images)."""
        return self.rounds * self.local_steps * self.n_clients

    @property
    def required_replies(self) -> int:
        return self.min_clients or math.ceil(self.n_clients / 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_run_config(self) -> dict[str, Any]:
        """Flower run config (``[tool.flwr.app.config]`` keys use dashes)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> FederatedConfig:
        """From Flower's run config (dashed keys; unknown keys are an error)."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in types:
                raise ValueError(f"unknown federated setting {key!r}; known: {sorted(types)}")
            default = getattr(cls, name)
            if isinstance(default, bool) and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
                value = value.lower() in ("true", "1")
            kwargs[name] = type(default)(value)
        return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Hospitals and the model
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _partition(dataset: str, size: int, n_clients: int, scheme: str, alpha: float, seed: int
               ) -> tuple[Arrays, tuple[np.ndarray, ...]]:
    from .evaluation import generator_training_arrays

    train = generator_training_arrays(load_split(dataset, "train", size))
    labels = np.asarray(train.labels).reshape(-1)
    return train, tuple(partition_clients(labels, n_clients, scheme, alpha=alpha, seed=seed))


def hospital_arrays(config: FederatedConfig) -> list[Arrays]:
    """Each hospital's images and labels (a partition of the generator's training images)."""
    train, parts = _partition(config.dataset, config.size, config.n_clients, config.scheme,
                              config.alpha, config.partition_seed)
    return [dataclasses.replace(train, images=train.images[p], labels=train.labels[p]) for p in parts]


def label_mix(config: FederatedConfig) -> np.ndarray:
    """(n_clients, K) counts of each class per hospital: how non-IID the federation is."""
    train, parts = _partition(config.dataset, config.size, config.n_clients, config.scheme,
                              config.alpha, config.partition_seed)
    return label_histogram(np.asarray(train.labels).reshape(-1), list(parts))


def _info(dataset: str) -> dict[str, Any]:
    import medmnist

    if dataset not in medmnist.INFO:
        raise ValueError(f"federated training partitions a MedMNIST data set; {dataset!r} is not one")
    return medmnist.INFO[dataset]


def gan_config(config: FederatedConfig):
    """The GAN config every hospital, the server and the centralised baseline build (from the
    data set's metadata: the server needs no image to build it)."""
    from .registry import get_kind

    return get_kind("gan").config(config.preset, ema=config.ema, channels=int(_info(config.dataset)["n_channels"]),
                                  image_size=config.size, num_classes=0)


def _build(config: FederatedConfig):
    from .registry import get_kind

    # The same initial weights on the server and every hospital, without reseeding the caller.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return get_kind("gan").build(gan_config(config), "cpu")


def shared_modules(model: Any, share: str) -> dict[str, nn.Module]:
    """The networks a hospital sends: all of them, or the generator and its EMA copy."""
    mods = model.modules()
    return mods if share == "all" else {k: v for k, v in mods.items() if k.startswith("G")}


# BatchNorm's step counter: unused with a fixed momentum, and an integer that grows every step
# (SecAgg+ clips values beyond +-8 times max_weight / n): it stays at each hospital.
_LOCAL_ONLY = ("num_batches_tracked",)


def _shared_state(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().cpu().contiguous()
            for name, m in modules.items() for k, v in m.state_dict().items()
            if k.rsplit(".", 1)[-1] not in _LOCAL_ONLY}


def pack(modules: Mapping[str, nn.Module]):
    """One Flower ``ArrayRecord`` holding every tensor of ``modules`` as ``"<name>.<key>"``
    (BatchNorm's ``num_batches_tracked`` counters excepted)."""
    from flwr.app import ArrayRecord

    return ArrayRecord(_shared_state(modules))


def _load_shared(modules: Mapping[str, nn.Module], state: Mapping[str, torch.Tensor]) -> None:
    for name, m in modules.items():
        prefix = f"{name}."
        missing, unexpected = m.load_state_dict(
            {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
        missing = [k for k in missing if k.rsplit(".", 1)[-1] not in _LOCAL_ONLY]
        if missing or unexpected:
            raise ValueError(f"{name}: the record lacks {missing} and has unknown {unexpected}")
    extra = {k.split(".")[0] for k in state} - set(modules)
    if extra:
        raise ValueError(f"the record holds networks {sorted(extra)} this model does not share")


def unpack(modules: Mapping[str, nn.Module], record) -> None:
    """Load an ``ArrayRecord`` written by :func:`pack` into ``modules`` (every shared key)."""
    _load_shared(modules, record.to_torch_state_dict())


def _to_ndarrays(modules: Mapping[str, nn.Module]) -> tuple[list[str], list[np.ndarray]]:
    # SecAgg+ (legacy API) moves an ordered list of arrays: the key order is the state's.
    state = _shared_state(modules)
    return list(state), [v.numpy() for v in state.values()]


def _from_ndarrays(modules: Mapping[str, nn.Module], arrays: list[np.ndarray]) -> None:
    keys = list(_shared_state(modules))
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} arrays, got {len(arrays)}")
    _load_shared(modules, {k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in zip(keys, arrays)})


def _optimizer_record(model: Any):
    # Adam's moments and step counts as arrays, so they persist in the hospital's context.state.
    from flwr.app import ArrayRecord

    out = {}
    for name, opt in model.optimizers().items():
        for idx, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                out[f"{name}/{idx}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return ArrayRecord(out) if out else None


def _restore_optimizers(model: Any, record) -> None:
    tensors = record.to_torch_state_dict()
    for name, opt in model.optimizers().items():
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            o, idx, k = key.split("/")
            if o == name:
                state.setdefault(int(idx), {})[k] = value
        if state:
            sd["state"] = state
            opt.load_state_dict(sd)


def _adam_steps(model: Any) -> int:
    opt = model.optimizers().get("G")
    states = list(opt.state.values()) if opt is not None else []
    return int(states[0]["step"]) if states and "step" in states[0] else 0


def _flat_keys(content) -> list[str]:
    # "arrays:<name>" for every array of a reply, "metrics:<name>", "configs:<name>" for the rest.
    return [f"{kind}:{name}" for kind, names in reply_content_keys(content).items() for name in names]


def reply_content_keys(content) -> dict[str, list[str]]:
    """What a hospital's reply holds, by record type: ``{"arrays": [...names], "metrics": [...],
    "configs": [...]}`` (a test asserts only network tensors and numbers leave a hospital)."""
    out = {"arrays": [], "metrics": [], "configs": []}
    for rec in content.array_records.values():
        out["arrays"] += list(rec.keys())
    for rec in content.metric_records.values():
        out["metrics"] += list(rec.keys())
    for rec in content.config_records.values():
        out["configs"] += list(rec.keys())
    return out


# ----------------------------------------------------------------------------------------------
# The apps
# ----------------------------------------------------------------------------------------------


class ClientDropout(RuntimeError):
    """Raised by a hospital told to fail (``fail_client``/``fail_round``): a simulated drop-out."""


def _client_train(config: FederatedConfig, msg, context):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    pid = int(context.node_config["partition-id"])
    parts = int(context.node_config.get("num-partitions", config.n_clients))
    if parts != config.n_clients or not 0 <= pid < parts:
        raise ValueError(f"this SuperNode is partition {pid} of {parts}, but the run has n-clients="
                         f"{config.n_clients}: start one SuperNode per hospital with --node-config "
                         f"\"partition-id=<i> num-partitions={config.n_clients}\"")
    legacy = config.secagg  # SecAgg+ speaks the legacy FitIns/FitRes records
    if legacy:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

        fitins = recorddict_to_fitins(msg.content, keep_input=True)
        cfg_rec = fitins.config
    else:
        cfg_rec = msg.content["config"]
    rnd = int(cfg_rec["server-round"]) + int(cfg_rec.get("round-offset", 0))
    if pid == config.fail_client and rnd == config.fail_round:
        raise ClientDropout(f"hospital {pid} dropped out in round {rnd} (fail_client/fail_round)")
    torch.set_num_threads(max(1, config.threads))
    data = hospital_arrays(config)[pid]
    model = _build(config)
    shared = shared_modules(model, config.share)
    if legacy:
        _from_ndarrays(shared, parameters_to_ndarrays(fitins.parameters))
    else:
        unpack(shared, msg.content["arrays"])
    local = {k: v for k, v in model.modules().items() if k not in shared}
    if local and "local" in context.state:
        unpack(local, context.state["local"])
    if "optim" in context.state:
        _restore_optimizers(model, context.state["optim"])
    # Noise and batch order differ per hospital and round, and are repeatable.
    stream = int(np.random.SeedSequence([config.seed, pid, rnd]).generate_state(1)[0])
    torch.manual_seed(stream)
    loader = TensorLoader(data.images, data.labels, config.batch_size, "cpu", seed=stream)
    hist = fit(model, loader, FitConfig(steps=config.local_steps, log_every=config.local_steps,
                                        ckpt_every=0, resume=False), progress=False)
    if local:
        context.state["local"] = pack(local)
    opt = _optimizer_record(model)
    if opt is not None:
        context.state["optim"] = opt
    logs = {k: float(v) for k, v in hist.records[-1].items() if k not in ("step", "wall_s")}
    logs["adam-steps"] = float(_adam_steps(model))  # persists across rounds via context.state
    if legacy:
        fitres = FitRes(Status(Code.OK, "OK"), ndarrays_to_parameters(_to_ndarrays(shared)[1]), len(data),
                        {"train-seconds": float(hist.wall_s), **logs})
        return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)
    metrics = MetricRecord({"num-examples": len(data), "partition-id": pid, "train-seconds": float(hist.wall_s),
                            **logs})
    arrays: ArrayRecord = pack(shared)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@dataclass
class FederatedResult:
    """What a run produced: one record per round (the server's view) and the final model."""

    config: dict[str, Any]
    rounds: list[dict[str, float]] = field(default_factory=list)
    model: Any = None
    wall_s: float = 0.0
    stopped: str = ""

    def to_json(self, path: str | os.PathLike) -> None:
        from .utils import write_json

        write_json(path, {"config": self.config, "rounds": self.rounds, "wall_s": self.wall_s,
                          "stopped": self.stopped})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> FederatedResult:
        d = json.loads(Path(path).read_text())
        return cls(d["config"], d["rounds"], None, d.get("wall_s", 0.0), d.get("stopped", ""))


def _memory_mb() -> dict[str, float]:
    # The server process and everything it started (Ray's workers in a simulation).
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with ray
        return {}
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return {"server_rss_mb": me.memory_info().rss / 2**20, "total_rss_mb": total / 2**20}


def server_step(before: Mapping[str, np.ndarray], average: Mapping[str, np.ndarray],
                momentum: dict[str, np.ndarray], lr: float, beta: float) -> dict[str, np.ndarray]:
    """FedAvgM's server step: ``m = beta * m + (average - before)``, new weights ``before + lr * m``.

    ``momentum`` is updated in place (empty in the first round). Returns the new weights, in the
    dtype of ``before``."""
    out = {}
    for key, old in before.items():
        m = np.asarray(average[key], dtype=np.float64) - old
        if key in momentum:
            m = m + beta * momentum[key]
        momentum[key] = m
        out[key] = np.asarray(old + lr * m, dtype=old.dtype)
    return out


def _reason(text: str) -> str:
    # A failed hospital's error arrives as a Ray traceback; its own message follows "Message:".
    line = text.split("Message:")[-1].strip().splitlines()[0] if "Message:" in text else text.strip()[:300]
    return line.rstrip("'>").strip()


def _partition_of(msg) -> int:
    if msg.has_error():
        return -1
    rec = next(iter(msg.content.metric_records.values()), {})
    return int(rec.get("partition-id", -1))


def _make_strategy(config: FederatedConfig, log: dict[str, Any], weights: set[str]):
    from flwr.app import Array
    from flwr.serverapp.strategy import FedAvg

    momentum: dict[str, np.ndarray] = {}
    sent: dict[str, Any] = {}

    class RecordingFedAvg(FedAvg):
        """FedAvg that counts bytes and replies per round, refuses a round with too few, and
        (``server_lr``/``server_momentum``) takes a server step on the weights (``weights``)."""

        def configure_train(self, server_round, arrays, config_rec, grid):
            msgs = list(super().configure_train(server_round, arrays, config_rec, grid))
            log["bytes_down"] = arrays.count_bytes() * len(msgs)
            log["sampled"] = len(msgs)
            sent["arrays"] = arrays
            return msgs

        def aggregate_train(self, server_round, replies):
            # In a fixed order (by hospital), so that the float sums of the average, and with them
            # the whole run, do not depend on which hospital happened to reply first.
            replies = sorted(replies, key=lambda m: (m.has_error(), _partition_of(m)))
            ok = [m for m in replies if not m.has_error()]
            log["replies"], log["failures"] = len(ok), len(replies) - len(ok)
            log["bytes_up"] = sum(rec.count_bytes() for m in ok for rec in m.content.array_records.values())
            log["errors"] = [_reason(m.error.reason) for m in replies if m.has_error()]
            if len(ok) < config.required_replies:
                raise RuntimeError(f"round {server_round}: {len(ok)} of {len(replies)} hospitals replied, "
                                   f"fewer than min_clients={config.required_replies}; errors: {log['errors']}")
            # What left the hospitals: network tensors of exactly the model's names and shapes,
            # and numbers; reply_keys summarises them by network ("arrays:G") and metric name.
            log["reply_keys"] = sorted({k.split(".")[0] for m in ok for k in _flat_keys(m.content)})
            log["replies_model_only"] = float(all(
                {k: tuple(a.shape) for rec in m.content.array_records.values() for k, a in rec.items()}
                == {k: tuple(a.shape) for k, a in sent["arrays"].items()} for m in ok))
            arrays, metrics = super().aggregate_train(server_round, replies)
            if metrics is not None:  # the hospitals' losses and Adam step counts, averaged
                log.update({f"train/{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, int | float) and k != "partition-id"})
            if arrays is not None and (config.server_lr != 1.0 or config.server_momentum):
                before = sent["arrays"]
                stepped = server_step({k: before[k].numpy() for k in weights},
                                      {k: arrays[k].numpy() for k in weights}, momentum,
                                      config.server_lr, config.server_momentum)
                for key, value in stepped.items():
                    arrays[key] = Array(value)
            return arrays, metrics

    return RecordingFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                           min_train_nodes=config.n_clients, min_available_nodes=config.n_clients)


def _server_main(config: FederatedConfig, grid, context, sink: dict[str, Any] | None = None) -> FederatedResult:
    from flwr.app import ConfigRecord, MetricRecord

    from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from .evaluation import fd_to_reference

    t0 = time.perf_counter()
    model = _build(config)
    shared = shared_modules(model, config.share)
    out = Path(config.out) if config.out else None
    result = FederatedResult(config.to_dict())
    start = 0
    last = out / "last.safetensors" if out else None
    if last is not None and last.exists():
        meta = read_metadata(last)
        differ = sorted(k for k, v in _identity(config).items() if meta.get("federated", {}).get(k) != v)
        if differ:
            raise ValueError(f"{last} belongs to another federated run ({', '.join(differ)} differ); "
                             "choose another out folder, or delete it to start over")
        load_checkpoint(last, model.modules(), strict=False)
        start = int(meta["round"])
        if (out / "history.json").exists():
            prev = FederatedResult.from_json(out / "history.json")
            result.rounds = [r for r in prev.rounds if r["round"] <= start]
            t0 -= prev.wall_s
        print(f"resuming {config.name} from round {start} of {config.rounds} ({last}); the hospitals' Adam "
              "state, EMA warm-up and local discriminators and the server's momentum start afresh", flush=True)
    if sink is not None:
        sink["result"] = result
    round_log: dict[str, Any] = {}
    gen = config.seed

    def score(server_round: int) -> dict[str, Any] | None:
        # The shared networks hold the global weights of this round: score, log, checkpoint.
        rnd = start + server_round
        if server_round == 0 and start > 0:
            return None
        rec: dict[str, Any] = {"round": rnd, "wall_s": time.perf_counter() - t0}
        if config.n_eval:
            # One BLAS thread: this runs in the ServerApp's thread while Ray starts and feeds
            # worker processes, and a multi-threaded OpenBLAS once spun forever in FD's sqrtm there.
            from threadpoolctl import threadpool_limits

            with torch.no_grad(), threadpool_limits(1):
                fakes = model.sample(config.n_eval, generator=torch.Generator().manual_seed(gen))
                rec.update(fd_to_reference(fakes, config.dataset, config.size, with_prdc=True))
        if server_round > 0:
            rec.update({k: v for k, v in round_log.items() if k not in ("errors", "reply_keys")})
            for key in ("errors", "reply_keys"):
                if round_log.get(key):
                    rec[key] = list(round_log[key])
        rec.update(_memory_mb())
        result.rounds.append(rec)
        result.wall_s = rec["wall_s"]
        if out is not None and server_round > 0:
            save_checkpoint(last, model.modules(), metadata={
                "federated": config.to_dict(), "round": rnd, "kind": "gan",
                "config": model.config.to_dict()})
            result.to_json(out / "history.json")
        fd = f"FD {rec['fd']:.2f} (x{rec['fd_ratio']:.1f} the floor)" if "fd" in rec else ""
        fails = f", {rec.get('failures', 0)} failed" if rec.get("failures") else ""
        replied = f", {rec['replies']} hospitals replied" if "replies" in rec else ""
        print(f"[{config.name}] round {rnd}/{config.rounds}: {fd}{replied}{fails}, {rec['wall_s']:.0f} s",
              flush=True)
        return {k: float(v) for k, v in rec.items() if isinstance(v, int | float)}

    if start < config.rounds and config.secagg:
        _run_secagg(config, grid, context, shared, round_log, score, start)
    elif start < config.rounds:
        def evaluate(server_round: int, arrays) -> MetricRecord | None:
            unpack(shared, arrays)
            rec = score(server_round)
            return None if rec is None else MetricRecord(rec)

        # The server step moves trained weights only: not BatchNorm statistics, not the EMA copy.
        weights = {f"{name}.{k}" for name, m in shared.items() if name != "G_ema" for k, _ in m.named_parameters()}
        strategy = _make_strategy(config, round_log, weights)
        strategy.start(grid=grid, initial_arrays=pack(shared), num_rounds=config.rounds - start,
                       train_config=ConfigRecord({"round-offset": start}), evaluate_fn=evaluate)
    result.model = model
    result.stopped = "done"
    result.wall_s = time.perf_counter() - t0
    if out is not None:
        result.to_json(out / "history.json")
    return result


def _run_secagg(config: FederatedConfig, grid, context, shared: Mapping[str, nn.Module],
                round_log: dict[str, Any], score, start: int) -> None:
    """The same rounds through SecAgg+ (Flower's legacy strategy API: ``LegacyContext``,
    ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``, legacy ``FedAvg``).

    SecAgg+ multiplies each hospital's weights by ``n / max_weight`` (n: its images), clips them
    to +-``clipping_range`` (8), quantises them to ``quantization_range`` (2**22) levels and masks
    them; the server unmasks only the sum. ``max_weight`` is the size of the whole training split
    (no hospital holds more, and the server needs no hospital's size), so no weight up to +-8 is
    clipped and the error of the average is at most
    n_clients * (2 * 8 / 2**22) * max_weight / sum(n) per value and round (:func:`secagg_error_bound`).
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class RecordingLegacyFedAvg(LegacyFedAvg):
        def aggregate_fit(self, server_round, results, failures):
            # Flower 1.42's SecAgg+ stage lists an error reply twice in ``failures``: count hospitals.
            round_log.update(replies=len(results), failures=config.n_clients - len(results),
                             sampled=config.n_clients, errors=sorted({str(f) for f in failures}))
            if len(results) < config.required_replies:
                raise RuntimeError(f"round {server_round}: {len(results)} hospitals replied, fewer than "
                                   f"min_clients={config.required_replies}")
            aggregated.add(server_round)
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:  # SecAgg+ dequantises to float64; the model is float32
                params = ndarrays_to_parameters([np.asarray(a, dtype=np.float32)
                                                 for a in parameters_to_ndarrays(params)])
            return params, metrics

    aggregated: set[int] = set()

    def evaluate_fn(server_round: int, parameters, _config):
        if server_round > 0 and server_round not in aggregated:
            # SecAgg+ halted this round and the workflow would carry on with the old weights.
            raise RuntimeError(f"SecAgg+ did not aggregate round {start + server_round}: see the Flower log "
                               f"above (errors: {round_log.get('errors')})")
        _from_ndarrays(shared, parameters)
        rec = score(server_round)
        return (0.0, rec) if rec is not None else None

    _, arrays = _to_ndarrays(shared)
    round_log["model_bytes"] = int(sum(a.nbytes for a in arrays))
    strategy = RecordingLegacyFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=config.n_clients,
        min_available_clients=config.n_clients, initial_parameters=ndarrays_to_parameters(arrays),
        evaluate_fn=evaluate_fn, on_fit_config_fn=lambda rnd: {"server-round": rnd, "round-offset": start})
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.rounds - start),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=0.5, max_weight=float(_max_weight(config))))
    workflow(grid, legacy)
    done = [r for r in range(1, config.rounds - start + 1) if r in aggregated]
    if len(done) != config.rounds - start:
        # The workflow logs "Secure aggregation halted" and carries on with the old weights.
        raise RuntimeError(f"SecAgg+ aggregated {len(done)} of {config.rounds - start} rounds: see the "
                           f"Flower log above (errors: {round_log.get('errors')})")


def _max_weight(config: FederatedConfig) -> int:
    # No hospital holds more than the whole training split (MedMNIST's metadata: the server does
    # not need the hospitals' sizes, which only their masked replies carry).
    return int(_info(config.dataset)["n_samples"]["train"])


def secagg_error_bound(config: FederatedConfig) -> float:
    """Largest difference per value between SecAgg+'s average and exact FedAvg in one round:
    ``n_clients * (2 * 8 / 2**22) * max_weight / sum(n)``."""
    sizes = [len(h) for h in hospital_arrays(config)]
    return config.n_clients * (2 * 8.0 / 2**22) * _max_weight(config) / sum(sizes)


# Settings that may change when a run is resumed: more rounds, other logging or threads.
_RESUMABLE = ("rounds", "n_eval", "threads", "out", "fail_client", "fail_round", "min_clients")


def _identity(config: FederatedConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}


def make_apps(config: FederatedConfig | None = None):
    """A ``(ServerApp, ClientApp)`` pair. With ``config`` (simulation) both use it; without (the
    deployment engine's ``medgan_utils.flower_apps``) they read Flower's run config."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    sink: dict[str, Any] = {}

    def cfg(context) -> FederatedConfig:
        return config if config is not None else FederatedConfig.from_run_config(context.run_config)

    def secagg_when_asked(msg, context, call_next):
        # SecAgg+'s client side (key agreement, masking) wraps training only when the run asks.
        from flwr.client.mod import secaggplus_mod

        return (secaggplus_mod if cfg(context).secagg else lambda m, c, nxt: nxt(m, c))(msg, context, call_next)

    client, server = ClientApp(mods=[secagg_when_asked]), ServerApp()

    @client.train()
    def train(msg, context):
        return _client_train(cfg(context), msg, context)

    @server.main()
    def main(grid, context) -> None:
        _server_main(cfg(context), grid, context, sink)

    server.medgan_sink = sink  # where run_federated finds the result of an in-process run
    return server, client


_LOCK = threading.Lock()


def run_federated(config: FederatedConfig, *, quiet: bool = True) -> FederatedResult:
    """Run one federation on Flower's simulation engine (Ray backend) and return its result.

    Each hospital is a virtual SuperNode with one CPU core, so as many hospitals train at once
    as the machine has cores (two here). One simulation runs per process at a time: a second call
    while one runs raises (sequential runs are fine; each starts and stops its own Ray cluster).
    A resumed run (same ``out``) restarts the hospitals' state (Adam moments, the EMA's warm-up,
    local discriminators) and the server's momentum: only the global weights are checkpointed.

    Raises:
        RuntimeError: another simulation is running in this process, or the server stopped
            (too few hospitals replied; the message names their errors).
    """
    if not _LOCK.acquire(blocking=False):
        raise RuntimeError("a Flower simulation is already running in this Python process (kernel); "
                           "wait for it to finish, or run the next one in another process "
                           "(medgan federated ...)")
    try:
        from flwr.simulation import run_simulation

        _quiet_flower(quiet)
        server, client = make_apps(config)
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                                 "log_to_driver": not quiet}}
        t0 = time.perf_counter()
        run_simulation(server_app=server, client_app=client, num_supernodes=config.n_clients,
                       backend_config=backend)
        result = server.medgan_sink.get("result")
        if result is None or result.stopped != "done":
            raise RuntimeError(f"the federated run {config.name} did not finish: see the Flower log above")
        result.wall_s = result.wall_s or time.perf_counter() - t0
        return result
    finally:
        _LOCK.release()


def _quiet_flower(quiet: bool) -> None:
    import logging
    import warnings

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs: silences Ray's notice
    # Quiet: Flower's own log stays silent (its deprecation notice for run_simulation, and a full
    # Ray traceback for every hospital that drops out); what matters reaches the round records
    # (replies, failures, each failure's reason) and this module's one line per round.
    logging.getLogger("flwr").setLevel(logging.CRITICAL if quiet else logging.INFO)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")


def export_federated(result: FederatedResult, path: str | os.PathLike) -> Path:
    """Ship the global generator like any GAN (``pretrained.load`` serves it) + its round log."""
    from .pretrained import export
    from .train import History

    hist = History(records=[{"step": r["round"], **{k: v for k, v in r.items()
                                                    if isinstance(v, int | float) and k != "round"}}
                            for r in result.rounds], stopped=result.stopped,
                   step=result.rounds[-1]["round"] if result.rounds else 0, wall_s=result.wall_s)
    cfg = FederatedConfig(**result.config)
    return export(result.model, path, hist, federated=result.config, dataset=cfg.dataset,
                  size=cfg.size, steps=cfg.total_steps, wall_s=result.wall_s)



# ----------------------------------------------------------------------------------------------
# The yardsticks: the same GAN trained centrally, and by each hospital alone
# ----------------------------------------------------------------------------------------------


def train_baseline(config: FederatedConfig, arm: str, hospital: int = 0, *,
                   out: str | os.PathLike | None = None, progress: bool = True):
    """Train the federation's GAN without federation, at its images seen (``total_steps`` steps
    of ``batch_size``), scoring ``fd_to_reference`` once per federated round's worth of images.

    Args:
        arm: ``"centralised"`` (all hospitals' images pooled: what federation tries to match) or
            ``"local"`` (hospital ``hospital`` alone: what a hospital gets without joining).

    Returns:
        ``(model, history)``; the history's ``fd``/``fd_ratio`` entries line up with the
        federated rounds (step ``r * local_steps * n_clients`` = round ``r``).
    """
    from .evaluation import fd_to_reference
    from .pretrained import train_model

    if arm == "centralised":
        data, _ = _partition(config.dataset, config.size, config.n_clients, config.scheme,
                             config.alpha, config.partition_seed)
    elif arm == "local":
        if not 0 <= hospital < config.n_clients:
            raise ValueError(f"hospital must be in [0, {config.n_clients}), got {hospital}")
        data = hospital_arrays(config)[hospital]
    else:
        raise ValueError(f"arm must be 'centralised' or 'local', got {arm!r}")
    every = config.local_steps * config.n_clients

    def score(step: int, model: Any, logs: Mapping[str, float]) -> dict[str, float] | None:
        if not config.n_eval:
            return None
        fakes = model.sample(config.n_eval, generator=torch.Generator().manual_seed(config.seed))
        return fd_to_reference(fakes, config.dataset, config.size, with_prdc=True)

    facts = {"federated": config.to_dict(), "arm": arm, "hospital": hospital if arm == "local" else -1,
             "dataset": config.dataset, "size": config.size, "seed": config.seed,
             "batch_size": config.batch_size, "n_train": len(data)}
    return train_model(gan_config(config), data,
                       FitConfig(steps=config.total_steps, log_every=every, ckpt_every=every * 5),
                       seed=config.seed, batch_size=config.batch_size, out_dir=out,
                       callbacks=[(every, score)], facts=facts, progress=progress)


# ----------------------------------------------------------------------------------------------
# Shipped results: load-else-train for every arm of the chapter's study
# ----------------------------------------------------------------------------------------------


def shipped_name(config: FederatedConfig, arm: str = "fedavg", hospital: int = 0) -> str:
    """``fed_<name>`` (federated), ``fed_centralised``, ``fed_local<h>_<mix>`` (hospital h alone)."""
    if arm == "fedavg":  # a longer run than the chapter's 20 rounds says so: fed_fedavg_alpha0.5_r80
        longer = f"_r{config.rounds}" if config.rounds != FederatedConfig.rounds else ""
        return f"fed_{config.name}{longer}"
    if arm == "centralised":
        return "fed_centralised"
    mix = "iid" if config.scheme == "iid" else f"alpha{config.alpha:g}"
    return f"fed_local{hospital}_{mix}"


def load_or_run(config: FederatedConfig, arm: str = "fedavg", hospital: int = 0, *,
                train_from_scratch: bool = False, quiet: bool = True):
    """``checkpoints/<shipped_name>.safetensors`` and its round log, or run that arm now.

    Returns:
        ``(model, history, source)``: the GAN (its EMA generator holds the shipped weights), a
        :class:`~medgan_utils.train.History` whose ``step`` is the round for a federation and the
        training step for a baseline (:func:`curve` puts both on the rounds axis), and
        ``"shipped"`` or ``"trained"``.
    """
    from .pretrained import export, history_path, load
    from .train import History
    from .utils import CHECKPOINT_DIR, RUNS_DIR

    name = shipped_name(config, arm, hospital)
    shipped = CHECKPOINT_DIR / f"{name}.safetensors"
    if shipped.exists() and not train_from_scratch:
        model, meta = load(shipped)
        differ = _differs(meta.get("federated", {}), config, arm)
        if differ:
            raise ValueError(f"{shipped} was trained with other settings ({', '.join(differ)} differ from "
                             "this config): pass train_from_scratch=True to train this one (into runs/federated/)")
        hp = history_path(shipped)
        return model, (History.from_json(hp) if hp.exists() else History()), "shipped"
    out = RUNS_DIR / "federated" / name
    path = out / f"{name}.safetensors"
    if arm == "fedavg":
        result = run_federated(dataclasses.replace(config, out=str(out)), quiet=quiet)
        export_federated(result, path)
        model = result.model
    else:
        model, hist = train_baseline(config, arm, hospital, out=out, progress=not quiet)
        export(model, path, hist, steps=hist.step, wall_s=round(hist.wall_s, 1), federated=config.to_dict(),
               arm=arm, hospital=hospital if arm == "local" else -1, dataset=config.dataset, size=config.size)
    return model, History.from_json(history_path(path)), "trained"


def _differs(saved: Mapping[str, Any], config: FederatedConfig, arm: str) -> list[str]:
    """Settings of ``config`` that the run recorded in ``saved`` (a header's ``federated``) did not
    use; the centralised arm pools every hospital, so the partition does not matter to it."""
    ignore = set(_RESUMABLE) - {"rounds"}
    if arm == "centralised":
        ignore |= {"scheme", "alpha", "partition_seed", "share", "secagg", "server_lr", "server_momentum"}
    elif arm == "local":
        ignore |= {"share", "secagg", "server_lr", "server_momentum"}
    return sorted(k for k, v in config.to_dict().items() if k not in ignore and saved.get(k) != v)


def curve(history, config: FederatedConfig, key: str = "fd_ratio") -> tuple[np.ndarray, np.ndarray]:
    """``(rounds, values)`` of a logged number, on the federation's rounds axis (equal images
    seen) for federated and baseline histories alike."""
    fed = any("replies" in r or "bytes_down" in r for r in history.records)
    per_round = 1 if fed else config.local_steps * config.n_clients
    pts = [(r["step"] / per_round, r[key]) for r in history.records if key in r]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
