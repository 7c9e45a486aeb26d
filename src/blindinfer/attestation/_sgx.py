"""Verifier for Intel SGX evidence: a DCAP ECDSA quote v3 (TEE type 0, attestation key type 2).

The quote and its collateral (``collateral["dcap"]``: dcap-qvl QuoteCollateralV3 JSON) are
verified by ``_dcap.verify_quote`` against the pinned Intel SGX Root CA at the time ``at``; this
module reads the ISV enclave report body and judges it against the ``[sgx]`` policy table.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar

from blindinfer.attestation import _dcap
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import (
    Spec,
    TablePolicy,
    expect_hex_in,
    flag,
    hex_bytes,
    hex_values,
    names,
    uint,
)
from blindinfer.errors import EvidenceError, PolicyError

KIND = "sgx"
QUOTE_VERSION = 3

# ISV enclave report body, 384 bytes (Intel SGX ECDSA Quote Library API, Appendix A, "Enclave
# Report Body"; same layout as the SGX REPORT body): CPUSVN 16, MISCSELECT u32, reserved 12,
# ISVEXTPRODID 16, ATTRIBUTES 16 (flags u64 + XFRM u64), MRENCLAVE 32, reserved 32, MRSIGNER 32,
# reserved 32, CONFIGID 64, ISVPRODID u16, ISVSVN u16, CONFIGSVN u16, reserved 42, ISVFAMILYID 16,
# REPORTDATA 64.
REPORT_BODY = struct.Struct("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s")
# ATTRIBUTES.FLAGS bit 1 is DEBUG (Intel SDM Vol. 3D, 38.7.1 "ATTRIBUTES").
DEBUG_FLAG = 0x02


def detect(data: bytes) -> bool:
    """Quote v3 header with attestation key type 2 (ECDSA P-256) and TEE type 0 (SGX)."""
    return _dcap.header_fields(data) == (QUOTE_VERSION, _dcap.ECDSA_P256, _dcap.TEE_SGX)


def quote_report_data(quote: bytes) -> bytes:
    """REPORTDATA of an SGX quote v3, located by the strict layout parse (not verified).

    For the producer (``tee/gramine``), which checks that a quote carries what it asked for.
    """
    layout = _dcap.parse_layout(bytes(quote))
    if layout.version != QUOTE_VERSION or layout.tee_type != _dcap.TEE_SGX:
        raise EvidenceError(
            f"not an SGX quote v3 (version {layout.version}, TEE type {layout.tee_type:#x})"
        )
    report_data: bytes = REPORT_BODY.unpack(layout.body)[-1]
    return report_data


def _claims(result: _dcap.DcapResult, at: datetime) -> Claims:
    (cpu_svn, misc_select, _r1, ext_prod_id, attributes, mrenclave, _r2, mrsigner, _r3, config_id,
     isv_prod_id, isv_svn, config_svn, _r4, family_id, report_data) = REPORT_BODY.unpack(
        result.layout.body
    )  # fmt: skip
    fields: dict[str, Any] = {
        "isv_prod_id": isv_prod_id,
        "isv_svn": isv_svn,
        "config_svn": config_svn,
        "attributes": attributes.hex(),
        "misc_select": misc_select,
        "cpu_svn": cpu_svn.hex(),
        "config_id": config_id.hex(),
        "isv_ext_prod_id": ext_prod_id.hex(),
        "isv_family_id": family_id.hex(),
    }
    return _dcap.claims(
        result,
        kind=KIND,
        report_data=report_data,
        measurements={"mrenclave": mrenclave.hex(), "mrsigner": mrsigner.hex()},
        debug=bool(attributes[0] & DEBUG_FLAG),
        fields=fields,
        at=at,
    )


def verify(
    evidence: bytes,
    collateral: Mapping[str, bytes],
    *,
    at: datetime,
    roots: Sequence[bytes] | None = None,
) -> Claims:
    """Verify an SGX quote v3 with its DCAP collateral at ``at``; ``roots[0]`` replaces Intel's."""
    result = _dcap.verify_quote(
        evidence,
        collateral,
        kind=KIND,
        tee_type=_dcap.TEE_SGX,
        versions=(QUOTE_VERSION,),
        at=at,
        roots=roots,
    )
    return _claims(result, at)


