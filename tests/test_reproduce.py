"""``medgan reproduce`` (medgan_utils.reproduce): the tolerance rules, the comparison table on
synthetic results files, the exit code, quick references, and that a run changes nothing under
results/ or notebooks/. The run over every notebook is in test_notebooks.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from medgan_utils import reproduce as rp
from medgan_utils.cli import main
from medgan_utils.reproduce import (
    DATA,
    EXACT,
    FD,
    TIMING,
    Tolerance,
    compare,
    format_table,
    tolerance_for,
)

ROOT = Path(__file__).resolve().parent.parent


def record(metrics: dict, device: str = "cpu", params: dict | None = None) -> dict:
    return {"notebook": "nb", "params": params or {"seed": 0, "quick": True}, "device": device,
            "wall_s": 1.0, "metrics": metrics}


def by_metric(rows) -> dict:
    return {r.metric: r for r in rows}


def test_rules_exact_fd_timing_and_data():
    assert tolerance_for("live/0.1/real+classic/auc_mean") is EXACT
    for name in ("dcgan/fd", "gan/floor_fd", "per_class/malignant/fd_ratio", "small_data/ema/fd_ratio_mean"):
        assert tolerance_for(name) is FD, name
    for name in ("wall_s", "live/0.1/real/train_seconds", "pil_images_per_s", "tensor_path_speedup",
                 "peak_memory_mb", "speedup", "ct/srgan/ms_per_image", "bicubic_ms_per_slice"):
        assert tolerance_for(name) is TIMING, name
    for name in ("n_train", "gans/0.1/n_real", "frac_class0_train", "mean_intensity_class1"):
        assert tolerance_for(name) is DATA, name
    # Exact on the reference's device: equal, or off in the 10th significant digit at most.
    assert EXACT.ok(0.7397660818713451, 0.7397660818713451)
    assert not EXACT.ok(0.740, 0.641) and not EXACT.ok(1.0, 1.0 + 1e-7) and not EXACT.ok(0.0, 1e-12)
    # An FD's matrix square root: 4.5e-9 between two installs passes, a real change does not.
    assert FD.ok(8.271779669517532, 8.27177970643774) and not EXACT.ok(8.271779669517532, 8.27177970643774)
    assert not FD.ok(1.0983, 1.0993)
    assert TIMING.ok(3970.0, 283254.0) and TIMING.ok(1.0, 0.0)
    assert (EXACT.describe(), TIMING.describe()) == ("rel 1e-09", "timing (not compared)")


def test_another_device_gets_the_looser_rule_except_for_data_facts():
    assert EXACT.ok(1.0, 1.04, same_device=False) and not EXACT.ok(1.0, 1.06, same_device=False)
    assert EXACT.ok(0.0, 5e-4, same_device=False) and not EXACT.ok(0.0, 5e-3, same_device=False)
    assert not DATA.ok(4708.0, 4709.0, same_device=False)
    assert EXACT.describe(same_device=False) == "other device: rel 0.05 + abs 0.001"
    plain = Tolerance("plain", abs=0.1)
    assert plain.bounds(False) == plain.bounds(True) == (0.0, 0.1)


def test_another_cpu_instruction_set_is_another_device():
    ref = record({"auc": 0.74}) | {"machine": {"cpu_capability": "AVX512"}}
    avx2 = compare("nb", ref, record({"auc": 0.745}) | {"machine": {"cpu_capability": "AVX2"}})
    assert avx2[0].ok and avx2[0].tolerance.startswith("other device")
    same = compare("nb", ref, record({"auc": 0.745}) | {"machine": {"cpu_capability": "AVX512"}})
    assert not same[0].ok
    assert not compare("nb", record({"auc": 0.74}), record({"auc": 0.745}) | {"machine": rp.machine()})[0].ok
    assert rp.machine()["cpu_capability"]  # e.g. "AVX2", "AVX512", "DEFAULT"


def test_first_matching_rule_wins_and_a_catch_all_is_required():
    rules = (("*auc*", Tolerance("loose", abs=0.1)), ("*", EXACT))
    assert tolerance_for("live/auc_mean", rules).name == "loose"
    assert tolerance_for("fd", rules) is EXACT
    with pytest.raises(KeyError, match="catch-all|'\\*' rule"):
        tolerance_for("fd", rules[:1])


def test_table_fails_a_changed_or_missing_number_but_not_a_timing_or_a_new_metric():
    ref = record({"fd": 1.0, "recall": 0.5, "n_train": 10.0, "fit/wall_s": 3.0, "gone": 1.0})
    now = record({"fd": 1.0, "recall": 0.51, "n_train": 10.0, "fit/wall_s": 30.0, "added": 2.0})
    rows = by_metric(compare("nb", ref, now))
    assert set(rows) == {"fd", "recall", "n_train", "fit/wall_s", "gone", "added"}
    assert (rows["fd"].ok, rows["fd"].status) == (True, "same")
    assert (rows["recall"].ok, rows["recall"].status) == (False, "changed")
    assert (rows["fit/wall_s"].ok, rows["fit/wall_s"].status) == (True, "timing")
    assert (rows["gone"].ok, rows["gone"].status, rows["gone"].now) == (False, "missing", None)
    assert (rows["added"].ok, rows["added"].status, rows["added"].reference) == (True, "new", None)
    text = format_table(rows.values()).splitlines()
    assert text[0].split() == ["notebook", "metric", "reference", "now", "tolerance", "ok"]
    recall = next(line for line in text if " recall " in line)
    assert "0.5" in recall and "0.51" in recall and "FAIL (changed)" in recall
    assert next(line for line in text if "fit/wall_s" in line).endswith("ok")
    assert next(line for line in text if " added " in line).endswith("new")


def test_table_on_another_device_and_with_other_parameters():
    ref = record({"fd": 1.0, "n_train": 10.0})
    moved = compare("nb", ref, record({"fd": 1.03, "n_train": 10.0}, device="cuda"))
    assert all(r.ok for r in moved) and by_metric(moved)["fd"].status == "within"
    assert by_metric(moved)["fd"].tolerance.startswith("other device")
    assert not by_metric(compare("nb", ref, record({"fd": 1.03, "n_train": 10.0})))["fd"].ok
    other = by_metric(compare("nb", ref, record({"fd": 1.0, "n_train": 10.0}, params={"seed": 1, "quick": True})))
    assert not other["(params)"].ok and json.loads(other["(params)"].reference) == {"seed": 0}
    assert other["fd"].ok


def test_a_missing_results_file_or_reference_fails():
    (row,) = compare("nb", record({"fd": 1.0}), None)
    assert (row.ok, row.status) == (False, "missing")
    (row,) = compare("nb", None, record({"fd": 1.0}))
    assert (row.ok, row.status) == (False, "no reference")


def fake_papermill(monkeypatch, value: float, seen: list, fail: bool = False):
    """Stand in for papermill: write the results file a notebook would, where the kernel's
    environment says, and record that environment."""

    def execute_notebook(input_path, output_path, parameters, cwd, **kwargs):
        seen.append({k: os.environ.get(k) for k in ("MEDGAN_RESULTS_DIR", "MEDGAN_QUICK", "OMP_NUM_THREADS")}
                    | {"parameters": parameters, "cwd": cwd})
        Path(output_path).write_text("{}")
        if fail:
            raise RuntimeError("a cell raised")
        out = Path(os.environ["MEDGAN_RESULTS_DIR"]) / f"{Path(input_path).stem}.json"
        out.write_text(json.dumps(record({"fd": value, "wall_s_x": value}, params=parameters)))

    monkeypatch.setattr("papermill.execute_notebook", execute_notebook)


def test_exit_code_environment_and_quick_references(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    refs = tmp_path / "quick_refs"
    monkeypatch.setattr(rp, "QUICK_REFERENCE_DIR", refs)
    monkeypatch.setenv("MEDGAN_QUICK", "1")  # as the test suite sets it: a default run must say 0
    seen: list = []
    fake_papermill(monkeypatch, 1.0, seen)
    assert main(["reproduce", "00", "--quick", "--out", str(tmp_path / "a"), "--update-quick-references"]) == 0
    assert json.loads((refs / "00_getting_started.json").read_text())["metrics"]["fd"] == 1.0
    assert seen[0] == {"MEDGAN_RESULTS_DIR": str(tmp_path / "a" / "results"), "MEDGAN_QUICK": "1",
                       "OMP_NUM_THREADS": "1", "parameters": {"quick": True},
                       "cwd": str(ROOT / "notebooks")}
    assert os.environ["MEDGAN_QUICK"] == "1" and "MEDGAN_RESULTS_DIR" not in os.environ  # restored

    assert main(["reproduce", "00", "--quick", "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["ok"] and report["summary"]["same"] == 1 and report["summary"]["timing"] == 1

    fake_papermill(monkeypatch, 1.001, seen)
    assert main(["reproduce", "00", "--quick", "--out", str(tmp_path / "c")]) == 1
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert not report["ok"] and [r["metric"] for r in report["rows"] if not r["ok"]] == ["fd"]

    fake_papermill(monkeypatch, 1.0, seen, fail=True)
    assert main(["reproduce", "00", "--quick", "--out", str(tmp_path / "d")]) == 1
    assert json.loads((tmp_path / "d" / "report.json").read_text())["rows"][0]["status"] == "error"

    # Default mode: the reference is results/, the kernels are told it is not a quick run.
    fake_papermill(monkeypatch, 1.0, seen)
    main(["reproduce", "00", "--out", str(tmp_path / "e"), "--references", str(refs), "--threads", "3"])
    assert (seen[-1]["MEDGAN_QUICK"], seen[-1]["OMP_NUM_THREADS"], seen[-1]["parameters"]) == ("0", "3", {})
    with pytest.raises(SystemExit, match="--quick"):
        main(["reproduce", "00", "--update-quick-references"])
    with pytest.raises(SystemExit, match="no notebook matches"):
        main(["reproduce", "99", "--quick"])


@pytest.mark.parametrize("slow_first", [True, False], ids=["first-finishes-last", "first-finishes-first"])
def test_jobs_run_notebooks_at_once_and_report_them_in_order(tmp_path, monkeypatch, slow_first):
    """--jobs 2: two kernels overlap; each sees the whole environment for as long as it runs, in
    either finishing order (the stand-in has no environment of its own: only the run's outer
    setting can provide it), a failure is still one error row, the rows and timings keep the
    notebooks' order, and the environment is restored afterwards."""
    import threading

    refs = tmp_path / "refs"
    refs.mkdir()
    for stem in ("00_getting_started", "02_dcgan"):
        (refs / f"{stem}.json").write_text(json.dumps(record({"fd": 1.0}, params={"quick": True})))
    both_started = threading.Barrier(2, timeout=30)
    seen: list = []

    def execute(path, target, parameters):  # stands in for reproduce.execute
        if path.stem != "02_dcgan":
            both_started.wait()  # only returns if 00 and 01 run at the same time
            if (path.stem == "00_getting_started") == slow_first:
                time.sleep(0.3)
        seen.append((path.stem, os.environ.get("MEDGAN_RESULTS_DIR"), os.environ.get("OMP_NUM_THREADS")))
        if path.stem == "01_vanilla_gan":
            raise RuntimeError("a cell raised")
        out = Path(os.environ["MEDGAN_RESULTS_DIR"]) / f"{path.stem}.json"
        out.write_text(json.dumps(record({"fd": 1.0}, params=parameters)))

    monkeypatch.setattr(rp, "execute", execute)
    assert main(["reproduce", "00", "01", "02", "--quick", "--jobs", "2", "--out", str(tmp_path / "a"),
                 "--references", str(refs)]) == 1
    results = str(tmp_path / "a" / "results")
    assert sorted(seen) == [(stem, results, "1") for stem in ("00_getting_started", "01_vanilla_gan", "02_dcgan")]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [(r["notebook"], r["status"]) for r in report["rows"]] == [
        ("00_getting_started", "same"), ("01_vanilla_gan", "error"), ("02_dcgan", "same")]
    assert list(report["timings_s"]) == ["00_getting_started", "02_dcgan"] and report["jobs"] == 2
    assert "MEDGAN_RESULTS_DIR" not in os.environ
    with pytest.raises(SystemExit, match="--jobs"):
        main(["reproduce", "00", "--quick", "--jobs", "0", "--out", str(tmp_path / "b")])


