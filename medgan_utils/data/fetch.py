"""Fetch the data sets the chapters need into ``data/``, every file checked against its md5.

A clone of the repository holds no data. ``make data`` (the first step of ``make course``) runs
``python -m medgan_utils.data.fetch``, which, for each data set of :func:`datasets`:

1. uses a verified copy where there already is one: each MedMNIST file where the loader looks
   (:func:`~medgan_utils.data.search_roots`: ``$MEDMNIST_ROOT``, ``data/medmnist/``,
   ``~/.medmnist``), a folder set (``ct_mri``, ``ixi_pair``) complete in the course's offline
   copy ``../shared/data/<set>`` or in ``data/<set>``. Nothing is downloaded then;
2. otherwise puts the missing files into ``data/<set>/``: copied from ``../shared/data`` when
   they are there, else downloaded: MedMNIST through medmnist's own download (Zenodo), the CT/MRI
   slices and the IXI pair as raw files of their source repositories at a pinned commit (see
   ``data/README.md``). With ``$MEDGAN_DATA_URL`` set (an ``http(s)://`` or ``file://`` URL of a
   folder laid out like ``../shared/data``), every download comes from there instead.

Every file is checked against ``data/MANIFEST.md5`` (for MedMNIST, against the official md5 in
medmnist's ``INFO``, which the manifest repeats). A download goes to a temporary file beside its
target and is renamed only once its md5 is right, so an interrupted or corrupt download never
leaves a file under a real name; a wrong md5 deletes the temporary file and says so. Files
already present and verified are not fetched again.

The downloader is written here (urllib) because medmnist's covers MedMNIST only, and the
torchvision ``download_url`` it calls leaves a corrupt file in place under its final name.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..utils import REPO_ROOT
from .medmnist import (
    DataIntegrityError,
    DataNotFoundError,
    _dataset_class,
    _md5,
    dataset_info,
    file_name,
    search_roots,
)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # the course's offline copy, when present
DATA_DIR = REPO_ROOT / "data"
MANIFEST = DATA_DIR / "MANIFEST.md5"
URL_ENV = "MEDGAN_DATA_URL"
MEDMNIST_FILES = (("pneumoniamnist", 28), ("breastmnist", 28), ("breastmnist", 64))
CT_MRI_REPO = ("https://raw.githubusercontent.com/Shantaram11/CT-to-MRI-Image-Synthesis-Using-"
               "Cycle-Generative-Adversarial-Network-/f77a4006bc7da3c60ec536fa1fa9ce819fa6b22e/data/")
IXI_PAIR_REPO = ("https://raw.githubusercontent.com/ntustison/NonLocalSuperResolutionExample/"
                 "b5329d07fbbc731b751262cf40f1d81ceb753755/Input/")
WORKERS = 8  # parallel downloads: ct_mri is 1,488 small files
TIMEOUT_S = 60
_USER_AGENT = "medgan-utils-fetch"


class FetchError(RuntimeError):
    """A data set is complete nowhere on this machine and could not be fetched."""


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: ``path`` inside the set's folder, its ``md5``, its public ``url``;
    ``medmnist`` = (flag, size) when medmnist's own download fetches it."""

    path: str
    md5: str
    url: str
    medmnist: tuple[str, int] | None = None


@dataclass(frozen=True)
class DataSet:
    """A folder of ``../shared/data`` and ``data/``: its files, their source and who uses them."""

    name: str
    files: tuple[DataFile, ...]
    source: str
    used_by: str


@dataclass
class Fetched:
    """What :func:`fetch_dataset` did for one data set: where each file is and how it got there."""

    name: str
    paths: dict[str, Path] = field(default_factory=dict)
    found: int = 0
    copied: int = 0
    downloaded: int = 0
    replaced: int = 0
    bytes: int = 0


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, str]:
    """``md5sum`` output (default ``data/MANIFEST.md5``) as ``{relative path: md5}``."""
    out = {}
    for line in Path(path or MANIFEST).read_text(encoding="utf-8").splitlines():
        if line.strip():
            md5, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = md5
    return out


