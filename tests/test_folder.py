"""load_image_folder on real files: the CT/MRI course folder, DICOM and NIfTI from the pydicom and
nibabel wheels (never downloaded), and images written here (16-bit PNG, RGB JPEG, fake PNG)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from medgan_utils.data import ImageFolder, ImageReadError, load_image_folder, to_uint8

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def wheel_dicom(name: str) -> Path:
    """A DICOM test file shipped inside the pydicom wheel; ``download=False`` so never fetched."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom wheel (only downloadable)")
    return Path(path)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def ct_mri_subset(tmp_path_factory) -> Path:
    """10 CT PNG + 10 MRI JPEG from ../shared/data/ct_mri (incl. the grey, RGBA and palette
    files), in ct/ and mri/ subfolders, plus the manifest, which is not an image."""
    src = SHARED / "ct_mri"
    if not src.is_dir():
        pytest.skip(f"no {src}: the course's CT/MRI folder (see data/README.md)")
    root = tmp_path_factory.mktemp("ct_mri")
    picks = {"ct": sorted((src / "ct").glob("*.png"))[:10],
             "mri": sorted((src / "mri").glob("*.jpg"))[:7]
             + [src / "mri" / n for n in ("mri1169.jpg", "mri148.jpg", "mri1538.jpg")]}
    for sub, files in picks.items():
        (root / sub).mkdir()
        for f in files:
            shutil.copy(f, root / sub / f.name)
    shutil.copy(src / "MANIFEST.md5", root / "MANIFEST.md5")
    return root


# --------------------------------------------------------------------------- the course folder


def test_ct_mri_folder_loads_as_unit_range_tensor(ct_mri_subset):
    out = load_image_folder(ct_mri_subset, size=64)
    assert isinstance(out, ImageFolder) and len(out) == 20
    assert out.images.shape == (20, 1, 64, 64) and out.images.dtype == torch.float32
    assert out.images.min() >= -1 and out.images.max() <= 1
    assert out.sources[0].startswith("ct/ct") and out.sources[-1].startswith("mri/mri")
    assert out.sources == sorted(out.sources)
    # Min-max per file, then an antialiased shrink (which averages away single extreme pixels):
    # every image reaches black; CT bone stays white. Some MRI JPEGs owe their maximum to a few
    # white annotation pixels (mri148.jpg: 0.1 % at 255, the brain <= 127), so only "not dark".
    assert (out.images.amin(dim=(1, 2, 3)) < -0.99).all()
    assert (out.images[:10].amax(dim=(1, 2, 3)) > 0.9).all()
    assert (out.images[10:].amax(dim=(1, 2, 3)) > -0.5).all()
    text = "\n".join(out.notes)
    assert "min-max" in text and "grayscale" in text
    assert "MANIFEST.md5" in text  # ignored, and said so


def test_non_recursive_sees_only_the_top_level(ct_mri_subset):
    with pytest.raises(FileNotFoundError, match="no images found"):
        load_image_folder(ct_mri_subset, recursive=False)
    assert len(load_image_folder(ct_mri_subset / "ct", recursive=False)) == 10


def test_single_file_path(ct_mri_subset):
    out = load_image_folder(ct_mri_subset / "mri" / "mri148.jpg", size=32)  # RGBA (a PNG inside)
    assert out.images.shape == (1, 1, 32, 32) and out.sources == ["mri148.jpg"]


# --------------------------------------------------------------------------- written here


