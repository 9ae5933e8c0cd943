"""Fetching the course's data sets (medgan_utils.data.fetch), never from the internet.

Every download here comes from a mirror built in a temporary folder, served by an
``http.server`` on 127.0.0.1 (an ephemeral port, shut down after each test) or read through a
``file://`` URL; the "offline" source is the discard port 127.0.0.1:9, where nothing listens.
MedMNIST's INFO entries are pointed at tiny files made here, so medmnist's own download runs too.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from medgan_utils.data import DataIntegrityError, DataNotFoundError, FetchError, find_medmnist
from medgan_utils.data import fetch as fm
from medgan_utils.data import medmnist as mm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OFFLINE = "http://127.0.0.1:9/"  # the discard port: connection refused at once
FOLDER_FILES = {"ct_mri/ct/ct8.png": b"\x89PNG fake CT slice 8",
                "ct_mri/ct/ct10.png": b"\x89PNG fake CT slice 10",
                "ct_mri/mri/mri9.jpg": b"\xff\xd8 fake MRI slice 9",
                "ixi_pair/IXI002-Guys-0828-T1_slice90.nii.gz": b"fake T1",
                "ixi_pair/IXI002-Guys-0828-T2_slice90.nii.gz": b"fake T2"}


def _tiny_npz(path: Path, size: int, seed: int) -> str:
    """A MedMNIST-layout file with a few images; returns its md5."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in {"train": 6, "val": 2, "test": 2}.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    """A folder laid out like ../shared/data with tiny files, its manifest at
    ``tmp_path/MANIFEST.md5``, and medmnist's INFO carrying the tiny files' md5s."""
    import medmnist

    root = tmp_path / "mirror"
    lines = []
    for seed, (flag, size) in enumerate(fm.MEDMNIST_FILES):
        name = fm.file_name(flag, size)
        md5 = _tiny_npz(root / "medmnist" / name, size, seed)
        entry = copy.deepcopy(medmnist.INFO[flag])
        entry["MD5" if size == 28 else f"MD5_{size}"] = md5
        monkeypatch.setitem(medmnist.INFO, flag, entry)
        lines.append(f"{md5}  medmnist/{name}")
    for rel, data in FOLDER_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        lines.append(f"{hashlib.md5(data).hexdigest()}  {rel}")
    (tmp_path / "MANIFEST.md5").write_text("\n".join(lines) + "\n")
    monkeypatch.delenv(fm.URL_ENV, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # urllib must not send 127.0.0.1 to a proxy
    return root


class _Server:
    """``http.server`` on 127.0.0.1 serving ``folder``; ``requests`` lists the paths asked for."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # quiet, but remember what was asked for
                outer.requests.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(mirror):
    srv = _Server(mirror)
    yield srv
    srv.close()


def _fetch(tmp_path, names=None, dest=None, **kwargs):
    """fetch_datasets() into ``tmp_path/data`` with the mirror's manifest, seeing no shared copy, no
    MedMNIST root and no network unless told otherwise."""
    kwargs = {"shared": None, "medmnist_roots": [], "base_url": OFFLINE, **kwargs}
    logged: list[str] = []
    out = fm.fetch_datasets(names, dest or tmp_path / "data", manifest=tmp_path / "MANIFEST.md5",
                   log=logged.append, **kwargs)
    return out, "\n".join(logged)


def _assert_complete(folder: Path, mirror: Path) -> None:
    for path in mirror.rglob("*"):
        if path.is_file():
            got = folder / path.relative_to(mirror)
            assert got.read_bytes() == path.read_bytes(), got
    assert not list(folder.rglob("*.tmp")), "a temporary file was left behind"


# --------------------------------------------------------------------------- the table


def test_table_lists_every_course_file_with_its_pinned_source():
    import medmnist

    table = fm.datasets()
    manifest = fm.read_manifest()
    assert list(table) == ["medmnist", "ct_mri", "ixi_pair"]
    for f in table["medmnist"].files:
        flag, size = f.medmnist
        key = "" if size == 28 else f"_{size}"
        assert f.md5 == medmnist.INFO[flag][f"MD5{key}"] == manifest[f"medmnist/{f.path}"]
    ct = table["ct_mri"].files
    assert len(ct) == 1488 and sum(f.path.startswith("ct/") for f in ct) == 744
    assert all(f.url == fm.CT_MRI_REPO + f.path for f in ct)
    assert "/f77a4006bc7da3c60ec536fa1fa9ce819fa6b22e/data/" in fm.CT_MRI_REPO
    ixi = table["ixi_pair"].files
    assert [f.md5 for f in ixi] == ["9c250b1df38f71fdde5dae77d1cdf0c4",
                                    "49a589aa8bf987200c9a08d4a72179b5"]
    assert ixi[0].url.endswith("/b5329d07fbbc731b751262cf40f1d81ceb753755/Input/"
                               "IXI002-Guys-0828-T1_slice90.nii.gz")