def datasets(manifest: str | os.PathLike | None = None) -> dict[str, DataSet]:
    """The data sets the chapters need, by folder name: ``medmnist``, ``ct_mri``, ``ixi_pair``;
    their md5s come from ``manifest`` (default ``data/MANIFEST.md5``)."""
    md5s = read_manifest(manifest or MANIFEST)

    def listed(prefix: str, base: str) -> tuple[DataFile, ...]:
        return tuple(DataFile(p[len(prefix):], m, base + quote(p[len(prefix):]))
                     for p, m in sorted(md5s.items()) if p.startswith(prefix))

    mm = []
    for flag, size in MEDMNIST_FILES:
        info, key = dataset_info(flag), "" if size == 28 else f"_{size}"
        mm.append(DataFile(file_name(flag, size), info[f"MD5{key}"], info[f"url{key}"], (flag, size)))
    return {
        "medmnist": DataSet("medmnist", tuple(mm), "MedMNIST v2 on Zenodo, through medmnist",
                            "every chapter (00-04)"),
        "ct_mri": DataSet("ct_mri", listed("ct_mri/", CT_MRI_REPO),
                          "raw files of Shantaram11/CT-to-MRI-...-Network- @ f77a400",
                          "CycleGAN CT<->MRI, your own images"),
        "ixi_pair": DataSet("ixi_pair", listed("ixi_pair/", IXI_PAIR_REPO),
                            "raw files of ntustison/NonLocalSuperResolutionExample @ b5329d0",
                            "pix2pix and super-resolution demos"),
    }


def _ok(path: Path, md5: str) -> bool:
    return path.is_file() and _md5(path) == md5


def _missing(ds: DataSet, folder: Path) -> list[DataFile]:
    """The files of ``ds`` that ``folder`` lacks or holds with another md5."""
    if not folder.is_dir():
        return list(ds.files)
    return [f for f in ds.files if not _ok(folder / f.path, f.md5)]


def _integrity_error(url: str, got: str, size: int, f: DataFile, target: Path) -> DataIntegrityError:
    return DataIntegrityError(
        f"{url} gave {size} bytes with md5 {got}, but {f.path} must have md5 {f.md5}: a truncated "
        f"download, or the source no longer serves this file. The partial file was deleted and "
        f"{target} was not written. Run the command again; if the md5 differs again, get the file "
        f"another way (data/README.md).")