def _snapshot() -> dict[str, tuple[int, int]]:
    files = [p for d in ("results", "notebooks") for p in (ROOT / d).rglob("*") if p.is_file()]
    files.append(ROOT / "runs" / "quick_results" / "00_getting_started.json")
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists()}


@pytest.mark.slow
def test_a_real_run_writes_only_its_scratch_folder_and_fails_on_a_changed_number(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    monkeypatch.chdir(tmp_path)  # relative --out and --references mean here, not in notebooks/
    # A reference with one wrong number: notebook 00 really runs, and the exit code is 1.
    refs = tmp_path / "refs"
    refs.mkdir()
    params = {"dataset": "pneumoniamnist", "image_size": 28, "seed": 0, "quick": True}
    (refs / "00_getting_started.json").write_text(json.dumps(record({"n_train": 4709.0}, params=params)))
    before = _snapshot()
    code = main(["reproduce", "00", "--quick", "--out", "run", "--references", "refs"])
    assert _snapshot() == before, "reproduce wrote under results/, notebooks/ or runs/quick_results/"
    assert code == 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["metric"]: r for r in report["rows"]}
    assert (rows["n_train"]["now"], rows["n_train"]["ok"]) == (4708.0, False)
    assert rows["tensor_path_speedup"]["status"] == "new" and rows["tensor_path_speedup"]["ok"]
    assert (tmp_path / "run" / "notebooks" / "00_getting_started.ipynb").exists()
    assert (tmp_path / "run" / "results" / "00_getting_started.json").exists()