def test_16_bit_png_min_max_and_window_in_stored_units(tmp_path):
    values = np.linspace(1000, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    write_png(tmp_path / "ramp16.png", values)
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")  # really 16-bit
    out = load_image_folder(tmp_path, size=64).images[0, 0].double()
    expected = (values.astype(np.float64) - values.min()) / (values.max() - values.min()) * 2 - 1
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    # window=(30000, 20000) -> [20000, 40000] in raw 16-bit units, clipped outside.
    win = load_image_folder(tmp_path, size=64, window=(30000, 20000)).images[0, 0].double()
    expected = np.clip((values.astype(np.float64) - 20000) / 20000, 0, 1) * 2 - 1
    np.testing.assert_allclose(win.numpy(), expected, atol=1e-5)


def test_16_bit_levels_one_apart_stay_distinct_and_keep_range_returns_them(tmp_path):
    values = np.full((8, 8), 1000, dtype=np.uint16)
    values[4:] = 1001  # one 16-bit level apart
    values[0, 0], values[0, 1] = 0, 65535  # the full 16-bit range, so min-max cannot help
    write_png(tmp_path / "levels16.png", values)
    default = load_image_folder(tmp_path, size=8).images
    low, high = default[0, 0, 1, 0].item(), default[0, 0, 7, 0].item()
    # Float all the way: the two levels stay 2 / 65535 apart in [-1, 1] ...
    assert high - low == pytest.approx(2 / 65535, rel=1e-3)
    # ... where any 8-bit step (256 levels over the range) would merge them.
    as_8_bit = to_uint8(default)
    assert as_8_bit[0, 1, 0] == as_8_bit[0, 7, 0]
    out = load_image_folder(tmp_path, size=8, keep_range=True)
    np.testing.assert_array_equal(out.images[0, 0].numpy(), values.astype(np.float32))
    assert any("keep_range=True" in n for n in out.notes)


def test_rgb_jpeg_becomes_luma(tmp_path):
    rgb = np.zeros((48, 96, 3), dtype=np.uint8)
    rgb[:, :32, 0] = 255  # red
    rgb[:, 32:64, 1] = 255  # green
    rgb[:, 64:, 2] = 255  # blue
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    out = load_image_folder(tmp_path, size=96)
    img = out.images[0, 0]
    # 48 rows padded to 96: 24 rows of -1 above and below the picture.
    assert (img[:24] == -1).all() and (img[-24:] == -1).all()
    red, green, blue = (img[30:66, a:b].mean().item() for a, b in ((4, 28), (36, 60), (68, 92)))
    assert green > red > blue  # BT.709 weights 0.7152 > 0.2126 > 0.0722
    assert any("grayscale" in n for n in out.notes)


def test_aspect_kept_by_padding_not_cropping(tmp_path):
    tall = np.full((40, 20), 200, dtype=np.uint8)
    tall[0, 0] = 0  # some contrast, else min-max makes it all -1
    write_png(tmp_path / "tall.png", tall)
    img = load_image_folder(tmp_path, size=64).images[0, 0]
    # 40 x 20 -> 64 x 32, centred: 16 columns of padding on each side, the picture in between.
    assert (img[:, :16] == -1).all() and (img[:, 48:] == -1).all()
    assert (img[4:, 20:44] > 0.9).all()
    assert any("padded" in n for n in load_image_folder(tmp_path, size=64).notes)


def test_text_file_named_like_an_image_raises_with_its_name(tmp_path):
    write_png(tmp_path / "good.png", np.arange(256, dtype=np.uint8).reshape(16, 16))
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageReadError, match="notes.png") as err:
        load_image_folder(tmp_path)
    assert "on_error='skip'" in str(err.value)


def test_skip_warns_with_the_name_and_loads_the_rest(tmp_path):
    write_png(tmp_path / "good.png", np.arange(256, dtype=np.uint8).reshape(16, 16))
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "readme.txt").write_text("ignored: not an image by name")
    with pytest.warns(UserWarning, match="notes.png"):
        out = load_image_folder(tmp_path, size=16, on_error="skip")
    assert out.sources == ["good.png"]
    assert any("skipped 1" in n and "notes.png" in n for n in out.notes)
    assert any("readme.txt" in n for n in out.notes)


def test_empty_and_missing_folders_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        load_image_folder(tmp_path / "empty_dir")  # missing
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found in .*empty_dir"):
        load_image_folder(tmp_path / "empty_dir")
    (tmp_path / "empty_dir" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="1 other file"):
        load_image_folder(tmp_path / "empty_dir")


