"""Property tests of the image stage's readers of untrusted bytes: GPT, VHD footer, os-release.

Any input ends in a result or the project's own error, within the profile's deadline, and
no reader allocates in proportion to a length field it reads.
"""

from __future__ import annotations

import struct
import tempfile
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acl_compose.errors import InputError, VerificationError
from acl_compose.image import gpt, osrelease, outputs
from tests.properties import mutated, outcome, peak_allocation, u32, u64

pytestmark = pytest.mark.property
SECTOR = gpt.SECTOR


def _crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def gpt_header(n: int, esize: int, entries_lba: int, ecrc: int, hsize: int = 92) -> bytes:
    fields = [
        b"EFI PART",
        0x10000,
        hsize,
        0,
        0,
        1,
        0,
        34,
        0,
        bytes(16),
        entries_lba,
        n,
        esize,
        ecrc,
    ]
    raw = struct.pack(gpt.HEADER_FMT, *fields).ljust(SECTOR, b"\0")
    fields[3] = _crc(raw[:hsize]) if hsize <= SECTOR else 0  # over the header, CRC field 0
    return struct.pack(gpt.HEADER_FMT, *fields).ljust(SECTOR, b"\0")


def read_gpt(image: bytes) -> tuple[object, int]:
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(image)
        f.flush()
        return peak_allocation(gpt.read, f.name)


@st.composite
def gpt_images(draw: st.DrawFn) -> bytes:
    """MBR + a header with a correct CRC whatever its fields claim + entries (their CRC right
    when they are inside the file) + a few spare sectors."""
    n = draw(u32())
    esize = draw(st.one_of(st.sampled_from([128, 256, 0, 8]), u32()))
    entries_lba = draw(st.one_of(st.just(2), u64()))
    hsize = draw(st.one_of(st.just(92), u32()))
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        entries.append(
            struct.pack(
                gpt.ENTRY_FMT,
                draw(st.one_of(st.just(bytes(16)), st.binary(min_size=16, max_size=16))),
                draw(st.binary(min_size=16, max_size=16)),
                draw(st.one_of(st.integers(0, 80), u64())),
                draw(st.one_of(st.integers(0, 80), u64())),
                draw(u64()),
                draw(st.binary(min_size=72, max_size=72)),
            )
        )
    table = b"".join(entries).ljust(draw(st.integers(0, 40)) * SECTOR, b"\0")
    # The CRC the header records: over the claimed table when it is inside the file.
    claimed = table[: n * esize] if n * esize <= len(table) else b""
    ecrc = draw(st.one_of(st.just(_crc(claimed)), u32()))
    header = gpt_header(n, esize, entries_lba, ecrc, hsize)
    return bytes(SECTOR) + header + table + bytes(SECTOR * draw(st.integers(0, 4)))


@given(gpt_images())
def test_gpt_reader_ends_in_a_disk_or_an_input_error_without_big_allocations(image):
    result, peak = read_gpt(image)
    assert isinstance(result, gpt.Disk | InputError)
    assert peak < 2 * len(image) + (1 << 20)  # never the 2**32 * 2**32 a header may claim
    if isinstance(result, gpt.Disk):  # every partition it returns lies inside the image
        for p in result.partitions:
            assert 0 < p.offset and p.offset + p.size <= len(image)


@given(st.binary(max_size=4 * SECTOR))
def test_gpt_reader_on_arbitrary_bytes(data):
    result, _ = read_gpt(data)
    assert isinstance(result, gpt.Disk | InputError)


def _written_gpt() -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        parts = [
            gpt.Partition(1, gpt.TYPES["efi"], str(uuid.UUID(int=1)), "EFI-SYSTEM", 34, 40),
            gpt.Partition(3, gpt.TYPES["flatcar-usr"], str(uuid.UUID(int=3)), "USR-A", 41, 60),
        ]
        gpt.write(f.name, parts, str(uuid.UUID(int=9)), size=100 * SECTOR)
        return Path(f.name).read_bytes()


WRITTEN = _written_gpt()


@given(mutated(WRITTEN[: 34 * SECTOR]))
def test_gpt_reader_on_mutations_of_a_real_table(head):
    result, peak = read_gpt(head + WRITTEN[len(head) :] if len(head) <= len(WRITTEN) else head)
    assert isinstance(result, gpt.Disk | InputError)
    assert peak < (4 << 20)


