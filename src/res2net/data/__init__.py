"""Data sets, readers and transforms (imports no model code)."""

from .fashion_mnist import load_fashion_mnist
from .images import (ImageFiles, classification_transforms, image_folder_split, load_cifar100, open_image,
                     skip_collate)
from .tensors import (TensorImageDataset, batch_collate, normalize, progressive_size, random_crop_flip,
                      resize_batch)

__all__ = ["ImageFiles", "TensorImageDataset", "batch_collate", "classification_transforms",
           "image_folder_split", "load_cifar100", "load_fashion_mnist", "normalize", "open_image", "progressive_size",
           "random_crop_flip", "resize_batch", "skip_collate"]