def test_only_unreadable_files_skipped_is_an_error(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(UserWarning, match="fake.jpg"), pytest.raises(FileNotFoundError, match="fake"):
        load_image_folder(tmp_path, on_error="skip")


@pytest.mark.parametrize("kwargs, match", [({"window": (40, 0)}, "width > 0"),
                                           ({"on_error": "ignore"}, "on_error"),
                                           ({"size": 0}, "size")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_image_folder(tmp_path, **kwargs)


# --------------------------------------------------------------------------- DICOM


def test_ct_dicom_hu_window_maps_known_values():
    path = wheel_dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # intercept -1024
    out = load_image_folder(path, size=128, window=(40, 400))  # native size: no resampling
    img = out.images[0, 0].double().numpy()
    # Soft-tissue window [-160, 240] HU: 40 HU (the centre) -> 0, 140 HU -> 0.5, ends -> -1/+1.
    assert np.all(img[hu == 40] == 0) and (hu == 40).sum() > 0
    np.testing.assert_allclose(img[hu == 140], 0.5, atol=1e-6)
    assert np.all(img[hu <= -160] == -1) and np.all(img[hu >= 240] == 1)
    np.testing.assert_allclose(img, np.clip((hu + 160) / 400, 0, 1) * 2 - 1, atol=1e-6)
    assert any("HU" in n and "center 40" in n for n in out.notes)


def test_ct_dicom_keep_range_gives_hounsfield_units():
    path = wheel_dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    raw = load_image_folder(path, size=128, keep_range=True).images[0, 0].double().numpy()
    np.testing.assert_array_equal(raw, hu)
    # With a window: clipped to [-160, 240] HU, still in HU.
    out = load_image_folder(path, size=128, window=(40, 400), keep_range=True)
    np.testing.assert_array_equal(out.images[0, 0].double().numpy(), np.clip(hu, -160, 240))
    assert any("keep_range=True" in n and "[-160, 240]" in n for n in out.notes)


def test_dicom_without_extension_and_dicom_without_pixels(tmp_path):
    shutil.copy(wheel_dicom("CT_small.dcm"), tmp_path / "IM0001")  # how PACS exports look
    shutil.copy(wheel_dicom("rtplan.dcm"), tmp_path / "plan.dcm")  # valid DICOM, no image
    out = load_image_folder(tmp_path, size=32)
    assert out.sources == ["IM0001"]
    assert any("plan.dcm" in n for n in out.notes)


def test_text_file_named_dcm_is_an_error_not_an_imageless_dicom(tmp_path):
    (tmp_path / "scan.dcm").write_text("hello, not a DICOM")
    with pytest.raises(ImageReadError, match="scan.dcm"):
        load_image_folder(tmp_path)


def test_monochrome1_is_inverted_so_bright_means_bright():
    path = wheel_dicom("dicomdirtests/77654033/CR1/6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = load_image_folder(path, size=ds.Rows).images[0, 0].numpy()
    stored = ds.pixel_array.astype(float)
    assert np.corrcoef(img.ravel(), stored.ravel())[0, 1] < -0.99
    assert img[np.unravel_index(stored.argmax(), stored.shape)] == -1


def test_multiframe_colour_dicom_gives_one_row_per_frame():
    out = load_image_folder(wheel_dicom("SC_rgb_rle_2frame.dcm"), size=32)
    assert out.images.shape == (2, 1, 32, 32)
    assert out.sources == ["SC_rgb_rle_2frame.dcm[frame=0]", "SC_rgb_rle_2frame.dcm[frame=1]"]


# --------------------------------------------------------------------------- NIfTI


def _marker_volume(affine: np.ndarray, right_anterior: tuple[int, int]) -> nib.Nifti1Image:
    vol = np.zeros((8, 8, 3), dtype=np.float32)
    vol[right_anterior[0], right_anterior[1], 1] = 100.0
    return nib.Nifti1Image(vol, affine)


@pytest.mark.parametrize("affine, voxel", [
    (np.diag([1.0, 1.0, 1.0, 1.0]), (7, 7)),  # RAS: right and anterior are the high indices
    (np.diag([-1.0, -1.0, 1.0, 1.0]), (0, 0)),  # LPS storage (DICOM-like): the low indices
])
def test_nifti_axial_slices_in_radiological_view(tmp_path, affine, voxel):
    nib.save(_marker_volume(affine, voxel), tmp_path / "vol.nii.gz")
    out = load_image_folder(tmp_path, size=8)
    assert out.sources == ["vol.nii.gz[z=0]", "vol.nii.gz[z=1]", "vol.nii.gz[z=2]"]
    # Anterior at the top, the patient's right on the image's left: the marker is top-left.
    middle = out.images[1, 0]
    assert middle[0, 0] == 1 and (middle.flatten()[1:] == -1).all()
    assert any("radiological" in n for n in out.notes)


def test_nifti_hu_volume_round_trips_with_keep_range(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3072, (8, 6, 3)).astype(np.int16)  # L-R x P-A x I-S, RAS affine
    hu[0, 0, 0] = -1024  # air: the volume's minimum, used as black for the padding
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii.gz")
    out = load_image_folder(tmp_path, size=8, keep_range=True).images[:, 0].double().numpy()
    # Each axial slice (6 x 8 as displayed: anterior up, patient's right on the left) lies
    # between one padding row of -1024 HU above and below, its HU values unchanged.
    for k in range(3):
        np.testing.assert_array_equal(out[k, 1:7], hu[:, :, k].T[::-1, ::-1])
        assert (out[k, [0, 7]] == -1024).all()


def test_nibabel_wheel_volumes_3d_and_4d(tmp_path):
    shutil.copy(NIBABEL_DATA / "anatomical.nii", tmp_path)
    shutil.copy(NIBABEL_DATA / "example4d.nii.gz", tmp_path)
    out = load_image_folder(tmp_path, size=32)
    # anatomical (33, 41, 25) -> 25 slices; example4d (128, 96, 24, 2) -> 24 slices of volume 0.
    assert out.images.shape == (49, 1, 32, 32)
    assert out.sources[0] == "anatomical.nii[z=0]" and out.sources[-1] == "example4d.nii.gz[z=23]"
    assert any("first volume" in n and "example4d" in n for n in out.notes)


def test_2d_nifti_slices_from_the_ixi_pair():
    folder = SHARED / "ixi_pair"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    out = load_image_folder(folder, size=64)
    assert out.images.shape == (2, 1, 64, 64)
    assert [s.split("_slice")[0][-2:] for s in out.sources] == ["T1", "T2"]
    # 150 x 256 (L-R x P-A): anterior-posterior is the long axis, so the padding is at the sides.
    assert (out.images[:, 0, :, :12] == -1).all()
    assert (out.images[:, 0, 20:44, 20:44] > -0.9).float().mean() > 0.9  # brain in the middle