def test_another_cpu_thread_count_or_instruction_set_is_another_device():
    from medgan_utils.reproduce import same_device

    ref = {"device": "cpu", "machine": {"cpu_capability": "AVX2", "torch_threads": 1}}
    assert same_device(ref, ref)
    assert not same_device(ref, {"device": "cpu", "machine": {"cpu_capability": "AVX2", "torch_threads": 2}})
    assert not same_device(ref, {"device": "cpu", "machine": {"cpu_capability": "AVX512", "torch_threads": 1}})
    assert not same_device(ref, {"device": "cuda", "machine": ref["machine"]})
    assert same_device({"device": "cpu"}, ref), "a record without machine facts is compared by device"
    amd = {"device": "cpu", "machine": {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "torch_threads": 1}}
    intel = {"device": "cpu", "machine": {**amd["machine"], "cpu": "Intel(R) Xeon(R) Processor"}}
    assert same_device(amd, amd) and not same_device(amd, intel)


def test_run_notebooks_runs_every_notebook_and_fails_after_them_if_one_failed(monkeypatch, capsys):
    """``medgan run-notebooks`` (make course) shares reproduce's executor: one at a time, a failing
    notebook does not stop the next one; it is named, the exit code is 1, and in place means in
    place."""
    pytest.importorskip("papermill")
    calls = []

    def execute_notebook(input_path, output_path, parameters, cwd, **kwargs):
        calls.append((Path(input_path).name, Path(output_path) == Path(input_path), os.environ.get("MEDGAN_QUICK")))
        if "01_" in input_path:
            raise RuntimeError("a cell raised")

    monkeypatch.setattr("papermill.execute_notebook", execute_notebook)
    assert main(["run-notebooks", "01", "02", "--quick"]) == 1
    assert calls == [("01_vanilla_gan.ipynb", True, "1"), ("02_dcgan.ipynb", True, "1")]
    out, err = capsys.readouterr()
    assert "02_dcgan.ipynb done" in out and "01_vanilla_gan.ipynb FAILED" in err and "a cell raised" in err
    assert "1 notebook(s) failed: 01_vanilla_gan.ipynb" in err
