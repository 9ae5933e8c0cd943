"""``medgan reproduce``: re-execute notebooks and compare their numbers with the committed ones.

    medgan reproduce                  # every notebook, default mode, against results/<notebook>.json
    medgan reproduce 02               # one notebook
    medgan reproduce --quick          # seconds-long runs against results/quick/<notebook>.json (CI)
    medgan reproduce --quick --update-quick-references   # rewrite results/quick/ from this run

Each notebook is executed by papermill (cwd ``notebooks/``, kernel ``python3``) into a scratch
folder, ``runs/reproduce/<time>/``: the executed notebooks, the results files their
``run.finish`` wrote there (``$MEDGAN_RESULTS_DIR`` points at it) and ``report.json`` with the
table. Nothing under ``notebooks/`` or ``results/`` changes. Each metric is compared with its
reference under the first rule of :data:`TOLERANCES` whose pattern matches its name.

The kernels run with ``OMP_NUM_THREADS=1`` unless ``threads`` says otherwise, and references are
made the same way (``OMP_NUM_THREADS=1 medgan run-notebooks``): a CPU convolution's weight
gradient is a sum split into one partial sum per thread, so a GAN trained on two threads ends
with other weights (the classifier of :mod:`medgan_utils.classify` is immune: its backward pass
runs on one thread).

Introduced in ``notebooks/00_getting_started.ipynb`` (section 7, "Numbers go to results/").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .results import RESULTS_DIR
from .utils import REPO_ROOT, git_commit, machine, write_json

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
QUICK_REFERENCE_DIR = RESULTS_DIR / "quick"  # committed references of quick (smoke) runs
SCRATCH_DIR = REPO_ROOT / "runs" / "reproduce"


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its reference: ``|now - ref| <= abs + rel * |ref|``.

    Attributes:
        name: shown in the table's ``tolerance`` column.
        rel, abs: when the run's device is the reference's. A CPU run with the same seed, data,
            thread count and libraries repeats bit for bit; ``rel=1e-9`` forgives the last digits
            that another install of a linear-algebra library may change, nothing that a changed
            computation would give.
        device_rel, device_abs: when the devices differ (say ``cuda`` against a ``cpu``
            reference): other kernels round differently. None: the same as ``rel``/``abs``.
        timing: wall time, throughput, memory: shown, never a regression (they measure the
            machine and its load, not the code).
    """

    name: str
    rel: float = 0.0
    abs: float = 0.0
    device_rel: float | None = None
    device_abs: float | None = None
    timing: bool = False

    def bounds(self, same_device: bool = True) -> tuple[float, float]:
        """``(rel, abs)`` for a run on the reference's device or on another one."""
        if same_device:
            return self.rel, self.abs
        return (self.rel if self.device_rel is None else self.device_rel,
                self.abs if self.device_abs is None else self.device_abs)

    def ok(self, ref: float, now: float, same_device: bool = True) -> bool:
        if self.timing:
            return True
        rel, abs_ = self.bounds(same_device)
        return math.isclose(now, ref, rel_tol=rel, abs_tol=abs_) or now == ref

    def describe(self, same_device: bool = True) -> str:
        if self.timing:
            return "timing (not compared)"
        rel, abs_ = self.bounds(same_device)
        text = " + ".join(p for p in (f"rel {rel:g}" if rel else "", f"abs {abs_:g}" if abs_ else "") if p)
        return ("" if same_device else "other device: ") + (text or "exact")


TIMING = Tolerance("timing", timing=True)
EXACT = Tolerance("exact", rel=1e-9, device_rel=0.05, device_abs=1e-3)
DATA = Tolerance("data", rel=1e-9)  # counts and statistics of the data files: no device involved
# A Frechet distance takes the matrix square root of a nearly singular covariance, which turns
# the last bit of a BLAS sum into the 9th digit (4.5e-9 between two installs for a BreastMNIST
# class of 42 test images); a real change moves it by 1e-3 or more.
FD = Tolerance("fd", rel=1e-6, device_rel=0.05, device_abs=1e-3)

