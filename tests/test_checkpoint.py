"""Checkpoints: exact round trips, atomic writes, and refusal of corrupt or code-carrying files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from medgan_utils import checkpoint as ck
from medgan_utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    read_metadata,
    save_checkpoint,
    state_path,
)


def _nets(seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    return {"G": nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)),
            "D": nn.Linear(3, 1)}


def _trained_state(nets: dict[str, nn.Module]) -> tuple[torch.optim.Adam, dict]:
    opt = torch.optim.Adam(nets["G"].parameters(), lr=1e-3)
    nets["G"](torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    state = {"step": 7, "optimizers": {"G": opt.state_dict()}, "rng_cpu": torch.get_rng_state(),
             "data": {"epoch": 1, "position": 2, "seed": 0}}
    return opt, state


def _assert_same_modules(a: dict[str, nn.Module], b: dict[str, nn.Module]) -> None:
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs"


def test_round_trip_modules_metadata_and_trainer_state(tmp_path):
    nets = _nets(0)
    opt, state = _trained_state(nets)
    meta = {"gan": {"arch": "dcgan", "width": 8}, "dataset": "breastmnist", "step": 7}
    path = save_checkpoint(tmp_path / "run" / "last.safetensors", nets, metadata=meta,
                           trainer_state=state)
    assert path.is_file() and state_path(path) == tmp_path / "run" / "last.state.pt"
    assert state_path(path).is_file()

    fresh = _nets(1)
    with pytest.raises(AssertionError):
        _assert_same_modules(nets, fresh)
    loaded = load_checkpoint(path, fresh, with_state=True)
    _assert_same_modules(nets, fresh)  # parameters and BatchNorm buffers
    assert loaded["metadata"] == meta
    assert read_metadata(path) == meta
    assert set(loaded["tensors"]) == {f"G.{k}" for k in nets["G"].state_dict()} | {
        f"D.{k}" for k in nets["D"].state_dict()}

    # The optimizer state survives exactly and is readable without unpickling code.
    raw = torch.load(state_path(path), weights_only=True)
    for got in (raw, loaded["state"]):
        assert got["step"] == 7 and got["data"] == state["data"]
        assert torch.equal(got["rng_cpu"], state["rng_cpu"])
    opt2 = torch.optim.Adam(fresh["G"].parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["state"]["optimizers"]["G"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) == 6  # 2 Linear + BatchNorm
    for i in s1:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[i][k], s2[i][k])


def test_save_rejects_wrong_suffix(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(tmp_path / "model.pt", _nets(0))


def test_write_failing_midway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    nets = _nets(0)
    _, state = _trained_state(nets)
    path = save_checkpoint(tmp_path / "last.safetensors", nets, metadata={"step": 7},
                           trainer_state=state)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # partial data, then the "disk" fails
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "save_file", broken_save_file)
    newer = _nets(2)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, newer, metadata={"step": 9}, trainer_state={**state, "step": 9})

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "no temp files left behind and both old files untouched"
    monkeypatch.undo()
    fresh = _nets(1)
    loaded = load_checkpoint(path, fresh, with_state=True)
    assert loaded["metadata"]["step"] == 7 and loaded["state"]["step"] == 7
    _assert_same_modules(nets, fresh)


def test_state_write_failing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    nets = _nets(0)
    _, state = _trained_state(nets)
    path = save_checkpoint(tmp_path / "last.safetensors", nets, metadata={"step": 7},
                           trainer_state=state)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in a notebook while saving

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _nets(2), metadata={"step": 9}, trainer_state={**state, "step": 9})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_truncated_checkpoint_raises_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.safetensors", _nets(0), metadata={"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, _nets(1))
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    with pytest.raises(CheckpointError):
        read_metadata(path)


def test_truncated_state_raises_clear_error(tmp_path):
    nets = _nets(0)
    _, state = _trained_state(nets)
    path = save_checkpoint(tmp_path / "last.safetensors", nets, metadata={"step": 7},
                           trainer_state=state)
    sp = state_path(path)
    sp.write_bytes(sp.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, _nets(1), with_state=True)


def test_missing_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    path = save_checkpoint(tmp_path / "w.safetensors", _nets(0))
    with pytest.raises(CheckpointError, match="needed to resume"):
        load_checkpoint(path, with_state=True)


# --- malicious pickles --------------------------------------------------------------------------


def _make_marker(path: str) -> str:
    Path(path).write_text("this ran while unpickling")
    return "pwned"


class Exploit:
    """Unpickling this object calls ``_make_marker(marker)``: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_make_marker, (self.marker,))