def download(url: str, target: Path, f: DataFile) -> int:
    """Fetch ``url`` (``http(s)://`` or ``file://``) to ``target`` if its md5 is ``f.md5``.

    The bytes go to a temporary file beside ``target``, renamed once verified. Returns the
    number of bytes. Raises :class:`FetchError` (unreachable, HTTP error) or
    :class:`DataIntegrityError` (wrong md5); neither leaves a file behind.
    """
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    except ValueError as err:
        raise FetchError(f"{url!r} is not a URL ({err}); {URL_ENV} must start with http://, "
                         "https:// or file://") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp, h, size = Path(tmp_name), hashlib.md5(), 0
    try:
        try:
            with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    fh.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        except urllib.error.HTTPError as err:
            raise FetchError(f"{url}: the server answered {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise FetchError(f"{url}: cannot reach it ({err.reason})") from None
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, short reads
            raise FetchError(f"{url}: the transfer failed ({err})") from None
        if h.hexdigest() != f.md5:
            raise _integrity_error(url, h.hexdigest(), size, f, target)
        os.replace(tmp, target)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def _medmnist_download(f: DataFile, target: Path) -> int:
    """medmnist's own download into a temporary folder beside ``target``, then verify and rename."""
    flag, size = f.medmnist
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        got = tmp / target.name
        try:
            _dataset_class(flag)(split="train", size=size, root=str(tmp), download=True)
        except RuntimeError as err:
            cause = err.__context__ or err  # medmnist replaces the reason with a generic message
            if got.is_file() and not isinstance(cause, (OSError, http.client.HTTPException)):
                # torchvision keeps a complete download whose md5 is wrong
                raise _integrity_error(f.url, _md5(got), got.stat().st_size, f, target) from None
            raise FetchError(f"{f.url} (through medmnist): {cause}") from None
        if _md5(got) != f.md5:
            raise _integrity_error(f.url, _md5(got), got.stat().st_size, f, target)
        n = got.stat().st_size
        os.replace(got, target)
        return n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _obtain(ds: DataSet, f: DataFile, target: Path, shared: Path | None,
            base_url: str | None) -> tuple[str, int]:
    """Put ``f`` at ``target``: from the shared copy when it has it, else from the network."""
    local = shared / ds.name / f.path if shared is not None else None
    if local is not None and local.is_file():
        try:
            return "copied", download(local.resolve().as_uri(), target, f)
        except DataIntegrityError:
            pass  # the shared copy is damaged: the network may still have the right file
    if base_url:
        return "downloaded", download(f"{base_url.rstrip('/')}/{ds.name}/{quote(f.path)}", target, f)
    if f.medmnist is not None:
        return "downloaded", _medmnist_download(f, target)
    return "downloaded", download(f.url, target, f)


def fetch_medmnist_file(name: str, size: int = 28, folder: str | os.PathLike | None = None,
                        base_url: str | None = None) -> Path:
    """Download any MedMNIST file into ``folder`` (default ``data/medmnist/``), md5-verified and
    atomically, through medmnist's own download (or the mirror ``$MEDGAN_DATA_URL``); what
    ``find_medmnist(download=True)`` and ``medgan download`` do. Returns its path.

    Raises:
        FetchError: unreachable source. DataIntegrityError: wrong md5 (nothing is written).
    """
    info, key = dataset_info(name), "" if size == 28 else f"_{size}"
    f = DataFile(file_name(name, size), info[f"MD5{key}"], info[f"url{key}"], (name, size))
    target = Path(folder if folder is not None else DATA_DIR / "medmnist") / f.path
    base_url = base_url if base_url is not None else os.environ.get(URL_ENV) or None
    _obtain(DataSet("medmnist", (f,), "MedMNIST", ""), f, target, None, base_url)
    return target


def _unique(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser().resolve()
        if p not in out:
            out.append(p)
    return out


def _not_found_message(ds: DataSet, searched: dict[Path, int], reason: str) -> str:
    lines = [f"  - {p} (no such folder)" if not p.is_dir() else
             f"  - {p} ({n} of {len(ds.files)} files missing or with another md5)"
             for p, n in searched.items()]
    extra = ("  * or export MEDMNIST_ROOT=FOLDER, a folder that holds the .npz files;\n"
             if ds.name == "medmnist" else "")
    return (
        f"could not fetch {ds.name}: {reason}\n"
        f"{ds.name} ({len(ds.files)} files; used by {ds.used_by}) is complete nowhere on this "
        f"machine. Searched:\n" + "\n".join(lines) + "\n"
        f"Fix one of these ways:\n"
        f"  * connect to the internet and run again: make data "
        f"(or: python -m medgan_utils.data.fetch {ds.name});\n"
        f"  * put the course's offline copy (a folder with medmnist/, ct_mri/, ixi_pair/) at "
        f"{SHARED_DATA}, or pass --shared FOLDER;\n"
        f"  * fetch from a mirror laid out like it: {URL_ENV}=https://HOST/PATH (or "
        f"file:///PATH) make data;\n{extra}"
        f"Sources, licences and md5s: data/README.md.")


def fetch_dataset(ds: DataSet, dest: Path = DATA_DIR, *, shared: Path | None = SHARED_DATA,
                  base_url: str | None = None, medmnist_roots: Sequence[Path] | None = None,
                  log: Callable[[str], None] = print) -> Fetched:
    """Make ``ds`` available (see the module docstring) and say what was done.

    Args:
        ds: one entry of :func:`datasets`.
        dest: the folder that receives ``<set>/`` (default ``data/``).
        shared: the offline copy laid out like ``../shared/data`` (None: none).
        base_url: a mirror laid out the same way (default ``$MEDGAN_DATA_URL``).
        medmnist_roots: where MedMNIST files count as present (default: the loader's
            :func:`search_roots`; ``dest/medmnist`` is always included).

    Raises:
        FetchError: a missing file could not be fetched (the message says what to do).
        DataIntegrityError: a fetched file had another md5 (it was deleted).
    """
    base_url = base_url if base_url is not None else os.environ.get(URL_ENV) or None
    target = (Path(dest) / ds.name).resolve()
    out = Fetched(ds.name)
    if ds.name == "medmnist":
        # One file at a time: the loader finds each file in the first root that holds it.
        roots = _unique([*(search_roots() if medmnist_roots is None else medmnist_roots), target])
        missing = {r: [f for f in ds.files if not _ok(r / f.path, f.md5)] for r in roots}
        for f in ds.files:
            where = next((r for r in roots if f not in missing[r]), None)
            if where is not None:
                out.paths[f.path] = where / f.path
    else:
        # A folder set is used where it is complete, else completed in data/<set>.
        roots = _unique([*([Path(shared) / ds.name] if shared is not None else []), target])
        missing = {r: _missing(ds, r) for r in roots}
        where = next((r for r in roots if not missing[r]), target)
        out.paths = {f.path: where / f.path for f in ds.files if f not in missing[where]}
    out.found = len(out.paths)
    todo = [f for f in ds.files if f.path not in out.paths]
    if not todo:
        folders = ([str(where)] if ds.name != "medmnist"
                   else sorted({str(p.parent) for p in out.paths.values()}))
        log(f"{ds.name}: {out.found} files verified in {', '.join(folders)} (nothing fetched)")
        return out

    out.replaced = sum((target / f.path).exists() for f in todo)
    source = f"the mirror {base_url}" if base_url else ds.source
    if shared is not None and (Path(shared) / ds.name).is_dir():
        source = f"{Path(shared) / ds.name} when there, else {source}"
    log(f"{ds.name}: fetching {len(todo)} of {len(ds.files)} files into {target} from {source}"
        + (f" ({out.replaced} present with another md5 are replaced)" if out.replaced else ""))
    if ds.name != "medmnist" and not (target / ".gitignore").exists():
        # Fetched data are not the repository's to commit (the CT/MRI licence forbids it).
        target.mkdir(parents=True, exist_ok=True)
        (target / ".gitignore").write_text("# written by medgan_utils.data.fetch\n*\n")
    with ThreadPoolExecutor(1 if ds.name == "medmnist" else WORKERS) as pool:
        jobs = {pool.submit(_obtain, ds, f, target / f.path, shared, base_url): f for f in todo}
        try:
            for job in as_completed(jobs):
                how, size = job.result()
                setattr(out, how, getattr(out, how) + 1)
                out.bytes += size
                out.paths[jobs[job].path] = target / jobs[job].path
        except BaseException as err:
            for job in jobs:
                job.cancel()
            if isinstance(err, FetchError):
                searched = {r: len(m) for r, m in missing.items()}
                if ds.name == "medmnist" and shared is not None:  # looked there for copies too
                    copies = (Path(shared) / ds.name).resolve()
                    searched.setdefault(copies, len(_missing(ds, copies)))
                raise FetchError(_not_found_message(ds, searched, str(err))) from None
            raise
    log(f"{ds.name}: {out.copied + out.downloaded} files fetched into {target}, md5 verified "
        f"(copied {out.copied}, downloaded {out.downloaded}, {out.bytes / 1e6:.1f} MB); "
        f"{out.found} were already there")
    return out


def fetch_datasets(names: Iterable[str] | None = None, dest: str | os.PathLike = DATA_DIR, *,
          shared: str | os.PathLike | None = SHARED_DATA, base_url: str | None = None,
          manifest: str | os.PathLike | None = None, log: Callable[[str], None] = print,
          **kwargs) -> dict[str, Fetched]:
    """Make every named data set (default: all of :func:`datasets`) available; see
    :func:`fetch_dataset` for the arguments. Raises :class:`FetchError` with what to do."""
    table = datasets(manifest)
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(table)}")
    shared = Path(shared) if shared else None
    return {n: fetch_dataset(table[n], Path(dest), shared=shared, base_url=base_url, log=log,
                             **kwargs) for n in names}


def find_dataset(name: str, root: str | os.PathLike | None = None, *,
                 shared: str | os.PathLike | None = SHARED_DATA, verify: bool = True,
                 manifest: str | os.PathLike | None = None) -> Path:
    """The folder holding the whole of data set ``name`` (``ct_mri``, ``ixi_pair``).

    Searched in order: ``root``, ``../shared/data/<name>``, ``data/<name>``; ``verify`` checks
    every md5 (else only that the files exist). MedMNIST files: use ``find_medmnist``.

    Raises:
        DataNotFoundError: complete in no searched folder; the message says how to fetch it.
    """
    table = datasets(manifest)
    if name not in table or name == "medmnist":
        raise ValueError(f"find_dataset knows {', '.join(n for n in table if n != 'medmnist')}; "
                         "MedMNIST files are found by find_medmnist")
    ds = table[name]
    roots = _unique([Path(p) for p in (root, shared and Path(shared) / name) if p]
                    + [DATA_DIR / name])
    for r in roots:
        complete = (not _missing(ds, r)) if verify else all((r / f.path).is_file() for f in ds.files)
        if complete:
            return r
    raise DataNotFoundError(
        f"{name} is complete in none of:\n" + "\n".join(f"  - {r}" for r in roots)
        + f"\nFetch it (needs the internet, {len(ds.files)} files): make data "
        f"(or: python -m medgan_utils.data.fetch {name}); see data/README.md.")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m medgan_utils.data.fetch",
        description="Make the course's data sets available under data/ (md5-verified); files "
                    "already present are kept, nothing is downloaded when ../shared/data has them.")
    p.add_argument("names", nargs="*", metavar="NAME", help="medmnist, ct_mri, ixi_pair (default: all)")
    p.add_argument("--all", action="store_true", help="every data set (the default)")
    p.add_argument("--dest", type=Path, default=DATA_DIR, help="receives <set>/ (default: %(default)s)")
    p.add_argument("--shared", default=str(SHARED_DATA),
                   help="offline copy laid out like ../shared/data, '' for none (default: %(default)s)")
    p.add_argument("--url", default=None, help=f"mirror laid out the same way (default: ${URL_ENV})")
    p.add_argument("--list", action="store_true", help="list the data sets and exit")
    ns = p.parse_args(argv)
    if ns.list:
        for ds in datasets().values():
            print(f"{ds.name:9} {len(ds.files):5} files  {ds.source}; used by {ds.used_by}")
        return 0
    try:
        fetch_datasets([] if ns.all else ns.names, ns.dest, shared=ns.shared or None, base_url=ns.url)
    except (FetchError, DataIntegrityError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
