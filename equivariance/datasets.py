"""Handwritten digits for the seed's experiments: MNIST, an offline fallback, and canvases.

[`mnist`][equivariance.datasets.mnist] downloads and checks the official MNIST files once;
[`digits`][equivariance.datasets.digits] is the offline fallback (scikit-learn's 8x8 digits in MNIST's
layout); [`embed_in_canvas`][equivariance.datasets.embed_in_canvas] and
[`position_sweep`][equivariance.datasets.position_sweep] put digits on a larger canvas and move them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from equivariance._engine.validation import as_int, describe
from equivariance.errors import InvalidArgument

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DatasetUnavailable",
    "Digits",
    "data_dir",
    "digits",
    "embed_in_canvas",
    "mnist",
    "position_sweep",
    "read_idx",
]

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
)
"""Where [`mnist`][equivariance.datasets.mnist] downloads the official files from, tried in order."""

MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (
        9_912_422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        28_881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        1_648_877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
"""The official MNIST files: name -> (size in bytes, SHA-256)."""

_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX element types: the third byte of the magic number -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_DOWNLOAD_TIMEOUT_S = 60.0


class DatasetUnavailable(InvalidArgument):
    """A data set could not be loaded: missing offline, a failed download, a wrong checksum.

    The message names the file, where it was looked for, what went wrong and what to do (place the official
    files in the cache directory, or use the offline [`digits`][equivariance.datasets.digits]). It subclasses
    [`InvalidArgument`][equivariance.InvalidArgument].
    """


@dataclass(frozen=True, eq=False)
class Digits:
    """Digit images and their labels.

    Attributes:
        images: ``(N, 1, 28, 28)`` float32 in ``[0, 1]``, ink bright on a zero background.
        labels: ``(N,)`` int64, the digits 0 to 9.
        name: where the digits come from, e.g. ``"mnist-train"``.

    Examples:
        >>> import torch
        >>> data = Digits(torch.zeros(10, 1, 28, 28), torch.arange(10), "zeros")
        >>> len(data), data[2:5].labels.tolist()
        (10, [2, 3, 4])
        >>> train, val = data.split(0.8, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            raise InvalidArgument(
                f"images must be a tensor (N, C, H, W), found {_shape(self.images)}; add a channel dim, e.g. "
                "images[:, None]"
            )
        if not isinstance(self.labels, torch.Tensor) or tuple(self.labels.shape) != (self.images.shape[0],):
            raise InvalidArgument(
                f"labels must be a tensor ({len(self.images)},), one per image, found {_shape(self.labels)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: slice | torch.Tensor) -> Digits:
        return Digits(self.images[index], self.labels[index], self.name)

    def split(self, fraction: float = 0.8, *, seed: int = 0) -> tuple[Digits, Digits]:
        """A random split into two parts, the first with ``round(fraction * N)`` digits.

        The same ``seed`` gives the same split on every machine.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise InvalidArgument(
                f"fraction must be a number strictly between 0 and 1, found {describe(fraction)}"
            )
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(as_int(seed, "seed")))
        cut = round(fraction * len(self))
        first, second = self[order[:cut]], self[order[cut:]]
        return replace(first, name=f"{self.name}[:{cut}]"), replace(second, name=f"{self.name}[{cut}:]")

    def __repr__(self) -> str:
        return f"Digits({self.name!r}, {len(self)} images of {tuple(self.images.shape[1:])})"


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else describe(value)


# -- MNIST ----------------------------------------------------------------------------------------


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the MNIST files: ``root``, else ``$EQUIVARIANCE_DATA/mnist``, else the cache.

    Examples:
        >>> str(data_dir("/data/mnist"))
        '/data/mnist'
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise InvalidArgument(
                f"root must be a path or None, found {describe(root)}; pass e.g. root='~/.cache/mnist'"
            )
        return Path(root).expanduser()
    if os.environ.get("EQUIVARIANCE_DATA"):
        return Path(os.environ["EQUIVARIANCE_DATA"]).expanduser() / "mnist"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "equivariance" / "mnist"


def mnist(
    split: Literal["train", "test"] = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Digits:
    """The MNIST digits of ``split``: 60,000 for ``"train"``, 10,000 for ``"test"``.

    The files are read from [`data_dir`][equivariance.datasets.data_dir] and, if missing and ``download`` is
    true, downloaded there first from [`MNIST_MIRRORS`][equivariance.datasets.MNIST_MIRRORS]. Every file's
    SHA-256 must match [`MNIST_FILES`][equivariance.datasets.MNIST_FILES]. Images come as float32 in ``[0,
    1]``, ``(N, 1, 28, 28)``.

    Not run as a doctest, since it may download 11 MB:

    ```python
    train, test = mnist("train"), mnist("test")
    ```

    Args:
        split: ``"train"`` or ``"test"``.
        root: the directory holding the four files (default: see
            [`data_dir`][equivariance.datasets.data_dir]).
        download: whether to download missing files; with False a missing file raises
            [`DatasetUnavailable`][equivariance.datasets.DatasetUnavailable].

    Raises:
        DatasetUnavailable: a file is missing and cannot be downloaded, or its checksum is wrong.
    """
    if split not in _SPLITS:
        raise InvalidArgument(f"split must be 'train' or 'test', found {describe(split)}; pass split='test'")
    directory = data_dir(root)
    images_name, labels_name = _SPLITS[split]
    images = read_idx(_fetch(images_name, directory, download))
    labels = read_idx(_fetch(labels_name, directory, download))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetUnavailable(
            f"MNIST {split} files in {directory} hold images of shape {images.shape} and labels of shape "
            f"{labels.shape}; expected (N, 28, 28) and (N,); replace them with the official files"
        )
    return Digits(
        torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        f"mnist-{split}",
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into a numpy array.

    The format of the MNIST files: a magic number ``0x0000TTDD`` (``TT`` the element type, ``DD`` the number
    of dims), one big-endian uint32 per dim, then the elements, big-endian, in C order.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Raises:
        DatasetUnavailable: the file is not a well-formed IDX file.

    Examples:
        >>> import gzip, struct, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
        >>> with gzip.open(path, "wb") as f:
        ...     _ = f.write(struct.pack(">II", 0x0801, 3) + bytes([7, 2, 1]))
        >>> read_idx(path).tolist()
        [7, 2, 1]
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as compressed:
                data = compressed.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as error:
        raise DatasetUnavailable(f"cannot read {path}: {error}; replace it with the official file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetUnavailable(
            f"{path} is not an IDX file: its magic number is {data[:4].hex() or 'missing'}, expected 0000 "
            "followed by a type byte (08 for unsigned bytes) and the number of dims; replace it with the "
            "official file"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetUnavailable(f"{path} is truncated: its header needs {header} bytes, found {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetUnavailable(
            f"{path} declares dims {dims} ({expected} bytes of data) but holds {len(data) - header}; "
            "the file is truncated or corrupt, replace it with the official file"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _fetch(name: str, directory: Path, download: bool) -> Path:
    """The path of the official file ``name`` in ``directory``, downloaded if needed, checksum verified."""
    size, sha256 = MNIST_FILES[name]
    path = directory / name
    if path.is_file():
        found = _sha256(path)
        if found != sha256:
            raise DatasetUnavailable(
                f"{path} has SHA-256 {found}, expected {sha256} (the official {name}, {size:,} bytes); "
                "delete it to download it again, or replace it with the official file"
            )
        return path
    where = f"place the official {name} ({size:,} bytes) in {directory}"
    if not download:
        raise DatasetUnavailable(
            f"{name} is not in {directory} and download=False; {where}, pass download=True, or use the "
            "offline digits: equivariance.datasets.digits()"
        )
    failures = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        try:
            _download(url, path, sha256)
            return path
        except (OSError, ValueError) as error:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {error}")
    raise DatasetUnavailable(
        f"could not download {name}: {'; '.join(failures)}. Without internet access, {where} "
        "(or in $EQUIVARIANCE_DATA/mnist, or pass root=), or use the offline digits: "
        "equivariance.datasets.digits()"
    )


def _download(url: str, path: Path, sha256: str) -> None:
    """Download ``url`` to ``path`` through a temporary file; ValueError on a wrong checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"SHA-256 {digest.hexdigest()}, expected {sha256}")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the offline fallback -------------------------------------------------------------------------


def digits() -> Digits:
    """Scikit-learn's 1,797 handwritten digits, in MNIST's layout: offline, no download.

    The 8x8 images (values 0 to 16) are resized to 20x20 (bilinear), scaled to ``[0, 1]`` and padded by 4 on
    each side to 28x28, the way MNIST's digits sit in a 20x20 box centred in their square. They are coarser
    than MNIST's but real handwriting, enough to train the seed's LeNet to 97.8% validation accuracy in 10
    epochs (``python benchmarks/train_digits.py``).

    Raises:
        DatasetUnavailable: scikit-learn is not installed (``pip install 'equivariance[data]'``).

    Examples:
        >>> data = digits()
        >>> data.images.shape, data.labels[:5].tolist()
        (torch.Size([1797, 1, 28, 28]), [0, 1, 2, 3, 4])
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetUnavailable(
            "digits() needs scikit-learn, which is not installed; pip install 'equivariance[data]' "
            "(or pip install scikit-learn)"
        ) from None
    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 16.0
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    images = F.pad(box, (4, 4, 4, 4))
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Digits(images.contiguous(), labels, "sklearn-digits")


# -- canvases -------------------------------------------------------------------------------------


def embed_in_canvas(
    images: torch.Tensor,
    size: int | Sequence[int] = 38,
    offset: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Place images on a larger zero canvas, as the seed does with 28x28 digits on 38x38.

    ``offset`` is the (row, column) of each image's top-left corner on the canvas: one pair for all images, or
    one pair per image (a tensor or sequence of shape ``(N, 2)``); by default the images are centred (offset
    ``(size - 28) // 2``). Every image must fit entirely.

    Args:
        images: ``(N, C, H, W)``.
        size: the canvas's size, ``S`` for ``S x S`` or ``(S_h, S_w)``.
        offset: ``(row, column)`` for all images, or ``(N, 2)`` for one per image; None centres them.

    Returns:
        ``(N, C, S_h, S_w)``, the images' dtype and device.

    Examples:
        >>> import torch
        >>> canvas = embed_in_canvas(torch.ones(2, 1, 2, 2), size=4, offset=[(0, 0), (2, 1)])
        >>> canvas[1, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
    """
    images = _check_images(images, "images")
    n, _, height, width = images.shape
    canvas_h, canvas_w = _canvas_size(size)
    if offset is None:
        offsets = torch.tensor([[(canvas_h - height) // 2, (canvas_w - width) // 2]]).expand(n, 2)
    else:
        offsets = _offsets(offset, n)
    rows, columns = offsets[:, 0], offsets[:, 1]
    bad = (rows < 0) | (columns < 0) | (rows + height > canvas_h) | (columns + width > canvas_w)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise InvalidArgument(
            f"image {k} ({height}x{width}) at offset ({int(rows[k])}, {int(columns[k])}) does not fit on a "
            f"{canvas_h}x{canvas_w} canvas; offsets must lie in [0, {canvas_h - height}] x "
            f"[0, {canvas_w - width}]"
        )
    canvas = images.new_zeros(n, images.shape[1], canvas_h, canvas_w)
    device = images.device
    sample = torch.arange(n, device=device).view(n, 1, 1)
    row_index = (rows.to(device).view(n, 1) + torch.arange(height, device=device)).view(n, height, 1)
    column_index = (columns.to(device).view(n, 1) + torch.arange(width, device=device)).view(n, 1, width)
    # One indexed write for the whole batch, channels last so the index dims lead.
    canvas.permute(0, 2, 3, 1)[sample, row_index, column_index] = images.permute(0, 2, 3, 1)
    return canvas


def position_sweep(
    image: torch.Tensor,
    size: int = 38,
    path: Literal["horizontal", "vertical", "diagonal"] | Sequence[Sequence[int]] = "horizontal",
) -> torch.Tensor:
    """The frames of one image moving across a canvas, a batch ``(T, C, size, size)``.

    ``path`` is a list of (row, column) offsets of the image's top-left corner, one per frame, or the name of
    a sweep through every position in one direction: ``"horizontal"`` (left to right, centred vertically),
    ``"vertical"`` (top to bottom, centred horizontally) or ``"diagonal"``. Consecutive frames of a named
    sweep differ by a shift of one pixel, which is what an equivariant feature map should follow.

    Args:
        image: one image ``(C, H, W)`` (or ``(1, C, H, W)``).
        size: the square canvas's side.
        path: a named sweep or a sequence of ``(row, column)`` offsets.

    Examples:
        >>> import torch
        >>> frames = position_sweep(torch.ones(1, 28, 28), size=38)
        >>> frames.shape
        torch.Size([11, 1, 38, 38])
        >>> frames[3, 0, 5, :5].tolist()    # the digit's left edge is at column 3
        [0.0, 0.0, 0.0, 1.0, 1.0]
    """
    if isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else describe(image)
        raise InvalidArgument(f"image must be one image (C, H, W), found {found}; pick one, e.g. images[0]")
    side, _ = _canvas_size(size)
    height, width = image.shape[1:]
    if height > side or width > side:
        raise InvalidArgument(
            f"a {height}x{width} image does not fit on a {side}x{side} canvas; pass a canvas of at least "
            f"{max(height, width)}"
        )
    row, column = (side - height) // 2, (side - width) // 2
    if isinstance(path, str):
        steps = {
            "horizontal": [(row, c) for c in range(side - width + 1)],
            "vertical": [(r, column) for r in range(side - height + 1)],
            "diagonal": [(t, t) for t in range(min(side - height, side - width) + 1)],
        }
        if path not in steps:
            raise InvalidArgument(
                f"path must be 'horizontal', 'vertical', 'diagonal' or a sequence of (row, column) offsets, "
                f"found {path!r}"
            )
        offsets: Sequence[Sequence[int]] | torch.Tensor = steps[path]
    else:
        offsets = path
    count = len(_offsets(offsets, None))
    return embed_in_canvas(image.unsqueeze(0).expand(count, *image.shape), size, offsets)


def _check_images(images: object, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        found = tuple(images.shape) if isinstance(images, torch.Tensor) else describe(images)
        raise InvalidArgument(
            f"{what} must be a batch (N, C, H, W), found {found}; add the missing dims, e.g. x[:, None] for "
            "(N, H, W)"
        )
    return images


def _canvas_size(size: object) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise InvalidArgument(
                f"size must be an int or a pair (height, width), found {describe(size)}; pass e.g. size=38"
            )
        height, width = (as_int(s, "size") for s in size)
    else:
        height = width = as_int(size, "size")
    if min(height, width) < 1:
        raise InvalidArgument(f"size must be positive, found {(height, width)}; pass e.g. size=38")
    return height, width


def _offsets(offset: object, n: int | None) -> torch.Tensor:
    """Offsets as a long tensor ``(n, 2)``: one pair broadcast to all, or one pair per image."""
    try:
        values = torch.as_tensor(offset)
    except (TypeError, ValueError, RuntimeError):
        values = None
    if values is None or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise InvalidArgument(
            f"offset must be integer (row, column) pairs, found {describe(offset)}; pass e.g. (5, 5) or one "
            "pair per image"
        )
    values = values.long()
    if values.dim() == 1 and values.shape[0] == 2 and n is not None:
        return values.view(1, 2).expand(n, 2)
    if values.dim() != 2 or values.shape[1] != 2 or (n is not None and values.shape[0] != n):
        expected = "a (row, column) pair or one per image" if n is not None else "a sequence of (row, column)"
        count = f" ({n} images)" if n is not None else ""
        raise InvalidArgument(f"offset must be {expected}{count}, found shape {tuple(values.shape)}")
    return values
