"""The Jupyter Book in ``book/``: it builds offline with no warning, every notebook is a chapter,
no notebook carries an error output, ``_toc.yml`` is up to date, and the equations are typeset by
the book's own copy of MathJax (checked in headless Chromium with the network cut off).

The book is built by ``book/build.sh`` on a copy of ``book/`` and ``notebooks/`` in a temporary
folder, so the repository is not touched. Run only these tests with ``pytest -m book``.

Chromium (Debian package ``chromium``) runs the browser test. Without it the test is skipped,
saying how to install it, except under CI (``CI=true``, set by the CI runner and ``.ci/run``),
where it is required: a missing Chromium is an error.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = REPO / "notebooks"
MATHJAX_SCRIPT = "_static/mathjax/tex-chtml-full.js"
# Every remote request goes here and fails: nothing listens on the discard port.
DEAD_PROXY = "http://127.0.0.1:9"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Sphinx and docutils report "path:line: WARNING: message" (ERROR, CRITICAL, SEVERE alike).
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|SEVERE)\b:")
REMOTE_MATHJAX = re.compile(r"https?://[^\s\"'<>]*mathjax", re.IGNORECASE)


def _make_toc():
    spec = importlib.util.spec_from_file_location("make_toc", BOOK / "make_toc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chapter_notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("."))


def _toc_files() -> list[str]:
    """Document names in ``_toc.yml``, root first, in reading order."""
    import yaml  # PyYAML comes with jupyter-book (pip install -e ".[book]")

    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [str(Path(f).with_suffix("")) if Path(f).suffix in {".md", ".ipynb"} else f
            for f in files]


# ---------------------------------------------------------------------------------------------
# Static checks (fast, no build)
# ---------------------------------------------------------------------------------------------


@pytest.mark.book
def test_notebooks_symlink_points_to_repo_notebooks():
    link = BOOK / "notebooks"
    assert link.is_symlink(), (
        "book/notebooks must be a symlink to ../notebooks (restore: ln -s ../notebooks book/notebooks)")
    assert os.readlink(link) == "../notebooks", (
        f"book/notebooks points to {os.readlink(link)!r}; it must be the relative link ../notebooks")
    assert link.resolve() == NOTEBOOKS.resolve()


@pytest.mark.book
def test_committed_toc_is_what_make_toc_generates():
    committed = (BOOK / "_toc.yml").read_text(encoding="utf-8")
    generated = _make_toc().render_toc(BOOK)
    if committed != generated:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), generated.splitlines(keepends=True),
            fromfile="book/_toc.yml (committed)", tofile="make_toc.py output"))
        pytest.fail("book/_toc.yml is out of date with notebooks/*.ipynb; "
                    f"run: python book/make_toc.py\n{diff}", pytrace=False)


@pytest.mark.book
def test_toc_lists_every_notebook_and_only_existing_pages():
    files = _toc_files()
    assert files[0] == "intro" and files[-1] == "article", files
    missing = [f"notebooks/{nb.name}" for nb in _chapter_notebooks()
               if f"notebooks/{nb.stem}" not in files]
    assert not missing, (
        f"notebooks missing from book/_toc.yml: {', '.join(missing)}; run: python book/make_toc.py")
    absent = [f for f in files
              if not (BOOK / f"{f}.md").is_file() and not (BOOK / f"{f}.ipynb").is_file()]
    assert not absent, f"book/_toc.yml lists pages that do not exist: {', '.join(absent)}"


@pytest.mark.book
def test_notebooks_have_no_error_outputs():
    problems = []
    for nb_path in _chapter_notebooks():
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        for number, cell in enumerate(nb.get("cells", []), start=1):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    problems.append(
                        f"notebooks/{nb_path.name}: cell {number} of {len(nb['cells'])} "
                        f"(execution_count {cell.get('execution_count')}) has an error output: "
                        f"{output.get('ename')}: {output.get('evalue')}")
    assert not problems, (
        "the book renders the committed outputs, so these errors would be published; "
        "fix the cells and re-run the notebooks:\n" + "\n".join(problems))


@pytest.mark.book
def test_book_pages_have_a_displayed_equation():
    sources = (BOOK / "intro.md").read_text(encoding="utf-8") + (BOOK / "article.md").read_text(
        encoding="utf-8")
    assert re.search(r"^\s*\$\$\s*$", sources, re.MULTILINE), (
        "intro.md or article.md must contain a displayed ($$ ... $$) equation: the browser test "
        "checks that MathJax typesets it")


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def _offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[key] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = ""
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """Build a copy of the book with book/build.sh; returns the HTML folder."""
    if importlib.util.find_spec("jupyter_book") is None:
        pytest.fail(f"jupyter-book is not installed in {sys.executable}: "
                    'pip install -e ".[book]"')
    root = tmp_path_factory.mktemp("medgan_book")
    ignore = shutil.ignore_patterns("_build", "node_modules", ".ipynb_checkpoints", "__pycache__")
    shutil.copytree(BOOK, root / "book", symlinks=True, ignore=ignore)
    shutil.copytree(NOTEBOOKS, root / "notebooks", symlinks=True, ignore=ignore)
    assert (root / "book" / "notebooks").resolve() == (root / "notebooks").resolve()
    build = ["bash", str(root / "book" / "build.sh")]
    env = {"PYTHON": sys.executable, "BOOK_OUTPUT": str(root / "out")}

    # 1. MathJax files: copied from book/_vendor/ when current, else `npm ci` (may use the
    #    npm registry or cache). This is the only step allowed to reach the network.
    assets = subprocess.run([*build, "--assets-only"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    assert assets.returncode == 0, (
        "book/build.sh --assets-only failed (it installs MathJax with npm ci in book/; "
        "CI needs: apt-get install -y nodejs npm):\n" + assets.stdout + assets.stderr)

    # 2. The book, with every proxy pointing to a dead port so that any fetch fails.
    proc = subprocess.run(build, env=_offline_env(**env), capture_output=True, text=True,
                          timeout=600)
    log = ANSI.sub("", proc.stdout + proc.stderr)
    (root / "build.log").write_text(log, encoding="utf-8")
    problems = [line for line in log.splitlines() if PROBLEM.search(line)]
    assert proc.returncode == 0 and not problems, (
        f"book build failed (exit {proc.returncode}); warnings and errors:\n"
        + "\n".join(problems or ["(none matched; see the log tail)"])
        + "\n--- log tail ---\n" + "\n".join(log.splitlines()[-40:]))
    html = root / "out" / "_build" / "html"
    assert (html / "index.html").is_file(), f"no index.html in {html}"
    return html


@pytest.mark.book
def test_every_toc_entry_has_a_page(built_book):
    missing = [f"{f}.html" for f in _toc_files() if not (built_book / f"{f}.html").is_file()]
    assert not missing, f"pages missing from the built book: {', '.join(missing)}"


@pytest.mark.book
def test_mathjax_is_served_from_the_book(built_book):
    script = built_book / MATHJAX_SCRIPT
    assert script.is_file(), f"{script} missing: book/build.sh did not copy MathJax"
    fonts = built_book / "_static/mathjax/output/chtml/fonts/woff-v2"
    assert fonts.is_dir() and any(fonts.glob("*.woff")), f"MathJax fonts missing in {fonts}"

    remote = []
    for page in sorted(built_book.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        remote += [f"{page.relative_to(built_book)}: {m}" for m in REMOTE_MATHJAX.findall(text)]
    assert not remote, "pages load MathJax from the network:\n" + "\n".join(remote)

    for name in ("intro", "article"):
        text = (built_book / f"{name}.html").read_text(encoding="utf-8")
        tags = re.findall(r"<script[^>]*src=\"[^\"]*mathjax[^\"]*\"", text, re.IGNORECASE)
        assert len(tags) == 1 and MATHJAX_SCRIPT in tags[0], (
            f"{name}.html should load MathJax exactly once, from {MATHJAX_SCRIPT}; found {tags}. "
            "(Jupyter Book adds every .js under book/_static/ or html_static_path to every page: "
            "keep MathJax in book/_vendor/, an html_extra_path.)")


def _chromium() -> str | None:
    for candidate in (os.environ.get("MEDGAN_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of Chromium. Outside CI a machine without it skips the browser test (before the book
    is built); under CI the test is required."""
    path = _chromium()
    if path is not None:
        return path
    how = ("Debian/Ubuntu: sudo apt-get install chromium; elsewhere install Chromium or Chrome "
           "and set MEDGAN_CHROMIUM=/path/to/it")
    if _under_ci():
        pytest.fail(f"chromium is not installed, and CI=true requires the browser test ({how}; "
                    ".ci/run installs it)", pytrace=False)
    pytest.skip(f"chromium not found, so the offline MathJax typesetting is not checked in a "
                f"browser; to run this test: {how}")