# A mask without its value is refused; the attributes mask defaults to all ones. No mask is
# implied for MISCSELECT: check_masked_int compares all 32 bits when it is unset.
_ATTRIBUTES_MASK = Spec(hex_bytes(16), requires="attributes", implied="ff" * 16)
_MISC_SELECT_MASK = Spec(uint(32, hex_ok=True), requires="misc_select")


@dataclass(frozen=True)
class KindPolicy(TablePolicy):
    """``[sgx]``: the enclave (BlindAI manifest.toml fields) and the platform TCB accepted.

    ``mrenclave`` / ``mrsigner``: hex or lists of hex; ``isv_prod_id``, ``min_isv_svn``: ints;
    ``attributes`` (+ ``attributes_mask``, 16 bytes hex, default all ones) and ``misc_select``
    (+ ``misc_select_mask``, ints or hex): (value & mask) must equal (expected & mask);
    ``allow_debug`` (default false); ``allowed_tcb_status`` (default ["UpToDate"]) and
    ``allowed_advisories`` (default []): evidence with any other advisory id is refused.
    """

    kind: ClassVar[str] = KIND
    mrenclave: Annotated[list[str] | None, hex_values(32)] = None
    mrsigner: Annotated[list[str] | None, hex_values(32)] = None
    # ISVPRODID and ISVSVN are u16 in the report body; MISCSELECT is u32.
    isv_prod_id: Annotated[int | None, uint(16, hex_ok=True)] = None
    min_isv_svn: Annotated[int | None, uint(16, hex_ok=True)] = None
    allow_debug: Annotated[bool, flag] = False
    attributes: Annotated[str | None, hex_bytes(16)] = None
    attributes_mask: Annotated[str | None, _ATTRIBUTES_MASK] = None
    misc_select: Annotated[int | None, uint(32, hex_ok=True)] = None
    misc_select_mask: Annotated[int | None, _MISC_SELECT_MASK] = None
    allowed_tcb_status: Annotated[list[str], _dcap.TCB_STATUS_NAMES] = field(
        default_factory=_dcap.default_tcb_status
    )
    allowed_advisories: Annotated[list[str], names()] = field(default_factory=list)

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        f = claims.fields
        return cls(
            mrenclave=[claims.measurements["mrenclave"]],
            mrsigner=[claims.measurements["mrsigner"]],
            isv_prod_id=int(f["isv_prod_id"]),
            min_isv_svn=int(f["isv_svn"]),
            allow_debug=claims.debug,
            attributes=str(f["attributes"]),
            attributes_mask="ff" * 16,
            misc_select=int(f["misc_select"]),
            misc_select_mask=0xFFFFFFFF,
            allowed_tcb_status=[claims.tcb_status or "UpToDate"],
            allowed_advisories=list(claims.advisory_ids),
        )

    def check(self, claims: Claims) -> None:
        if claims.kind != KIND:
            raise PolicyError(f"expected sgx claims, got {claims.kind}")
        f = claims.fields
        expect_hex_in("sgx.mrenclave", self.mrenclave, claims.measurements["mrenclave"])
        expect_hex_in("sgx.mrsigner", self.mrsigner, claims.measurements["mrsigner"])
        if self.isv_prod_id is not None and f["isv_prod_id"] != self.isv_prod_id:
            raise PolicyError(
                f"policy mismatch on sgx.isv_prod_id: expected {self.isv_prod_id}, evidence has "
                f"{f['isv_prod_id']}"
            )
        if self.min_isv_svn is not None and int(f["isv_svn"]) < self.min_isv_svn:
            raise PolicyError(
                f"policy mismatch on sgx.isv_svn: expected at least {self.min_isv_svn}, evidence "
                f"has {f['isv_svn']}"
            )
        _dcap.check_debug(KIND, self.allow_debug, claims.debug)
        _dcap.check_masked_hex(
            "sgx.attributes", self.attributes, self.attributes_mask, str(f["attributes"])
        )
        _dcap.check_masked_int(
            "sgx.misc_select", self.misc_select, self.misc_select_mask, int(f["misc_select"])
        )
        _dcap.check_tcb(KIND, self.allowed_tcb_status, self.allowed_advisories, claims)