# The one place tolerances are declared: (pattern over the metric's name, rule); the first match
# wins (fnmatch patterns, where "*" also matches "/").
TOLERANCES: tuple[tuple[str, Tolerance], ...] = (
    ("*wall_s*", TIMING),
    ("*seconds*", TIMING),
    ("*_per_s", TIMING),
    ("*ms_per_*", TIMING),
    ("*speedup*", TIMING),
    ("*peak_memory*", TIMING),
    ("*rss_mb*", TIMING),  # resident memory of a federation's processes (chapter 08)
    # SecAgg+ quantises with unseeded stochastic rounding: any difference within its bound is a pass.
    ("secagg/max_abs_diff", Tolerance("secagg rounding", abs=1e-5)),
    ("n_*", DATA),
    ("*/n_*", DATA),
    ("frac_class*", DATA),
    ("*_intensity_*", DATA),
    ("*fd*", FD),
    ("*", EXACT),
)


def tolerance_for(metric: str, rules: Sequence[tuple[str, Tolerance]] = TOLERANCES) -> Tolerance:
    """The first rule of ``rules`` whose pattern matches ``metric``."""
    for pattern, rule in rules:
        if fnmatch.fnmatchcase(metric, pattern):
            return rule
    raise KeyError(f"no tolerance rule matches {metric!r}: end TOLERANCES with a '*' rule")


@dataclass
class Row:
    """One line of the table: a metric of a notebook, or a problem with the whole notebook."""

    notebook: str
    metric: str
    reference: float | str | None
    now: float | str | None
    tolerance: str
    ok: bool
    status: str  # "same", "within", "changed", "timing", "missing", "new", "params", "error", "no reference"