def test_manifest_repeats_the_shared_copys_manifest():
    src = SHARED / "ct_mri" / "MANIFEST.md5"
    if not src.is_file():
        pytest.skip(f"no {src}")
    ours = [line.replace("  ct_mri/", "  ", 1) for line in
            (REPO / "data" / "MANIFEST.md5").read_text().splitlines() if "  ct_mri/" in line]
    assert ours == src.read_text().splitlines()


# --------------------------------------------------------------------------- fetching


def test_fetch_from_a_local_http_server_into_an_empty_data_folder(tmp_path, mirror, server):
    out, log = _fetch(tmp_path, base_url=server.url)
    data = tmp_path / "data"
    _assert_complete(data, mirror)
    assert {n: (r.downloaded, r.found) for n, r in out.items()} == {
        "medmnist": (3, 0), "ct_mri": (3, 0), "ixi_pair": (2, 0)}
    assert out["ct_mri"].paths["ct/ct8.png"] == (data / "ct_mri" / "ct" / "ct8.png").resolve()
    assert "ct_mri: 3 files fetched into" in log and "md5 verified" in log
    # The fetched folders keep themselves out of git (the CT/MRI licence forbids redistribution).
    assert (data / "ct_mri" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert len(server.requests) == 8


def test_fetch_from_a_file_url(tmp_path, mirror):
    out, _ = _fetch(tmp_path, base_url=mirror.as_uri())
    _assert_complete(tmp_path / "data", mirror)
    assert sum(r.downloaded for r in out.values()) == 8


def test_verified_files_are_not_fetched_again(tmp_path, mirror, server):
    data = tmp_path / "data"
    (data / "ct_mri" / "ct").mkdir(parents=True)
    (data / "ct_mri" / "ct" / "ct8.png").write_bytes(FOLDER_FILES["ct_mri/ct/ct8.png"])
    (data / "ct_mri" / "mri").mkdir()
    (data / "ct_mri" / "mri" / "mri9.jpg").write_bytes(b"a damaged copy")
    out, log = _fetch(tmp_path, ["ct_mri"], base_url=server.url)
    assert sorted(server.requests) == ["/ct_mri/ct/ct10.png", "/ct_mri/mri/mri9.jpg"]
    assert (out["ct_mri"].found, out["ct_mri"].downloaded, out["ct_mri"].replaced) == (1, 2, 1)
    assert "1 present with another md5 are replaced" in log
    _assert_complete(data / "ct_mri", mirror / "ct_mri")

    server.requests.clear()
    out, log = _fetch(tmp_path, base_url=server.url)
    assert all(not r.startswith("/ct_mri/") for r in server.requests)
    assert out["ct_mri"].found == 3 and "ct_mri: 3 files verified in" in log
    out, log = _fetch(tmp_path, base_url=OFFLINE)  # everything present: no network needed
    assert "(nothing fetched)" in log and sum(r.downloaded for r in out.values()) == 0


def test_wrong_md5_is_rejected_and_leaves_no_file(tmp_path, mirror, server):
    (mirror / "ixi_pair" / "IXI002-Guys-0828-T2_slice90.nii.gz").write_bytes(b"fake T2, trunc")
    with pytest.raises(DataIntegrityError) as err:
        _fetch(tmp_path, ["ixi_pair"], base_url=server.url)
    msg = str(err.value)
    target = tmp_path / "data" / "ixi_pair" / "IXI002-Guys-0828-T2_slice90.nii.gz"
    assert hashlib.md5(FOLDER_FILES["ixi_pair/IXI002-Guys-0828-T2_slice90.nii.gz"]).hexdigest() in msg
    assert "partial file was deleted" in msg and str(target.resolve()) in msg
    assert not target.exists()
    assert not list((tmp_path / "data").rglob("*.tmp"))


def test_offline_says_what_was_searched_and_what_to_do(tmp_path, mirror):
    shared = tmp_path / "no_shared"
    with pytest.raises(FetchError) as err:
        _fetch(tmp_path, ["ixi_pair"], shared=shared)
    msg = str(err.value)
    assert "http://127.0.0.1:9/ixi_pair/IXI002-Guys-0828-T" in msg and "cannot reach" in msg
    assert f"{(shared / 'ixi_pair').resolve()} (no such folder)" in msg
    assert f"{(tmp_path / 'data' / 'ixi_pair').resolve()} (2 of 2 files missing" in msg
    for fix in ("make data", "python -m medgan_utils.data.fetch ixi_pair", fm.URL_ENV,
                "--shared FOLDER", "data/README.md"):
        assert fix in msg
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.name != ".gitignore"]


