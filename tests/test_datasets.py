"""Digits and canvases: IDX parsing, checksums, offline failures, the sklearn fallback, placement.

No test touches the network: downloads go through a patched ``urllib.request.urlopen``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from equivariance import InvalidArgument
from equivariance import datasets as ds
from equivariance.datasets import (
    DatasetUnavailable,
    Digits,
    data_dir,
    digits,
    embed_in_canvas,
    mnist,
    position_sweep,
    read_idx,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes for a uint8 array: magic 0x0000_08_DD, dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1").tobytes()


def write_gz(path: Path, payload: bytes) -> str:
    path.write_bytes(gzip.compress(payload, mtime=0))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny MNIST in tmp_path, its checksums registered in place of the official ones."""
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "test": 5}
    files = {}
    for split, n in sizes.items():
        images_name, labels_name = ds._SPLITS[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        files[images_name] = (0, write_gz(tmp_path / images_name, idx_bytes(images)))
        files[labels_name] = (0, write_gz(tmp_path / labels_name, idx_bytes(labels)))
    monkeypatch.setattr(ds, "MNIST_FILES", files)
    return tmp_path


def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail as offline; returns the URLs that were tried."""
    tried: list[str] = []

    def refuse(url: str, timeout: float = 0) -> object:
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ds.urllib.request, "urlopen", refuse)
    return tried


# -- IDX ------------------------------------------------------------------------------------------


def test_read_idx_parses_gzipped_and_raw_files(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_gz(tmp_path / "a.gz", idx_bytes(array))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_read_idx_reads_big_endian_element_types(tmp_path: Path) -> None:
    values = np.array([1.5, -2.0, 3.25], dtype=">f4")
    (tmp_path / "f").write_bytes(struct.pack(">II", 0x0D01, 3) + values.tobytes())
    result = read_idx(tmp_path / "f")
    assert result.dtype == np.float32
    assert result.tolist() == [1.5, -2.0, 3.25]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x12\x34\x08\x01" + bytes(8), r"is not an IDX file: its magic number is 12340801, expected 0000"),
        (b"\x00\x00\x07\x01" + bytes(8), r"is not an IDX file: its magic number is 00000701"),
        (b"", r"is not an IDX file: its magic number is missing"),
        (b"\x00\x00\x08\x03\x00\x00", r"is truncated: its header needs 16 bytes, found 6"),
        (
            struct.pack(">IIII", 0x0803, 2, 28, 28) + bytes(100),
            r"declares dims \(2, 28, 28\) \(1568 bytes of data\) but holds 100; the file is truncated or corrupt",
        ),
    ],
    ids=["magic", "type", "empty", "header", "length"],
)
def test_read_idx_refuses_malformed_files(tmp_path: Path, payload: bytes, match: str) -> None:
    write_gz(tmp_path / "bad.gz", payload)
    with pytest.raises(DatasetUnavailable, match=match):
        read_idx(tmp_path / "bad.gz")


def test_read_idx_refuses_a_file_that_is_not_gzip(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(
        DatasetUnavailable, match=r"cannot read .*x.gz: .*; replace it with the official file"
    ):
        read_idx(tmp_path / "x.gz")


# -- MNIST ----------------------------------------------------------------------------------------


def test_the_official_checksums_are_pinned() -> None:
    assert set(ds.MNIST_FILES) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    size, sha256 = ds.MNIST_FILES["train-images-idx3-ubyte.gz"]
    assert (size, sha256[:16]) == (9_912_422, "440fcabf73cc546f")
    assert all(len(digest) == 64 for _, digest in ds.MNIST_FILES.values())


def test_mnist_reads_verified_files(fake_mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = no_network(monkeypatch)
    train, test = mnist("train", root=fake_mnist), mnist("test", root=fake_mnist)
    assert tried == []
    assert train.images.shape == (12, 1, 28, 28)
    assert test.images.shape == (5, 1, 28, 28)
    assert train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    assert float(train.images.min()) >= 0.0
    assert float(train.images.max()) <= 1.0
    raw = read_idx(fake_mnist / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(train.images[3, 0], torch.from_numpy(raw[3]).float() / 255)
    assert test.labels.tolist() == [0, 1, 2, 3, 4]
    assert train.name == "mnist-train"


def test_the_environment_variable_chooses_the_cache(
    fake_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EQUIVARIANCE_DATA", str(fake_mnist.parent))
    assert data_dir() == fake_mnist.parent / "mnist"
    monkeypatch.delenv("EQUIVARIANCE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert data_dir() == Path("/somewhere/equivariance/mnist")
    assert data_dir(fake_mnist) == fake_mnist


def test_a_checksum_mismatch_raises(fake_mnist: Path) -> None:
    path = fake_mnist / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(
        DatasetUnavailable,
        match=r"t10k-labels-idx1-ubyte.gz has SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64} .*; delete it to "
        r"download it again, or replace it with the official file",
    ):
        mnist("test", root=fake_mnist)


def test_offline_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = no_network(monkeypatch)
    with pytest.raises(DatasetUnavailable) as raised:
        mnist("train", root=tmp_path / "cache")
    message = str(raised.value)
    assert message.startswith("could not download train-images-idx3-ubyte.gz: https://ossci-datasets")
    assert "Temporary failure in name resolution" in message
    assert (
        f"place the official train-images-idx3-ubyte.gz (9,912,422 bytes) in {tmp_path / 'cache'}" in message
    )
    assert "use the offline digits: equivariance.datasets.digits()" in message
    assert tried == [mirror + "train-images-idx3-ubyte.gz" for mirror in ds.MNIST_MIRRORS]
    assert isinstance(raised.value, InvalidArgument)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial files left behind


def test_download_false_does_not_try_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = no_network(monkeypatch)
    with pytest.raises(
        DatasetUnavailable, match=r"t10k-images-idx3-ubyte.gz is not in .* and download=False"
    ):
        mnist("test", root=tmp_path, download=False)
    assert tried == []


def test_a_download_is_verified_and_a_bad_mirror_skipped(
    fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = {name: (fake_mnist / name).read_bytes() for name in ds.MNIST_FILES}
    tried: list[str] = []

    def urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        tried.append(url)
        name = url.rsplit("/", 1)[1]
        if url.startswith(ds.MNIST_MIRRORS[0]):
            return io.BytesIO(b"<html>an error page</html>")  # wrong content: checksum fails
        return io.BytesIO(served[name])

    monkeypatch.setattr(ds.urllib.request, "urlopen", urlopen)
    cache = tmp_path / "new-cache"
    test = mnist("test", root=cache)
    assert len(test) == 5
    assert sorted(p.name for p in cache.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert len(tried) == 4
    mnist("test", root=cache)  # cached now: no more downloads
    assert len(tried) == 4


def test_every_mirror_serving_bad_bytes_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds.urllib.request, "urlopen", lambda url, timeout=0: io.BytesIO(b"junk"))
    with pytest.raises(DatasetUnavailable, match=r"could not download .*: SHA-256 [0-9a-f]{64}, expected"):
        mnist("test", root=tmp_path)


def test_bad_mnist_arguments() -> None:
    with pytest.raises(InvalidArgument, match=r"split must be 'train' or 'test', found 'val' \(str\)"):
        mnist("val")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"root must be a path or None, found 3 \(int\)"):
        data_dir(3)  # type: ignore[arg-type]


# -- the offline digits ---------------------------------------------------------------------------


def test_the_offline_digits_look_like_mnist() -> None:
    data = digits()
    assert data.images.shape == (1797, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) == 0.0
    assert float(data.images.max()) == 1.0
    border = data.images.clone()
    border[..., 4:24, 4:24] = 0
    assert float(border.abs().max()) == 0.0  # a 20x20 box centred in 28x28, as in MNIST
    assert sorted(data.labels.unique().tolist()) == list(range(10))
    assert data.labels.dtype == torch.int64


def test_missing_scikit_learn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)
    with pytest.raises(DatasetUnavailable, match=r"digits\(\) needs scikit-learn, which is not installed"):
        digits()


def test_digits_split_is_reproducible_and_disjoint() -> None:
    data = Digits(torch.arange(20.0).view(20, 1, 1, 1), torch.arange(20), "numbers")
    a1, b1 = data.split(0.75, seed=3)
    a2, _ = data.split(0.75, seed=3)
    assert (len(a1), len(b1)) == (15, 5)
    assert a1.labels.tolist() == a2.labels.tolist()
    assert sorted(a1.labels.tolist() + b1.labels.tolist()) == list(range(20))
    assert repr(a1) == "Digits('numbers[:15]', 15 images of (1, 1, 1))"
    with pytest.raises(
        InvalidArgument, match=r"fraction must be a number strictly between 0 and 1, found 1 \(int\)"
    ):
        data.split(1)
    with pytest.raises(
        InvalidArgument, match=r"labels must be a tensor \(20,\), one per image, found \(3,\)"
    ):
        Digits(data.images, torch.arange(3), "x")
    with pytest.raises(InvalidArgument, match=r"images must be a tensor \(N, C, H, W\), found \(20,\)"):
        Digits(torch.zeros(20), torch.arange(20), "x")


# -- canvases -------------------------------------------------------------------------------------


def test_embed_in_canvas_centres_by_default() -> None:
    images = torch.rand(3, 1, 28, 28) + 0.1
    canvas = embed_in_canvas(images)
    assert canvas.shape == (3, 1, 38, 38)
    torch.testing.assert_close(canvas[..., 5:33, 5:33], images, rtol=0, atol=0)
    canvas[..., 5:33, 5:33] = 0
    assert float(canvas.abs().max()) == 0.0


def test_embed_in_canvas_places_each_image_at_its_offset() -> None:
    images = torch.rand(3, 2, 4, 5) + 0.1
    offsets = [(0, 0), (6, 5), (2, 3)]
    canvas = embed_in_canvas(images, size=(10, 10), offset=offsets)
    for n, (row, column) in enumerate(offsets):
        torch.testing.assert_close(
            canvas[n, :, row : row + 4, column : column + 5], images[n], rtol=0, atol=0
        )
        rest = canvas[n].clone()
        rest[:, row : row + 4, column : column + 5] = 0
        assert float(rest.abs().max()) == 0.0
    shared = embed_in_canvas(images, size=10, offset=(1, 2))
    torch.testing.assert_close(shared[:, :, 1:5, 2:7], images, rtol=0, atol=0)
    assert embed_in_canvas(images.double(), 10).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"size": 20},
            r"image 0 \(28x28\) at offset \(-4, -4\) does not fit on a 20x20 canvas; offsets must lie in \[0, -8\]",
        ),
        (
            {"offset": (11, 0)},
            r"image 0 \(28x28\) at offset \(11, 0\) does not fit on a 38x38 canvas; offsets must lie in \[0, 10\] x \[0, 10\]",
        ),
        ({"offset": [(0, 0), (0, -1)]}, r"image 1 \(28x28\) at offset \(0, -1\) does not fit"),
        (
            {"offset": [(0, 0)] * 3},
            r"offset must be a \(row, column\) pair or one per image \(2 images\), found shape \(3, 2\)",
        ),
        ({"offset": (1.5, 2)}, r"offset must be integer \(row, column\) pairs, found \(1.5, 2\) \(tuple\)"),
        (
            {"size": (38, 38, 38)},
            r"size must be an int or a pair \(height, width\), found \(38, 38, 38\) \(tuple\)",
        ),
        ({"size": 0}, r"size must be positive, found \(0, 0\)"),
    ],
    ids=["too-small", "past-the-edge", "negative", "count", "float", "size-3", "size-0"],
)
def test_embed_in_canvas_refuses_what_does_not_fit(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        embed_in_canvas(torch.ones(2, 1, 28, 28), **kwargs)  # type: ignore[arg-type]


def test_embed_in_canvas_wants_a_batch() -> None:
    with pytest.raises(InvalidArgument, match=r"images must be a batch \(N, C, H, W\), found \(28, 28\)"):
        embed_in_canvas(torch.ones(28, 28))


def test_position_sweep_moves_one_pixel_a_frame() -> None:
    image = torch.rand(1, 28, 28) + 0.1
    frames = position_sweep(image, size=38)
    assert frames.shape == (11, 1, 38, 38)
    for t in range(10):
        torch.testing.assert_close(torch.roll(frames[t], 1, dims=-1), frames[t + 1], rtol=0, atol=0)
    vertical = position_sweep(image[None], size=30, path="vertical")
    assert vertical.shape == (3, 1, 30, 30)
    torch.testing.assert_close(vertical[2, :, 2:30, 1:29], image, rtol=0, atol=0)
    assert position_sweep(image, size=31, path="diagonal").shape == (4, 1, 31, 31)
    custom = position_sweep(image, path=[(0, 0), (10, 10)])
    torch.testing.assert_close(custom[1, :, 10:, 10:], image, rtol=0, atol=0)


def test_position_sweep_misuse() -> None:
    with pytest.raises(
        InvalidArgument, match=r"path must be 'horizontal', 'vertical', 'diagonal' .* found 'circle'"
    ):
        position_sweep(torch.ones(1, 28, 28), path="circle")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"image must be one image \(C, H, W\), found \(2, 1, 28, 28\)"):
        position_sweep(torch.ones(2, 1, 28, 28))
    with pytest.raises(InvalidArgument, match=r"a 28x28 image does not fit on a 20x20 canvas"):
        position_sweep(torch.ones(1, 28, 28), size=20)
