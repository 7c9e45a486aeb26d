"""Verifier for Intel TDX evidence: a DCAP quote v4 (TD 1.0 body) or v5 (TD 1.0 / 1.5 body).

The quote and its collateral (``collateral["dcap"]``: dcap-qvl QuoteCollateralV3 JSON) are
verified by ``_dcap.verify_quote`` against the pinned Intel SGX Root CA at the time ``at``; this
module reads the TD quote body and judges it against the ``[tdx]`` policy table.
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
)
from blindinfer.errors import EvidenceError, PolicyError

KIND = "tdx"
QUOTE_VERSIONS = (4, 5)

# TD quote body 1.0, 584 bytes (Intel TDX DCAP Quoting Library API, Appendix A, "TD Quote Body"):
# TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48, SEAMATTRIBUTES 8, TDATTRIBUTES 8, XFAM 8, MRTD 48,
# MRCONFIGID 48, MROWNER 48, MROWNERCONFIG 48, RTMR0..RTMR3 48 each, REPORTDATA 64.
TD10_BODY = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
# TD 1.5 body (quote v5, body type 3) appends TEE_TCB_SVN2 16 and MRSERVICETD 48.
TD15_TAIL = struct.Struct("<16s48s")
# TDATTRIBUTES bit 0 is TUD.DEBUG (Intel TDX Module ABI spec, "TD Attributes").
DEBUG_BIT = 0x01
MEASUREMENTS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam")


def detect(data: bytes) -> bool:
    """Quote v4 or v5 header with TEE type 0x81 (TDX)."""
    head = _dcap.header_fields(data)
    return head is not None and head[0] in QUOTE_VERSIONS and head[2] == _dcap.TEE_TDX


def quote_report_data(quote: bytes) -> bytes:
    """REPORTDATA of a TDX quote v4/v5, located by the strict layout parse (not verified).

    For the producer (``tee/configfs_tsm``), which checks that a quote carries what it asked for.
    """
    layout = _dcap.parse_layout(bytes(quote))
    if layout.version not in QUOTE_VERSIONS or layout.tee_type != _dcap.TEE_TDX:
        raise EvidenceError(
            f"not a TDX quote v4/v5 (version {layout.version}, TEE type {layout.tee_type:#x})"
        )
    report_data: bytes = TD10_BODY.unpack_from(layout.body)[-1]
    return report_data


def _claims(result: _dcap.DcapResult, at: datetime) -> Claims:
    body = result.layout.body
    (tcb_svn, mrseam, mrsignerseam, seam_attrs, td_attrs, xfam, mrtd, mrconfigid, mrowner,
     mrownerconfig, rtmr0, rtmr1, rtmr2, rtmr3, report_data) = TD10_BODY.unpack_from(
        body
    )  # fmt: skip
    fields: dict[str, Any] = {
        "td_attributes": td_attrs.hex(),
        "xfam": xfam.hex(),
        "mrsignerseam": mrsignerseam.hex(),
        "mrowner": mrowner.hex(),
        "mrconfigid": mrconfigid.hex(),
        "mrownerconfig": mrownerconfig.hex(),
        "seam_attributes": seam_attrs.hex(),
        "tee_tcb_svn": tcb_svn.hex(),
    }
    if result.layout.body_type == _dcap.BODY_TD15:
        tcb_svn2, mrservicetd = TD15_TAIL.unpack_from(body, TD10_BODY.size)
        fields["tee_tcb_svn2"] = tcb_svn2.hex()
        fields["mrservicetd"] = mrservicetd.hex()
    values = (mrtd, rtmr0, rtmr1, rtmr2, rtmr3, mrseam)
    return _dcap.claims(
        result,
        kind=KIND,
        report_data=report_data,
        measurements={name: v.hex() for name, v in zip(MEASUREMENTS, values, strict=True)},
        debug=bool(td_attrs[0] & DEBUG_BIT),
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
    """Verify a TDX quote v4/v5 and its DCAP collateral at ``at``; ``roots[0]`` replaces Intel's."""
    result = _dcap.verify_quote(
        evidence,
        collateral,
        kind=KIND,
        tee_type=_dcap.TEE_TDX,
        versions=QUOTE_VERSIONS,
        at=at,
        roots=roots,
    )
    return _claims(result, at)