@pytest.mark.book
def test_equation_typeset_by_local_mathjax_in_offline_browser(chromium, built_book, tmp_path):
    page = built_book / "intro.html"
    html = page.read_text(encoding="utf-8")
    # Sphinx writes displayed math as <div class="math ..."> [<span class="eqno">...] \[ ... \]
    assert re.search(r'<div class="math[^"]*"[^>]*>(?:(?!</div>).)*?\\\[', html, re.DOTALL), (
        "intro.html has no displayed equation to typeset")
    assert not REMOTE_MATHJAX.search(html)

    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        # No network: every http(s) request goes to a dead proxy (loopback included), and no
        # host name resolves.
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, (
        f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    assert re.search(r"<mjx-container[^>]*display=\"true\"", dom), (
        "MathJax did not typeset the displayed equation of intro.html (no <mjx-container "
        "display=\"true\"> in the DOM): the local MathJax did not load or run.\n"
        f"chromium stderr:\n{proc.stderr[-3000:]}")
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error in intro.html"
    # CHTML output loads its fonts relative to the script: they must be local files too.
    font_urls = set(re.findall(r"url\(\"?([^\")]+\.woff2?)\"?\)", dom))
    remote_fonts = sorted(u for u in font_urls if not u.startswith("file://"))
    assert font_urls and not remote_fonts, f"MathJax fonts not local: {remote_fonts or 'none'}"


@pytest.mark.book
def test_article_findings_match_results():
    """The article's numbers are generated from results/*.json, never typed in."""
    proc = subprocess.run([sys.executable, str(REPO / "book" / "make_findings.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
