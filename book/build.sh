#!/usr/bin/env bash
# Build the medgan Jupyter Book (HTML) offline, with every Sphinx warning an error.
#
#   book/build.sh                      # -> book/_build/html/index.html
#   BOOK_OUTPUT=/tmp/out book/build.sh # -> /tmp/out/_build/html/index.html
#   PYTHON=python3 book/build.sh       # another interpreter with jupyter-book installed
#   book/build.sh --assets-only        # only step 1 (MathJax files), no book build
#
# Works from any directory (paths are resolved from this script's location). Extra arguments are
# passed on to `jupyter-book build`.
#
# Steps:
#   1. make sure book/_vendor/_static/mathjax/ holds the MathJax version pinned in
#      book/package-lock.json (if not: `npm ci` in book/, then copy tex-chtml-full.js, its
#      woff-v2 fonts and LICENSE);
#   2. check that _toc.yml lists exactly notebooks/*.ipynb (make_toc.py --check; never rewritten);
#   3. jupyter-book build --all --warningiserror --nitpick --keep-going.
# Nothing else is regenerated: notebooks are rendered with their committed outputs
# (execute_notebooks: "off").
set -euo pipefail

BOOK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BOOK_DIR/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
        PYTHON="$REPO_ROOT/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi
OUTPUT="${BOOK_OUTPUT:-$BOOK_DIR}"

die() { echo "book/build.sh: $*" >&2; exit 1; }

ASSETS_ONLY=0
if [[ "${1:-}" == "--assets-only" ]]; then
    ASSETS_ONLY=1
    shift
fi

# --- 1. MathJax, served from the book's own static files -------------------------------------
MJ_SRC="$BOOK_DIR/node_modules/mathjax"
MJ_DST="$BOOK_DIR/_vendor/_static/mathjax"  # html_extra_path: -> _build/html/_static/mathjax
# The version pinned in package-lock.json (read with Python: node may not be needed at all).
MJ_VERSION="$("$PYTHON" -c 'import json, sys
lock = json.load(open(sys.argv[1], encoding="utf-8"))
print(lock["packages"]["node_modules/mathjax"]["version"])' "$BOOK_DIR/package-lock.json")" \
    || die "cannot read the mathjax version from $BOOK_DIR/package-lock.json"

installed_version() {  # version of the unpacked npm package, or nothing
    [[ -f "$MJ_SRC/package.json" ]] || return 0
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$MJ_SRC/package.json"
}

if [[ "$(cat "$MJ_DST/VERSION" 2>/dev/null || true)" != "$MJ_VERSION" \
      || ! -f "$MJ_DST/tex-chtml-full.js" ]]; then
    if [[ "$(installed_version)" != "$MJ_VERSION" ]]; then
        command -v npm >/dev/null \
            || die "npm not found; it installs MathJax $MJ_VERSION (apt-get install -y nodejs npm)"
        echo "book/build.sh: npm ci (mathjax $MJ_VERSION) in $BOOK_DIR" >&2
        (cd "$BOOK_DIR" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
    fi
    [[ "$(installed_version)" == "$MJ_VERSION" ]] \
        || die "npm ci did not install mathjax $MJ_VERSION into $MJ_SRC"
    rm -rf "$MJ_DST"
    mkdir -p "$MJ_DST/output/chtml/fonts"
    # tex-chtml-full.js bundles every TeX extension, so MathJax never loads another file
    # at run time except its fonts (looked up next to the script: output/chtml/fonts/woff-v2).
    cp "$MJ_SRC/es5/tex-chtml-full.js" "$MJ_DST/"
    cp -R "$MJ_SRC/es5/output/chtml/fonts/woff-v2" "$MJ_DST/output/chtml/fonts/"
    cp "$MJ_SRC/LICENSE" "$MJ_DST/LICENSE"
    echo "$MJ_VERSION" > "$MJ_DST/VERSION"
    echo "book/build.sh: MathJax $MJ_VERSION copied to $MJ_DST" >&2
fi

if (( ASSETS_ONLY )); then
    exit 0
fi

# --- 2.-3. The book ---------------------------------------------------------------------------
[[ -L "$BOOK_DIR/notebooks" || -d "$BOOK_DIR/notebooks" ]] \
    || die "$BOOK_DIR/notebooks is missing; restore the symlink: ln -s ../notebooks book/notebooks"

# _toc.yml must list exactly the notebooks present (checked, never rewritten here).
"$PYTHON" "$BOOK_DIR/make_toc.py" --check --book-dir "$BOOK_DIR" >&2 \
    || die "book/_toc.yml is out of date: run $PYTHON book/make_toc.py"

# --all: reread every page, so a warning in an unchanged page is reported (and fails) every time.
# (jupyter_book has no __main__ module, so call its click entry point the way the console
# script `jupyter-book` does.)
exec "$PYTHON" -c 'import sys; from jupyter_book.cli.main import main
sys.argv[0] = "jupyter-book"; sys.exit(main())' \
    build "$BOOK_DIR" --path-output "$OUTPUT" \
    --builder html --all --warningiserror --nitpick --keep-going "$@"
