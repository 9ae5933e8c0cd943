"""``medgan apply`` on a user's own scans: tiled inference equals whole-image inference, files are
read at their own size (16-bit PNG, NIfTI volumes), nothing is overwritten without ``force``,
unreadable inputs are named before anything is written, and the note lists every output.

A tiny super-resolution kind (nearest x2 upsampling + 3x3 convolutions) is registered for the
CLI test and removed afterwards."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from medgan_utils import cli, registry
from medgan_utils.apply import apply_tiled, apply_to_files
from medgan_utils.data import ImageReadError, read_images
from medgan_utils.registry import ModelKind


@dataclass(frozen=True)
class UpConfig:
    """A toy image-to-image model.

    Attributes:
        channels: image channels.
        scale: output side / input side.
        depth: 3x3 convolutions after the upsampling (receptive radius: depth output pixels).
    """

    channels: int = 1
    scale: int = 2
    depth: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class UpNet(nn.Module):
    def __init__(self, c: UpConfig):
        super().__init__()
        self.scale = c.scale
        self.convs = nn.Sequential(*[nn.Conv2d(c.channels, c.channels, 3, padding=1) for _ in range(c.depth)])

    def forward(self, x):
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return torch.tanh(self.convs(x))


class Upsampler:
    def __init__(self, config: UpConfig, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.net = UpNet(config).to(self.device)

    @torch.no_grad()
    def apply(self, x):
        return self.net(x)

    def modules(self):
        return {"net": self.net}


def make_model(**kw) -> Upsampler:
    torch.manual_seed(0)
    return Upsampler(UpConfig(**kw))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two 8-bit PNGs of different sizes in ``scans/`` (one in a subfolder)."""
    rng = np.random.default_rng(0)
    write_png(tmp_path / "scans" / "a.png", rng.integers(0, 256, (20, 30), dtype=np.uint8))
    write_png(tmp_path / "scans" / "sub" / "b.png", rng.integers(0, 256, (17, 11), dtype=np.uint8))
    return tmp_path / "scans"


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# --------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("scale, depth, overlap", [(2, 2, 1), (1, 3, 3), (3, 4, 2)])
def test_tiles_with_enough_overlap_equal_the_whole_image(scale, depth, overlap):
    model = make_model(scale=scale, depth=depth)  # receptive radius: ceil(depth / scale) input px
    x = torch.rand(1, 1, 45, 70) * 2 - 1
    whole = model.apply(x)
    tiled = apply_tiled(model, x, tile=16, overlap=overlap)  # 3 x 5 tiles of 15-16 px
    assert tiled.shape == (1, 1, 45 * scale, 70 * scale)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # Without context the tile borders differ: the test would notice broken stitching.
    assert (apply_tiled(model, x, tile=16, overlap=0) - whole).abs().max() > 1e-3
    # An image no larger than a tile goes in one piece.
    torch.testing.assert_close(apply_tiled(model, x[..., :16, :16], tile=16, overlap=0),
                               model.apply(x[..., :16, :16]), atol=0, rtol=0)


def test_a_model_of_the_wrong_size_is_named():
    model = make_model(scale=2)
    model.config = UpConfig(scale=4)  # claims 4x, makes 2x
    with pytest.raises(ValueError, match="not 4x larger"):
        apply_tiled(model, torch.zeros(1, 1, 8, 8))


# --------------------------------------------------------------------------- reading


