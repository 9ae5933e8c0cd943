"""Notebook conventions, papermill parameter injection, and every notebook run in quick mode.

``medgan reproduce --quick`` executes each notebook once with papermill (a failing cell fails the
test) and compares its numbers with the committed quick reference in ``results/quick/``; the
other tests check the conventions of ../shared/STYLE.md and that injected parameters reach the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STANDARD = {"dataset", "seed", "quick"}


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:4] == ["00", "01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(path: Path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    md = [c.source for c in cells if c.cell_type == "markdown"]
    code = [c for c in cells if c.cell_type == "code"]
    assert md[0].startswith(f"# {path.name[:2]} "), "first cell must be the numbered title"
    assert "You will learn" in md[0] and "Run time" in md[0], "opening needs goals and run time"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert STANDARD <= names, f"parameters cell lacks {STANDARD - names}"
    tail = "\n".join(md[-2:])
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in tail, f"closing section {heading!r} missing"
    src = "\n".join(c.source for c in code)
    assert "cuda" not in src.replace("torch.cuda", ""), "no hard-coded cuda: use get_device()"
    assert "run.finish(" in src, "every notebook writes its numbers to results/"
    for c in code:
        for out in c.get("outputs", []):
            assert out.get("output_type") != "error", f"committed error output in {path.name}"
    assert any(c.get("outputs") for c in code), "notebooks are committed with their outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_results_exist(path: Path):
    res = ROOT / "results" / f"{path.stem}.json"
    assert res.exists(), f"{res} missing: run `medgan run-notebooks {path.stem[:2]}`"
    record = json.loads(res.read_text())
    for key in ("notebook", "params", "commit", "versions", "device", "wall_s", "peak_memory_mb", "metrics"):
        assert key in record
    assert record["params"].get("quick") is False, "committed results must come from a default run"
    assert record["metrics"] and all(isinstance(v, float) for v in record["metrics"].values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_quick_references_exist(path: Path):
    res = ROOT / "results" / "quick" / f"{path.stem}.json"
    assert res.exists(), f"{res} missing: run `medgan reproduce --quick --update-quick-references`"
    record = json.loads(res.read_text())
    assert record["params"].get("quick") is True, "quick references must come from a quick run"
    assert record["metrics"]


@pytest.mark.slow
def test_every_notebook_runs_and_reproduces_its_quick_reference(tmp_path):
    pytest.importorskip("papermill")
    from medgan_utils.cli import main
    from medgan_utils.reproduce import Row, format_table

    code = main(["reproduce", "--quick", "--jobs", "2", "--out", str(tmp_path)])  # two at a time
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [Row(**r) for r in report["rows"] if not r["ok"]]
    assert code == 0 and not failed, (
        "quick runs differ from results/quick/ (executed notebooks in " + str(tmp_path / "notebooks")
        + "); if the change is intended: medgan reproduce --quick --update-quick-references\n"
        + format_table(failed))
    assert report["summary"]["notebooks"] == len(NOTEBOOKS)


def test_papermill_injects_parameters(tmp_path, monkeypatch):
    pm = pytest.importorskip("papermill")
    monkeypatch.setenv("MEDGAN_RESULTS_DIR", str(tmp_path))
    out = tmp_path / "00.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "00_getting_started.ipynb"), str(out),
                        parameters={"dataset": "breastmnist", "quick": True, "seed": 3},
                        cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'dataset = "breastmnist"' in injected[0].source
    record = json.loads((tmp_path / "00_getting_started.json").read_text())
    assert record["params"] == {"dataset": "breastmnist", "image_size": 28, "seed": 3, "quick": True}
    assert record["metrics"]["n_train"] == 546.0  # BreastMNIST's training split, not Pneumonia's
