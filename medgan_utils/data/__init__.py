"""Data: MedMNIST (offline, verified), the fast tensor path, paired/unpaired loaders for the
image-to-image chapters, and helpers every chapter needs."""

from .degrade import (
    apply_mask,
    box_mask,
    downsample,
    gaussian_blur,
    gaussian_noise,
    poisson_noise,
    rician_noise,
    stroke_mask,
    upsample,
)
from .folder import ImageFolder, ImageReadError, NativeImage, load_image_folder, read_images
from .medmnist import (
    SIZES,
    SPLITS,
    Arrays,
    DataIntegrityError,
    DataNotFoundError,
    TensorLoader,
    dataset_info,
    file_name,
    find_medmnist,
    load_arrays,
    load_medmnist,
    medmnist_2d_names,
    search_roots,
    to_float,
    to_uint8,
    verify_file,
)
from .paired import PairedLoader, UnpairedLoader, make_sr_pairs
from .splits import label_histogram, partition_clients, stratified_subset

__all__ = [
    "SIZES", "SPLITS", "Arrays", "DataIntegrityError", "DataNotFoundError", "TensorLoader",
    "dataset_info", "file_name", "find_medmnist", "load_arrays", "load_medmnist",
    "medmnist_2d_names", "search_roots", "to_float", "to_uint8", "verify_file",
    # splits.py
    "label_histogram", "partition_clients", "stratified_subset",
    # degrade.py
    "apply_mask", "box_mask", "downsample", "gaussian_blur", "gaussian_noise", "poisson_noise", "rician_noise",
    "stroke_mask", "upsample",
    # fetch.py
    "FetchError", "fetch_datasets", "fetch_medmnist_file", "find_dataset",
    # folder.py
    "ImageFolder", "ImageReadError", "NativeImage", "load_image_folder", "read_images",
    # paired.py
    "PairedLoader", "UnpairedLoader", "make_sr_pairs",
]

# fetch.py also runs as a script (python -m medgan_utils.data.fetch): imported on first use, so
# that running it does not find it already imported (runpy's RuntimeWarning).
_FETCH = ("FetchError", "fetch_datasets", "fetch_medmnist_file", "find_dataset")


def __getattr__(name: str):
    if name in _FETCH:
        from . import fetch

        return getattr(fetch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
