"""Images decoded from their files batch by batch, for datasets too large to hold in memory.

An ImageStream stands where the in-memory path has a uint8 tensor N x 3 x S x S: `len`, `shape`,
and indexing with a batch of indices (a tensor, list or slice), which decodes that batch with the
reader's own decode (image_folders.ImageDecode), so both paths see the same pixels. Memory holds the
batches being decoded, never the dataset. `to_device(device)` gives the view the evaluation code
indexes: float in [0, 1] on the device, as `to_input` makes of a tensor.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline_src.data.image_folders import ImageDecode, decode_file


class ImageStream:
    def __init__(self, folder: str | Path, files: np.ndarray, decode: ImageDecode, workers: int = 1,
                 device: torch.device | None = None):
        self.folder, self.files, self.decode = Path(folder), files, decode
        self.size = decode.size
        self.workers = max(1, workers)
        self.device = device  # None: uint8 on the CPU; else float in [0, 1] on this device
        # threads, not processes: PIL releases the GIL while it decodes and resizes
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.files), 3, self.size, self.size

    def to_device(self, device: torch.device) -> "ImageStream":
        view = ImageStream.__new__(ImageStream)
        view.__dict__.update(self.__dict__, device=device)
        return view

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            picked = range(len(self.files))[index]
        else:
            picked = torch.as_tensor(index).reshape(-1).tolist()
        decoded = self._pool.map(lambda i: decode_file(self.folder / str(self.files[i]), self.decode), picked)
        batch = torch.from_numpy(np.stack(list(decoded))) if picked else torch.empty(0, 3, self.size, self.size,
                                                                                     dtype=torch.uint8)
        return batch if self.device is None else to_input(batch, self.device)

    def prefetched(self, batches: list[torch.Tensor]):
        """The batches in order, uint8 on the CPU, each decoded while the one before it is used."""
        pending = None
        with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as ahead:
            for idx in batches:
                upcoming = ahead.submit(self.__getitem__, idx.cpu())
                if pending is not None:
                    yield pending.result()
                pending = upcoming
            if pending is not None:
                yield pending.result()


def to_input(x_uint8, device: torch.device):
    """uint8 images -> float in [0, 1] on the device; a stream becomes a view that converts each batch."""
    if isinstance(x_uint8, ImageStream):
        return x_uint8.to_device(device)
    x = x_uint8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and x.dim() == 4 else x
