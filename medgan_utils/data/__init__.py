"""Data: MedMNIST (offline, verified), the fast tensor path, and helpers every chapter needs."""

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

__all__ = [
    "SIZES", "SPLITS", "Arrays", "DataIntegrityError", "DataNotFoundError", "TensorLoader",
    "dataset_info", "file_name", "find_medmnist", "load_arrays", "load_medmnist",
    "medmnist_2d_names", "search_roots", "to_float", "to_uint8", "verify_file",
]