_MEASUREMENT = hex_values(48)  # MRTD, RTMRs and MRSEAM are SHA-384 digests


def _mask(of: str) -> Spec:
    """``<of>_mask``: 8 bytes of hex, refused without ``<of>``, all ones when only that is set."""
    return Spec(hex_bytes(8), requires=of, implied="ff" * 8)


@dataclass(frozen=True)
class KindPolicy(TablePolicy):
    """``[tdx]``: the TD's measurements, attributes and the platform TCB accepted.

    ``mrtd``, ``rtmr0``..``rtmr3``, ``mrseam``: hex or lists of hex (48 bytes);
    ``td_attributes`` / ``xfam`` (+ ``_mask``, 8 bytes hex, mask default all ones): (value & mask)
    must equal (expected & mask); ``allow_debug`` (default false); ``allowed_tcb_status`` (default
    ["UpToDate"]) and ``allowed_advisories`` (default []).
    """

    kind: ClassVar[str] = KIND
    mrtd: Annotated[list[str] | None, _MEASUREMENT] = None
    rtmr0: Annotated[list[str] | None, _MEASUREMENT] = None
    rtmr1: Annotated[list[str] | None, _MEASUREMENT] = None
    rtmr2: Annotated[list[str] | None, _MEASUREMENT] = None
    rtmr3: Annotated[list[str] | None, _MEASUREMENT] = None
    mrseam: Annotated[list[str] | None, _MEASUREMENT] = None
    allow_debug: Annotated[bool, flag] = False
    td_attributes: Annotated[str | None, hex_bytes(8)] = None
    td_attributes_mask: Annotated[str | None, _mask("td_attributes")] = None
    xfam: Annotated[str | None, hex_bytes(8)] = None
    xfam_mask: Annotated[str | None, _mask("xfam")] = None
    allowed_tcb_status: Annotated[list[str], _dcap.TCB_STATUS_NAMES] = field(
        default_factory=_dcap.default_tcb_status
    )
    allowed_advisories: Annotated[list[str], names()] = field(default_factory=list)

    @classmethod
    def from_claims(cls, claims: Claims) -> KindPolicy:
        m, f = claims.measurements, claims.fields
        return cls(
            mrtd=[m["mrtd"]],
            rtmr0=[m["rtmr0"]],
            rtmr1=[m["rtmr1"]],
            rtmr2=[m["rtmr2"]],
            rtmr3=[m["rtmr3"]],
            mrseam=[m["mrseam"]],
            allow_debug=claims.debug,
            td_attributes=str(f["td_attributes"]),
            td_attributes_mask="ff" * 8,
            xfam=str(f["xfam"]),
            xfam_mask="ff" * 8,
            allowed_tcb_status=[claims.tcb_status or "UpToDate"],
            allowed_advisories=list(claims.advisory_ids),
        )

    def check(self, claims: Claims) -> None:
        if claims.kind != KIND:
            raise PolicyError(f"expected tdx claims, got {claims.kind}")
        for name in MEASUREMENTS:
            expect_hex_in(f"tdx.{name}", getattr(self, name), claims.measurements[name])
        _dcap.check_debug(KIND, self.allow_debug, claims.debug)
        f = claims.fields
        _dcap.check_masked_hex(
            "tdx.td_attributes", self.td_attributes, self.td_attributes_mask,
            str(f["td_attributes"]),
        )  # fmt: skip
        _dcap.check_masked_hex("tdx.xfam", self.xfam, self.xfam_mask, str(f["xfam"]))
        _dcap.check_tcb(KIND, self.allowed_tcb_status, self.allowed_advisories, claims)