def test_shared_copy_is_used_without_the_network(tmp_path, mirror):
    out, log = _fetch(tmp_path, shared=mirror)  # base_url is the dead port
    assert out["ct_mri"].found == 3 and out["ct_mri"].paths["ct/ct8.png"] == (
        mirror / "ct_mri" / "ct" / "ct8.png").resolve()
    assert f"ct_mri: 3 files verified in {mirror.resolve() / 'ct_mri'} (nothing fetched)" in log
    # The loader does not look in ../shared/data/medmnist (only $MEDMNIST_ROOT points there), so
    # the MedMNIST files are copied from it, checked like a download.
    assert out["medmnist"].copied == 3 and out["medmnist"].downloaded == 0
    _assert_complete(tmp_path / "data" / "medmnist", mirror / "medmnist")
    assert fm.find_dataset("ixi_pair", shared=mirror,
                           manifest=tmp_path / "MANIFEST.md5") == (mirror / "ixi_pair").resolve()


def test_medmnist_files_come_through_medmnists_own_download(tmp_path, mirror, server, monkeypatch):
    import medmnist

    for flag, size in fm.MEDMNIST_FILES:
        key = "" if size == 28 else f"_{size}"
        medmnist.INFO[flag][f"url{key}"] = f"{server.url}medmnist/{fm.file_name(flag, size)}"
    out, _ = _fetch(tmp_path, ["medmnist"], base_url="")  # no mirror: medmnist's URLs
    assert out["medmnist"].downloaded == 3
    _assert_complete(tmp_path / "data" / "medmnist", mirror / "medmnist")
    # find_medmnist(download=True) (what `medgan download` runs) goes the same way; the repo's
    # data/medmnist and ~/.medmnist may hold real files on a developer machine: look elsewhere.
    monkeypatch.delenv("MEDMNIST_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(mm, "REPO_ROOT", tmp_path / "repo")
    path = find_medmnist("breastmnist", 64, root=tmp_path / "dl", download=True)
    assert path == (tmp_path / "dl" / "breastmnist_64.npz").resolve()

    # A wrong file from medmnist's download: rejected, nothing left under any name.
    medmnist.INFO["breastmnist"]["url_64"] = f"{server.url}medmnist/pneumoniamnist.npz"
    with pytest.raises(DataIntegrityError, match="partial file was deleted"):
        find_medmnist("breastmnist", 64, root=tmp_path / "dl3", download=True)
    assert not list((tmp_path / "dl3").glob("*"))

    medmnist.INFO["breastmnist"]["url"] = OFFLINE + "breastmnist.npz"
    with pytest.raises(FetchError, match=r"127\.0\.0\.1:9/breastmnist\.npz \(through medmnist\)"):
        _fetch(tmp_path, ["medmnist"], dest=tmp_path / "other", base_url="")
    with pytest.raises(DataNotFoundError, match="The download failed"):
        find_medmnist("breastmnist", root=tmp_path / "dl2", download=True)
    assert not list((tmp_path / "dl2").glob("*"))


def test_find_dataset_names_the_fix(tmp_path, mirror):
    with pytest.raises(DataNotFoundError) as err:
        fm.find_dataset("ct_mri", tmp_path / "nowhere", shared=None,
                        manifest=tmp_path / "MANIFEST.md5")
    assert str(tmp_path / "nowhere") in str(err.value) and "make data" in str(err.value)
    with pytest.raises(ValueError, match="find_medmnist"):
        fm.find_dataset("medmnist")


def test_command_line_reports_the_failure(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.setattr(fm, "MANIFEST", tmp_path / "MANIFEST.md5")
    assert fm.main(["ixi_pair", "--dest", str(tmp_path / "data"), "--shared", "",
                    "--url", OFFLINE]) == 1
    assert "error: could not fetch ixi_pair" in capsys.readouterr().err
    assert fm.main(["ixi_pair", "--dest", str(tmp_path / "data"), "--shared", "",
                    "--url", mirror.as_uri()]) == 0
    assert "ixi_pair: 2 files fetched" in capsys.readouterr().out
    assert fm.main(["mnist"]) == 1
    assert "unknown data set(s) mnist" in capsys.readouterr().err
