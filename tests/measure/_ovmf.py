"""A minimal, deterministic OVMF image that sev-snp-measure accepts (test fixture).

What it parses (sevsnpmeasure/ovmf.py, after OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm and
OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm in edk2):

- the *GUIDed footer table*: it ends 32 bytes before the end of the image (the reset vector
  lives there), its last entry is the footer ``{u16 size, GUID 96b582de-...}`` whose ``size``
  covers the whole table; every entry is ``data || u16 size || GUID`` read backwards, ``size``
  counting data, size and GUID;
- the table entries used for SNP: the SEV-ES reset block (``u32`` AP reset EIP), the SEV hash
  table (``u32`` GPA, ``u32`` size) where QEMU puts the kernel/initrd/cmdline hashes, and the SEV
  metadata pointer (``u32`` offset of the metadata from the end of the image);
- the SEV metadata: ``"ASEV", u32 size, u32 version = 1, u32 count`` then ``count`` sections
  ``{u32 gpa, u32 size, u32 type}`` (1 SEC memory, 2 secrets page, 3 CPUID page, 0x10 kernel
  hashes).

The layout mirrors a real OVMF.fd (sections at 0x800000..0x80F000, hash table in the last page of
them); the page contents are a fixed pattern, so the image is the same on every run.
"""

from __future__ import annotations

import struct
import uuid

PAGE = 4096
FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
SEV_HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEV_ES_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"

SEC_MEM, SECRETS, CPUID, KERNEL_HASHES = 1, 2, 3, 0x10
SECTIONS = [
    (0x800000, 0x9000, SEC_MEM),
    (0x809000, 0x1000, SECRETS),
    (0x80A000, 0x1000, CPUID),
    (0x80F000, 0x1000, KERNEL_HASHES),
]
HASH_TABLE_GPA = 0x80F000 + 0xC00  # the table sits inside the KERNEL_HASHES page
AP_RESET_EIP = 0xFFFFF000 + 0x804


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def build(pages: int = 16, seed: int = 1) -> bytes:
    """An image of ``pages`` pages (>= 2): SEV metadata in page 0, footer table at the end."""
    size = pages * PAGE
    body = bytearray((i * 131 + seed) & 0xFF for i in range(size))
    metadata_at = 0x100
    items = b"".join(struct.pack("<III", gpa, n, kind) for gpa, n, kind in SECTIONS)
    header = b"ASEV" + struct.pack("<III", 16 + len(items), 1, len(SECTIONS))
    body[metadata_at : metadata_at + len(header) + len(items)] = header + items
    entries = (
        _entry(SEV_METADATA_GUID, struct.pack("<I", size - metadata_at))
        + _entry(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", HASH_TABLE_GPA, 0x400))
        + _entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", AP_RESET_EIP))
    )
    footer = struct.pack("<H", len(entries) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    table = entries + footer
    end = size - 32
    body[end - len(table) : end] = table
    return bytes(body)
