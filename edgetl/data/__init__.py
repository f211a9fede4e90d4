"""Datasets without torch: scan ImageFolders and CSV manifests, check images, write the sample sets.

Training wraps :class:`edgetl.data.folder.Samples` in
:class:`edgetl.training.datasets.ImageDataset` (torch); everything here also runs where
torch is absent (``edgetl data …``, the device).
"""
