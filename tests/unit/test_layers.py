import gzip
import hashlib

import pytest
import zstandard

from apparate.digest import Digest
from apparate.errors import DiffIDMismatch, InvalidResponse, VerificationError
from apparate.layers import OUTPUT_PIECE, DiffIDVerifier, decompressor_for

TAR = bytes(range(256)) * 4000
DIFF_ID = Digest("sha256", hashlib.sha256(TAR).hexdigest())

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
PLAIN = "application/vnd.oci.image.layer.v1.tar"


def zstd_frames(data: bytes, pieces: int) -> bytes:
    step = len(data) // pieces + 1
    compressor = zstandard.ZstdCompressor()
    return b"".join(
        compressor.compress(data[start : start + step])
        for start in range(0, len(data), step)
    )


def gzip_members(data: bytes, pieces: int) -> bytes:
    step = len(data) // pieces + 1
    return b"".join(
        gzip.compress(data[start : start + step]) for start in range(0, len(data), step)
    )


BLOBS = [
    (GZIP, gzip.compress(TAR)),
    (DOCKER_GZIP, gzip.compress(TAR)),
    (GZIP, gzip_members(TAR, 5)),
    (ZSTD, zstandard.ZstdCompressor().compress(TAR)),
    (ZSTD, zstd_frames(TAR, 7)),
    (DOCKER_ZSTD, zstd_frames(TAR, 3)),
    (PLAIN, TAR),
]


@pytest.mark.parametrize("piece_size", [1, 1000, 1 << 20])
@pytest.mark.parametrize("media_type, blob", BLOBS)
def test_diff_id_verifier_accepts(media_type, blob, piece_size):
    verifier = DiffIDVerifier(media_type, DIFF_ID, "layer x")

    for start in range(0, len(blob), piece_size):
        verifier.update(blob[start : start + piece_size])
    verifier.verify()

    assert verifier.uncompressed_size == len(TAR)


@pytest.mark.parametrize("media_type, blob", BLOBS)
def test_diff_id_verifier_rejects_wrong_diff_id(media_type, blob):
    verifier = DiffIDVerifier(media_type, Digest.of(b"other"), "layer x")

    verifier.update(blob)

    with pytest.raises(DiffIDMismatch, match="uncompressed layer x"):
        verifier.verify()


@pytest.mark.parametrize(
    "media_type, blob",
    [
        (GZIP, gzip.compress(TAR)[:-100]),
        (GZIP, gzip_members(TAR, 3)[:-10]),
        (ZSTD, zstd_frames(TAR, 3)[:-10]),
    ],
)
def test_diff_id_verifier_rejects_truncated(media_type, blob):
    verifier = DiffIDVerifier(media_type, DIFF_ID, "layer x")

    with pytest.raises(VerificationError, match="layer x"):
        verifier.update(blob)
        verifier.verify()


@pytest.mark.parametrize(
    "media_type, blob",
    [(GZIP, b"not gzip at all"), (ZSTD, b"not zstd at all")],
)
def test_diff_id_verifier_rejects_corrupt(media_type, blob):
    verifier = DiffIDVerifier(media_type, DIFF_ID, "layer x")

    with pytest.raises(VerificationError, match="cannot be decompressed"):
        verifier.update(blob)
        verifier.verify()


def test_decompressor_rejects_unknown_media_type():
    with pytest.raises(InvalidResponse, match="not supported"):
        decompressor_for("application/vnd.example.layer+lz4", print)


def test_diff_id_verifier_names_unsupported_layer():
    with pytest.raises(InvalidResponse) as caught:
        DiffIDVerifier("application/x-foo", DIFF_ID, "layer sha256:ab of img:v1")

    message = str(caught.value)
    assert "layer sha256:ab of img:v1" in message
    assert "'application/x-foo'" in message
    assert caught.value.exit_code == 8


def test_zstd_reads_every_frame():
    blob = zstd_frames(TAR, 4)
    # python-zstandard's one-shot decompress stops after the first frame.
    assert len(zstandard.ZstdDecompressor().decompress(blob)) < len(TAR)
    output: list[bytes] = []

    decompressor = decompressor_for(ZSTD, output.append)
    decompressor.write(blob)
    decompressor.finish()

    assert b"".join(output) == TAR


@pytest.mark.parametrize("media_type", [GZIP, ZSTD])
def test_decompressor_output_pieces_are_bounded(media_type):
    zeros = bytes(64 << 20)
    blob = gzip.compress(zeros) if media_type == GZIP else zstd_frames(zeros, 1)
    sizes: list[int] = []

    decompressor = decompressor_for(media_type, lambda piece: sizes.append(len(piece)))
    decompressor.write(blob)
    decompressor.finish()

    assert sum(sizes) == len(zeros)
    assert max(sizes) <= OUTPUT_PIECE


def test_diff_id_verifier_close_stops_thread():
    verifier = DiffIDVerifier(GZIP, DIFF_ID, "layer x")
    verifier.update(gzip.compress(TAR)[:5000])

    verifier.close()

    with pytest.raises(VerificationError):
        verifier.update(b"more")