def test_exploit_fixture_is_live(tmp_path):
    """Control: plain unpickling really does run the payload, so the refusals below mean it."""
    marker = tmp_path / "marker"
    blob = pickle.dumps({"state": Exploit(marker)})
    assert pickle.loads(blob) == {"state": "pwned"}
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle.dump", "torch.save"])
@pytest.mark.parametrize("target", ["weights", "state"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer, target):
    marker = tmp_path / "marker"
    payload = {"G.weight": torch.zeros(2), "step": 1, "evil": Exploit(marker)}
    name = "last.safetensors" if target == "weights" else "last.state.pt"
    path = tmp_path / name
    if writer == "pickle.dump":
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    else:
        torch.save(payload, path)

    with pytest.raises(CheckpointError) as err:
        if target == "weights":
            load_checkpoint(path, {"G": nn.Linear(2, 1)})
        else:
            load_state(path)
    assert str(path) in str(err.value)
    if target == "weights":
        assert "pickle" in str(err.value)
    else:
        assert "refused" in str(err.value) or "corrupt" in str(err.value)
    assert not marker.exists(), "the payload ran"


def test_malicious_state_beside_good_weights_is_refused(tmp_path):
    nets = _nets(0)
    path = save_checkpoint(tmp_path / "last.safetensors", nets, metadata={"step": 1})
    marker = tmp_path / "marker"
    torch.save({"step": 1, "optimizers": Exploit(marker)}, state_path(path))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, _nets(1), with_state=True)
    assert not marker.exists()


# --- mismatches ---------------------------------------------------------------------------------


def test_mismatched_weights_raise(tmp_path):
    path = save_checkpoint(tmp_path / "w.safetensors", _nets(0))
    wrong_shape = {"G": nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))}
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, wrong_shape)
    extra_layer = {"D": nn.Sequential(nn.Linear(3, 1))}  # keys "0.weight" vs "weight"
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, extra_layer)
    with pytest.raises(CheckpointError, match="no weights for module 'G_ema'"):
        load_checkpoint(path, {"G_ema": nn.Linear(4, 8)})


def test_state_and_weights_from_different_steps_are_detected(tmp_path):
    nets = _nets(0)
    _, state = _trained_state(nets)
    path = save_checkpoint(tmp_path / "last.safetensors", nets, metadata={"step": 7},
                           trainer_state=state)
    torch.save({**state, "step": 9}, state_path(path))
    with pytest.raises(CheckpointError, match="disagree"):
        load_checkpoint(path, _nets(1), with_state=True)


def test_metadata_round_trip(tmp_path):
    meta = {"gan": {"lr_g": 2e-4, "diffaugment": "", "ema": 0.999}, "dataset": "pneumoniamnist",
            "size": 28, "labels": [0, 1], "nested": {"a": None, "b": True}, "path": tmp_path}
    path = save_checkpoint(tmp_path / "w.safetensors", {"D": nn.Linear(2, 1)}, metadata=meta)
    got = read_metadata(path)
    assert got == {**meta, "path": str(tmp_path)}  # non-JSON values are stored as strings
    assert read_metadata(save_checkpoint(tmp_path / "e.safetensors", {"D": nn.Linear(2, 1)})) == {}