def test_gpt_header_claiming_2_pow_32_entries_is_refused_before_reading():
    for n, esize in ((2**32 - 1, 128), (128, 2**32 - 1), (2**32 - 1, 2**32 - 1)):
        result, peak = read_gpt(bytes(SECTOR) + gpt_header(n, esize, 2, 0) + bytes(64 * SECTOR))
        assert isinstance(result, InputError), result
        assert "partition entries of" in result.message
        assert peak < (1 << 20)
    result, peak = read_gpt(bytes(SECTOR) + gpt_header(128, 128, 2**63, 0) + bytes(64 * SECTOR))
    assert isinstance(result, InputError) and "run past the end" in result.message


# --- VHD footer ---------------------------------------------------------------------------------


def vhd_footer(disk_type: int, current: int, checksum: int | None, cookie: bytes) -> bytes:
    footer = bytearray(512)
    footer[:8] = cookie
    struct.pack_into(">IIQ", footer, 8, 2, 0x00010000, 0xFFFFFFFFFFFFFFFF)
    struct.pack_into(">Q", footer, 40, current)
    struct.pack_into(">Q", footer, 48, current)
    struct.pack_into(">HBB", footer, 56, 65535, 16, 255)
    struct.pack_into(">I", footer, 60, disk_type)
    calc = (~sum(footer[:64] + footer[68:])) & 0xFFFFFFFF
    struct.pack_into(">I", footer, 64, calc if checksum is None else checksum)
    return bytes(footer)


@given(
    body=st.integers(0, 4).map(lambda k: bytes(k * (1 << 20))) | st.binary(max_size=2048),
    disk_type=st.one_of(st.just(2), u32()),
    current=st.one_of(st.sampled_from([0, 1 << 20, 2 << 20]), u64()),
    checksum=st.one_of(st.none(), u32()),
    cookie=st.one_of(st.just(b"conectix"), st.binary(min_size=8, max_size=8)),
    footer=st.booleans(),
)
def test_vhd_footer_check_ends_in_a_size_or_a_verification_error(
    body, disk_type, current, checksum, cookie, footer
):
    data = body + (vhd_footer(disk_type, current, checksum, cookie) if footer else b"")
    with tempfile.NamedTemporaryFile(suffix=".vhd") as f:
        f.write(data)
        f.flush()
        result, peak = peak_allocation(outputs.check_vhd, f.name, errors=VerificationError)
    assert peak < (1 << 20)
    if isinstance(result, int):  # accepted: the size it returns is the file's, to the byte
        assert result == len(data) - 512 and result % (1 << 20) == 0


def test_vhd_footer_with_a_huge_size_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.vhd"
    path.write_bytes(bytes(1 << 20) + vhd_footer(2, 2**64 - (1 << 20), None, b"conectix"))
    result, peak = peak_allocation(outputs.check_vhd, path, errors=VerificationError)
    assert isinstance(result, VerificationError) and "virtual size" in result.message
    assert peak < (1 << 20)
    tiny = tmp_path / "tiny.vhd"
    tiny.write_bytes(b"conectix")
    assert "too small" in outcome(outputs.check_vhd, tiny, errors=VerificationError).message


# --- os-release ---------------------------------------------------------------------------------

KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
VALUES = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=20)


@given(st.text())
def test_os_release_parser_never_raises(text):
    data = osrelease.parse_os_release(text)
    assert all(osrelease._KEY.match(k) for k in data)


@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_os_release_format_parse_round_trip(data):
    assert osrelease.parse_os_release(osrelease.format_os_release(data)) == data


@given(st.dictionaries(KEYS, st.text(max_size=8), max_size=4), st.dictionaries(KEYS, st.text()))
def test_extension_match_rules_are_total(ext, base):
    verdict = osrelease.extension_mismatch(ext, base)
    assert verdict is None or isinstance(verdict, str)


@given(st.binary(max_size=512))
def test_read_os_release_on_arbitrary_bytes(data):
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        result = outcome(osrelease.read_os_release, f.name, errors=InputError)
    assert isinstance(result, dict | InputError)