def same_device(reference: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """True when both records name the same device and, where both say, the same CPU model,
    vector instruction set and thread count (a reference made on an AVX-512 CPU, or on one
    thread, is "another device" for an AVX2 CPU, or for two threads). The model matters too:
    with the same AVX-512 and one thread, an Intel Xeon and an AMD EPYC differed in the 7th digit
    of KIDs and gradient norms (the math libraries pick their kernels by vendor)."""
    same = reference.get("device") == now.get("device")
    for fact in ("cpu", "cpu_capability", "torch_threads"):  # each changes how a CPU rounds
        pair = [r.get("machine", {}).get(fact) for r in (reference, now)]
        same = same and (None in pair or pair[0] == pair[1])
    return same


def compare(notebook: str, reference: Mapping[str, Any] | None, now: Mapping[str, Any] | None,
            rules: Sequence[tuple[str, Tolerance]] = TOLERANCES) -> list[Row]:
    """Compare two results records (``results/<notebook>.json`` contents), metric by metric.

    A metric the new run lacks, a changed number, a results file not written and parameters
    that differ from the reference's are regressions; a new metric is reported, not a failure.
    """
    if now is None:
        return [Row(notebook, "(results file)", "present" if reference else None, None, "", False, "missing")]
    if reference is None:
        return [Row(notebook, "(results file)", None, "present", "", False, "no reference")]
    rows = []
    if reference.get("params") != now.get("params"):
        ref_p, now_p = reference.get("params") or {}, now.get("params") or {}
        diff = sorted(k for k in ref_p.keys() | now_p.keys() if ref_p.get(k) != now_p.get(k))
        rows.append(Row(notebook, "(params)", json.dumps({k: ref_p.get(k) for k in diff}),
                        json.dumps({k: now_p.get(k) for k in diff}), "equal", False, "params"))
    on_same = same_device(reference, now)
    ref_m, now_m = reference.get("metrics", {}), now.get("metrics", {})
    for name in sorted(ref_m.keys() | now_m.keys()):
        rule = tolerance_for(name, rules)
        tol = rule.describe(on_same)
        if name not in now_m:
            rows.append(Row(notebook, name, ref_m[name], None, tol, rule.timing, "missing"))
        elif name not in ref_m:
            rows.append(Row(notebook, name, None, now_m[name], tol, True, "new"))
        else:
            ref, val = float(ref_m[name]), float(now_m[name])
            ok = rule.ok(ref, val, on_same)
            status = "timing" if rule.timing else "same" if val == ref else "within" if ok else "changed"
            rows.append(Row(notebook, name, ref, val, tol, ok, status))
    return rows


def _cell(v: Any, digits: int = 6) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "-" if v is None else str(v)


def format_table(rows: Iterable[Row]) -> str:
    """The table as aligned text: notebook, metric, reference, now, tolerance, ok. Numbers have
    6 significant digits, all 17 where a metric failed (a change may be in the last ones)."""
    head = ("notebook", "metric", "reference", "now", "tolerance", "ok")
    body = [(r.notebook, r.metric, _cell(r.reference, 6 if r.ok else 17), _cell(r.now, 6 if r.ok else 17),
             r.tolerance, "new" if r.status == "new" else "ok" if r.ok else f"FAIL ({r.status})")
            for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def select_notebooks(names: Sequence[str] = (), folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """``notebooks/NN_*.ipynb`` whose file name starts with one of ``names`` (all if empty)."""
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in names)]
        if not paths:
            raise SystemExit(f"no notebook matches {list(names)} in {folder}")
    return paths


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["seed=1", 'dataset="breastmnist"']`` -> ``{"seed": 1, "dataset": "breastmnist"}``
    (values parsed as JSON when possible, else kept as strings)."""
    params: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the kernels papermill starts (they inherit ours)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_environment(results: Path | None, quick: bool, threads: int) -> dict[str, str]:
    """What the notebooks' kernels see: results into the scratch folder (None: where the results
    module puts them), the mode spelled out (a ``MEDGAN_QUICK=1`` left in the shell must not turn a
    default run quick), the thread count."""
    env = {"MEDGAN_QUICK": "1" if quick else "0"}
    if results is not None:
        env["MEDGAN_RESULTS_DIR"] = str(results)
    if threads:
        env |= {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return env


def execute(path: Path, target: Path, parameters: Mapping[str, Any]) -> None:
    """Execute one notebook with papermill into ``target`` (kernel in the notebook's folder; its
    environment is ours, which :func:`execute_all` sets); raises on a failing cell."""
    import papermill as pm

    target.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(path), str(target), parameters=dict(parameters), cwd=str(path.parent),
                        kernel_name="python3", progress_bar=False, log_output=False)


def execute_all(paths: Sequence[Path], targets: Sequence[Path], parameters: Mapping[str, Any],
                env: Mapping[str, str], jobs: int = 1,
                done: Callable[[Path, float, str | None], None] | None = None) -> list[tuple[float, str | None]]:
    """Execute notebooks with :func:`execute`, ``jobs`` at once; a failing notebook is reported
    and the others still run.

    Returns, in the order of ``paths``, ``(seconds, None)`` or ``(seconds, "ErrorType: message")``;
    ``done(path, seconds, error)`` is called as each finishes. ``env`` is added to the environment
    once, around all of them (kernels inherit it), and restored afterwards. ``medgan run-notebooks``
    and :func:`reproduce` both execute through here, so both run notebooks the same way. With one
    job the notebooks run in this thread, one after the other; with more, each runs in a worker
    thread, and Ctrl-C cancels the notebooks not yet started and stops the running kernels (their
    notebooks then fail) before re-raising.
    """
    if jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, not {jobs}")

    def run(path: Path, target: Path) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        try:
            execute(path, target, parameters)
        except Exception as err:
            return time.perf_counter() - t0, f"{type(err).__name__}: {str(err).strip()}"
        return time.perf_counter() - t0, None

    outcomes: dict[int, tuple[float, str | None]] = {}
    with _environment(env):
        if jobs == 1:
            for i, (path, target) in enumerate(zip(paths, targets, strict=True)):
                outcomes[i] = run(path, target)
                if done:
                    done(path, *outcomes[i])
        else:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
            try:
                futures = {pool.submit(run, p, t): i for i, (p, t) in enumerate(zip(paths, targets, strict=True))}
                for f in concurrent.futures.as_completed(futures):
                    outcomes[futures[f]] = f.result()
                    if done:
                        done(paths[futures[f]], *outcomes[futures[f]])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                _stop_kernels()
                raise
            pool.shutdown()
    return [outcomes[i] for i in range(len(paths))]


def _stop_kernels() -> None:
    """Kill the Jupyter kernels this process started (on Ctrl-C during a parallel run: the worker
    threads cannot be interrupted, but their notebooks fail at once when the kernel is gone)."""
    try:
        import psutil
    except ImportError:  # ipykernel depends on psutil; without it the running notebooks finish
        return
    for child in psutil.Process().children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:
            pass


def reproduce(names: Sequence[str] = (), quick: bool = False, params: Mapping[str, Any] | None = None,
              out_dir: str | os.PathLike | None = None, references: str | os.PathLike | None = None,
              threads: int = 1, update_quick_references: bool = False, jobs: int = 1, log=print) -> int:
    """Execute notebooks into a scratch folder and compare their results with the references.

    Args:
        names: notebook file names or prefixes (``"02"``); empty: every notebook.
        quick: inject ``quick=True`` and compare with ``results/quick/`` instead of ``results/``.
        params: more papermill parameters (then the reference's params must match them).
        out_dir: the scratch folder (default ``runs/reproduce/<time>[-quick]``).
        references: the folder of reference results files (default: by mode, see above).
        threads: ``OMP_NUM_THREADS`` of the kernels; 0 keeps the environment's.
        update_quick_references: after a successful quick run, copy its results files to
            ``results/quick/`` (for developers, when a notebook's quick numbers change on purpose).
        jobs: notebooks executed at once (each kernel still uses ``threads`` threads, so the
            numbers are those of a one-at-a-time run; on two cores, 2 cut the quick run of every
            notebook by about a third to two thirds: the longest notebooks set the pace).

    Returns:
        0 when every notebook ran and every metric is within its tolerance, else 1 (the process
        exit code of ``medgan reproduce``).
    """
    if update_quick_references and not quick:
        raise SystemExit("--update-quick-references rewrites results/quick/: add --quick")
    if jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, not {jobs}")
    paths = select_notebooks(names)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if quick else "")
    out = (Path(out_dir) if out_dir else SCRATCH_DIR / stamp).resolve()  # kernels run in notebooks/
    ref_dir = Path(references).resolve() if references else QUICK_REFERENCE_DIR if quick else RESULTS_DIR
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    (out / "notebooks").mkdir(exist_ok=True)
    parameters = {**({"quick": True} if quick else {}), **dict(params or {})}
    rows: list[Row] = []
    timings: dict[str, float] = {}
    env = kernel_environment(results, quick, threads)
    with _environment(env):
        here = machine()
    log(f"reproducing {len(paths)} notebook(s) {parameters or '(default parameters)'} into {out}; "
        f"references: {ref_dir}; threads: {threads or 'as set in the environment'}; jobs: {jobs}")
    for path in paths:  # a re-used --out folder must not lend an old file
        (results / f"{path.stem}.json").unlink(missing_ok=True)
    report = lambda path, seconds, error: log(  # noqa: E731
        f"   {path.name}: {seconds:.1f} s" if error is None else
        f"   {path.name} failed after {seconds:.0f} s: {error.strip().splitlines()[-1]} (see {out / 'notebooks' / path.name})")
    outcomes = execute_all(paths, [out / "notebooks" / p.name for p in paths], parameters, env, jobs, report)
    for path, (seconds, error) in zip(paths, outcomes, strict=True):
        if error is not None:
            rows.append(Row(path.stem, "(execution)", None, error.split(":")[0], "", False, "error"))
            continue
        timings[path.stem] = round(seconds, 1)
        now = _read(results / f"{path.stem}.json")
        if now is not None:  # the kernels ran here, on this machine
            now["machine"] = here
            write_json(results / f"{path.stem}.json", now)
        rows += compare(path.stem, _read(ref_dir / f"{path.stem}.json"), now)
    failed = [r for r in rows if not r.ok]
    table = format_table(rows)
    log(table)
    summary = {"notebooks": len(paths), "metrics": sum(r.metric[0] != "(" for r in rows),
               "same": sum(r.status == "same" for r in rows), "within": sum(r.status == "within" for r in rows),
               "timing": sum(r.status == "timing" for r in rows), "new": sum(r.status == "new" for r in rows),
               "regressions": len(failed)}
    write_json(out / "report.json", {
        "ok": not failed, "summary": summary, "quick": quick, "parameters": parameters, "machine": here,
        "references": str(ref_dir), "commit": git_commit(), "timings_s": timings, "jobs": jobs,
        "tolerances": [{"pattern": p, **asdict(t)} for p, t in TOLERANCES],
        "rows": [asdict(r) for r in rows]})
    log(f"{summary['metrics']} metrics of {len(paths)} notebook(s): {summary['same']} identical, "
        f"{summary['within']} within tolerance, {summary['timing']} timings, {summary['new']} new, "
        f"{len(failed)} regression(s). Table: {out / 'report.json'}")
    if update_quick_references:
        ran = [p.stem for p in paths if p.stem in timings and (results / f"{p.stem}.json").exists()]
        QUICK_REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
        for stem in ran:
            shutil.copyfile(results / f"{stem}.json", QUICK_REFERENCE_DIR / f"{stem}.json")
        log(f"updated {len(ran)} quick reference(s) in {QUICK_REFERENCE_DIR}: {', '.join(ran)}")
        return 0 if len(ran) == len(paths) else 1
    return 1 if failed else 0


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None
