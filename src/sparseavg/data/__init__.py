"""Data sets as tensors on the training device, batched by index slices, augmented in batches.

``load_dataset(name)`` returns a :class:`Dataset` whose splits are :class:`BatchSource` s;
:class:`Split` holds in-memory tensors, ``LoaderSplit`` wraps a DataLoader for folder data.
"""

from sparseavg.data.augment import Augmentation
from sparseavg.data.dataset import Dataset
from sparseavg.data.errors import DataFileError, DataUnavailableError
from sparseavg.data.loader_split import LoaderSplit
from sparseavg.data.registry import available_datasets, load_dataset, register_dataset
from sparseavg.data.split import BatchSource, Split, carve_validation

__all__ = [
    "Augmentation",
    "BatchSource",
    "DataFileError",
    "DataUnavailableError",
    "Dataset",
    "LoaderSplit",
    "Split",
    "available_datasets",
    "carve_validation",
    "load_dataset",
    "register_dataset",
]