def test_16_bit_png_and_nifti_volume_are_read_at_their_own_size(tmp_path):
    ramp = np.linspace(1000, 60000, 37 * 53).reshape(37, 53).astype(np.uint16)
    write_png(tmp_path / "ramp16.png", ramp)
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")  # really 16-bit
    vol = np.random.default_rng(1).integers(-1000, 2000, (20, 30, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")

    images, notes = read_images(tmp_path)
    assert [im.source for im in images] == ["ramp16.png"] + [f"vol.nii.gz[z={k}]" for k in range(4)]
    png = images[0]
    assert png.image.shape == (1, 37, 53) and png.index is None and png.stored_range == (1000, 60000)
    expected = (ramp - 1000.0) / 59000 * 2 - 1  # every 16-bit level kept, no resizing
    np.testing.assert_allclose(png.image[0].double().numpy(), expected, atol=1e-5)
    for k, im in enumerate(images[1:]):  # axial slices, (A-P rows, R-L columns) = (30, 20)
        assert im.image.shape == (1, 30, 20) and im.kind == "nifti" and im.index == k
        lo, hi = vol.min(), vol.max()  # one min-max for the whole volume
        np.testing.assert_allclose(im.image[0].double().numpy(),
                                   (vol[:, :, k].T[::-1, ::-1] - lo) / (hi - lo) * 2 - 1, atol=1e-5)
    assert any("37x53" in n for n in notes) and any("min-max" in n for n in notes)


# --------------------------------------------------------------------------- apply_to_files


def test_outputs_are_scaled_named_and_listed_in_the_note(scans, tmp_path):
    vol = np.random.default_rng(2).random((6, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    other = write_png(tmp_path / "elsewhere" / "a.png", np.zeros((4, 4), np.uint8))  # stem clash
    model, out = make_model(scale=2), tmp_path / "out"
    records = apply_to_files(model, [scans, tmp_path / "vol.nii.gz", other], out, tile=8, overlap=2,
                             checkpoint="")
    assert [r["source"] for r in records] == [
        str(scans / "a.png"), str(scans / "sub" / "b.png"),
        *[str(tmp_path / f"vol.nii.gz[z={k}]") for k in range(3)], str(other)]
    stems = ["a", "sub/b", "vol_z000", "vol_z001", "vol_z002", "a-2"]
    assert [r["outputs"] for r in records] == [[f"{s}.png", f"{s}.npy"] for s in stems]
    assert [r["input_size"] for r in records] == [[20, 30], [17, 11], [5, 6], [5, 6], [5, 6], [4, 4]]
    assert [r["output_size"] for r in records] == [[40, 60], [34, 22], [10, 12], [10, 12], [10, 12], [8, 8]]
    assert records[0]["tiles"] == 3 * 4 and records[2]["tiles"] == 1

    note = json.loads((out / "apply_note.json").read_text())
    listed = {f for r in note["images"] for f in r["outputs"]}
    assert files_in(out) == listed | {"apply_note.json", "README.txt"}
    assert note["scale"] == 2 and note["tiling"] == {"tile": 8, "overlap": 2, "unit": "input pixels"}
    assert note["model"]["config"] == {"channels": 1, "scale": 2, "depth": 1}
    # 8-bit PNGs get the fixed mapping the course's models were trained with; the NIfTI volume min-max.
    assert "8-bit" in note["images"][0]["intensity"] and "stored 0 -> -1" in note["images"][-1]["intensity"]
    assert "min-max" in note["images"][2]["intensity"]
    assert "not for diagnosis" in (out / "README.txt").read_text()

    # The PNG and the .npy hold the model's output for the image as read: 0 -> -1, 255 -> 1.
    raw = torch.from_numpy(np.asarray(Image.open(scans / "a.png"), dtype=np.float32))
    x = (raw / 127.5 - 1)[None, None]
    minmax = read_images(scans / "a.png")[0][0].image[None]
    assert not torch.allclose(x, minmax)  # the file does not span 0-255, so the two mappings differ
    y = model.apply(x)[0, 0].numpy()
    np.testing.assert_allclose(np.load(out / "a.npy"), y, atol=1e-6)
    assert np.load(out / "a.npy").dtype == np.float32
    png = np.asarray(Image.open(out / "a.png"))
    assert png.dtype == np.uint8 and png.shape == (40, 60)
    assert np.abs(png.astype(float) - (y + 1) * 127.5).max() <= 0.5 + 1e-3


def test_existing_outputs_are_refused_before_anything_is_written_and_force_overwrites(scans, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "b.npy").write_bytes(b"old")  # one of the planned outputs
    with pytest.raises(FileExistsError, match=r"sub/b\.npy.*--force"):
        apply_to_files(make_model(), [scans], out)
    assert files_in(out) == {"sub/b.npy"} and (out / "sub" / "b.npy").read_bytes() == b"old"

    apply_to_files(make_model(), [scans], out, force=True)
    assert np.load(out / "sub" / "b.npy").shape == (34, 22)
    before = (out / "a.npy").read_bytes()
    with pytest.raises(FileExistsError, match="6 output file"):  # 2 x (png, npy), note, README
        apply_to_files(make_model(depth=2), [scans], out)
    assert (out / "a.npy").read_bytes() == before


def test_unreadable_input_is_named_and_nothing_is_written(scans, tmp_path):
    (scans / "broken.png").write_text("not a png")
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match="broken.png"):
        apply_to_files(make_model(), [scans], out)
    assert files_in(out) == set()


def test_a_scale_the_model_does_not_have_is_explained(scans, tmp_path):
    with pytest.raises(ValueError, match="--scale 4: this model enlarges its input 2x"):
        apply_to_files(make_model(scale=2), [scans], tmp_path / "out", scale=4)
    apply_to_files(make_model(scale=2), [scans], tmp_path / "out", scale=2)
    with pytest.raises(ValueError, match="replace the input"):  # outputs beside PNG inputs
        apply_to_files(make_model(scale=1), [scans], scans, force=True)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def sr_checkpoint(tmp_path) -> Path:
    from medgan_utils.pretrained import export

    registry.register(ModelKind("toy-sr", UpConfig, Upsampler, description="x2 toy (test)"), replace=True)
    try:
        yield export(make_model(scale=2), tmp_path / "toy-sr.safetensors", dataset="none")
    finally:
        registry.unregister("toy-sr")


def test_cli_applies_a_checkpoint_to_a_folder(sr_checkpoint, scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["apply", str(sr_checkpoint), str(scans), "--out", str(out), "--scale", "2",
                     "--tile", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert str(out / "a.png") in text and str(out / "apply_note.json") in text
    assert Image.open(out / "a.png").size == (60, 40) and np.load(out / "sub" / "b.npy").shape == (34, 22)
    note = json.loads((out / "apply_note.json").read_text())
    assert note["checkpoint"] == str(sr_checkpoint.resolve()) and note["model"]["kind"] == "toy-sr"
    assert note["model"]["dataset"] == "none"

    npz = tmp_path / "batch.npz"  # a MedMNIST-like file: one output per image
    np.savez(npz, images=np.zeros((2, 7, 9), np.uint8))
    assert cli.main(["apply", str(sr_checkpoint), str(npz), "--out", str(tmp_path / "o2")]) == 0
    assert np.load(tmp_path / "o2" / "batch_0001.npy").shape == (14, 18)

    for args, match in [(["--out", str(out)], "--force"),
                        (["--out", str(tmp_path / "o3"), "--scale", "4"], "--scale 4"),
                        (["--out", str(tmp_path / "o4"), "--window", "40", "0"], "width > 0")]:
        with pytest.raises(SystemExit, match=match):
            cli.main(["apply", str(sr_checkpoint), str(scans), *args])
    (scans / "notes.png").write_text("text")
    with pytest.raises(SystemExit, match="notes.png"):
        cli.main(["apply", str(sr_checkpoint), str(scans), "--out", str(tmp_path / "o5")])
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o5").exists()


def test_window_none_stretches_8_bit_files_too(scans, tmp_path):
    model = make_model(scale=1)
    rec = apply_to_files(model, [scans / "a.png"], tmp_path / "o", window=None)
    assert rec[0]["intensity"].startswith("min-max")


def test_an_inpainting_model_takes_a_mask_file_and_keeps_every_known_pixel(tmp_path):
    from medgan_utils.models.recon import ReconConfig, ReconModel

    torch.manual_seed(0)
    model = ReconModel(ReconConfig(task="inpaint", width=8))
    img = (np.arange(48 * 40).reshape(48, 40) % 251).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "slice.png")
    hole = np.zeros((48, 40), np.uint8)
    hole[10:20, 5:25] = 255
    Image.fromarray(hole).save(tmp_path / "hole.png")
    with pytest.raises(ValueError, match="--mask"):
        apply_to_files(model, [tmp_path / "slice.png"], tmp_path / "none")
    Image.fromarray(hole[:40]).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="must match"):
        apply_to_files(model, [tmp_path / "slice.png"], tmp_path / "bad", mask=tmp_path / "small.png")
    Image.fromarray(np.zeros_like(hole)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no pixel"):
        apply_to_files(model, [tmp_path / "slice.png"], tmp_path / "bad", mask=tmp_path / "empty.png")
    records = apply_to_files(model, [tmp_path / "slice.png"], tmp_path / "out", mask=tmp_path / "hole.png")
    assert records[0]["hole_fraction"] == pytest.approx(200 / (48 * 40), abs=1e-6)
    out = np.asarray(Image.open(tmp_path / "out" / "slice.png"))
    known = hole == 0
    assert np.array_equal(out[known], img[known])  # outside the hole the input is copied through
    assert not np.array_equal(out[~known], img[~known])
    lowdose = ReconModel(ReconConfig(task="lowdose", width=8))
    with pytest.raises(ValueError, match="inpainting"):
        apply_to_files(lowdose, [tmp_path / "slice.png"], tmp_path / "ld", mask=tmp_path / "hole.png")
