"""Policy tables are declared once per kind: round trips and located refusals, for every kind."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import tomli_w

from blindinfer.attestation import _nitro as nitro
from blindinfer.attestation import _sgx as sgx
from blindinfer.attestation import _simulation as simulation
from blindinfer.attestation import _snp as snp
from blindinfer.attestation import _tdx as tdx
from blindinfer.attestation._claims import Claims
from blindinfer.attestation._policy import Policy, TablePolicy
from blindinfer.errors import ConfigError

MODULES = {"simulation": simulation, "sgx": sgx, "tdx": tdx, "snp": snp, "nitro": nitro}

# Claims as each verifier produces them (only the values from_claims and check read).
CLAIMS = {
    "simulation": Claims(
        kind="simulation",
        report_data=b"\0" * 64,
        measurements={"measurement": "aa" * 32},
        debug=True,
        insecure=True,
        fields={"signer": "bb" * 32},
    ),
    "sgx": Claims(
        kind="sgx",
        report_data=b"\0" * 64,
        measurements={"mrenclave": "01" * 32, "mrsigner": "02" * 32},
        debug=False,
        tcb_status="SWHardeningNeeded",
        advisory_ids=("INTEL-SA-00615",),
        fields={"isv_prod_id": 3, "isv_svn": 4, "attributes": "07" * 16, "misc_select": 5},
    ),
    "tdx": Claims(
        kind="tdx",
        report_data=b"\0" * 64,
        measurements={m: f"{i:02x}" * 48 for i, m in enumerate(tdx.MEASUREMENTS)},
        debug=False,
        tcb_status="UpToDate",
        fields={"td_attributes": "00" * 8, "xfam": "e7" * 8},
    ),
    "snp": Claims(
        kind="snp",
        report_data=b"\0" * 64,
        measurements={"measurement": "cc" * 48, "host_data": "dd" * 32},
        debug=False,
        fields={
            "policy": 0x30000,
            "migrate_ma": False,
            "reported_tcb": {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 4},
            "vmpl": 0,
            "guest_svn": 2,
            "family_id": "ee" * 16,
            "image_id": "ff" * 16,
        },
    ),
    "nitro": Claims(
        kind="nitro",
        report_data=b"",
        measurements={f"pcr{i}": f"{i:02x}" * 48 for i in (0, 1, 2, 3, 4, 8)},
        debug=False,
    ),
}


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_round_trip_through_toml(kind: str) -> None:
    cls = MODULES[kind].KindPolicy
    claims = CLAIMS[kind]
    pol = cls.from_claims(claims)
    pol.check(claims)
    table = pol.to_dict()
    back = cls.from_dict(tomllib.loads(tomli_w.dumps({kind: table}))[kind])
    assert back == pol
    assert Policy.from_toml(Policy({kind: pol}).to_toml()).kinds[kind] == pol
    # Every written key is a declared one, and an empty table gives the defaults.
    assert set(table) <= set(cls.specs())
    assert cls.from_dict({}) == cls()


def test_defaults_and_implied_masks() -> None:
    assert sgx.KindPolicy().allowed_tcb_status == ["UpToDate"]
    assert sgx.KindPolicy().to_dict() == {
        "allow_debug": False,
        "allowed_tcb_status": ["UpToDate"],
        "allowed_advisories": [],
    }
    got = sgx.KindPolicy.from_dict({"attributes": "AB" * 16, "misc_select": "0x1f"})
    assert got.attributes == "ab" * 16 and got.attributes_mask == "ff" * 16
    assert got.misc_select == 0x1F and got.misc_select_mask is None
    got_tdx = tdx.KindPolicy.from_dict({"xfam": "e7" * 8, "mrtd": "AA" * 48})
    assert got_tdx.xfam_mask == "ff" * 8 and got_tdx.td_attributes_mask is None
    assert got_tdx.mrtd == ["aa" * 48]
    assert snp.KindPolicy.from_dict({"min_tcb": {"fmc": 1}}).min_tcb == {"fmc": 1}
    assert nitro.KindPolicy.from_dict({"pcr0": "00" * 32}).pcr0 == ["00" * 32]


# (kind, table, substrings the refusal must contain). Each names the kind, the key and the problem.
REFUSALS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # unknown keys: the known ones are listed
    ("simulation", {"measurment": "aa" * 32}, ("[simulation]", "'measurment'", "known:")),
    ("sgx", {"mrenclav": "aa" * 32}, ("[sgx]", "'mrenclav'", "'mrenclave'")),
    ("tdx", {"rtmr4": "00" * 48}, ("[tdx]", "'rtmr4'", "'rtmr3'")),
    ("snp", {"measurment": "aa" * 48}, ("[snp]", "'measurment'", "'measurement'")),
    ("nitro", {"pcr5": "00" * 48}, ("[nitro]", "'pcr5'", "'pcr8'")),
    # wrong types
    ("simulation", {"signer": 3}, ("[simulation] signer", "hex string")),
    ("sgx", {"allow_debug": "yes"}, ("[sgx] allow_debug", "true or false")),
    ("sgx", {"isv_prod_id": True}, ("[sgx] isv_prod_id", "16 bits")),
    ("sgx", {"isv_prod_id": 1 << 16}, ("[sgx] isv_prod_id", "16 bits")),
    ("sgx", {"misc_select": "xyz"}, ("[sgx] misc_select", "32 bits", "'xyz'")),
    ("sgx", {"allowed_advisories": [1]}, ("[sgx] allowed_advisories", "list of strings")),
    ("sgx", {"allowed_tcb_status": ["Uptodate"]}, ("[sgx] allowed_tcb_status", "'Uptodate'")),
    ("tdx", {"allow_debug": 1}, ("[tdx] allow_debug", "true or false")),
    ("tdx", {"allowed_tcb_status": "UpToDateish"}, ("[tdx] allowed_tcb_status", "UpToDateish")),
    ("snp", {"vmpl": True}, ("[snp] vmpl", "non-negative integer")),
    ("snp", {"min_guest_svn": -1}, ("[snp] min_guest_svn", "non-negative integer")),
    ("snp", {"allow_migration_agent": "no"}, ("[snp] allow_migration_agent", "true or false")),
    ("snp", {"min_tcb": 3}, ("[snp] min_tcb", "must be a table")),
    ("snp", {"min_tcb": {"sp": 1}}, ("[snp] min_tcb", "'sp'", "known:")),
    ("snp", {"min_tcb": {"bootloader": -1}}, ("[snp] min_tcb.bootloader", "non-negative")),
    ("nitro", {"allow_debug": 1}, ("[nitro] allow_debug", "true or false")),
    ("nitro", {"pcr0": 3}, ("[nitro] pcr0", "hex string")),
    # bad hex and wrong lengths
    ("simulation", {"measurement": "zz"}, ("[simulation] measurement", "'zz' is not hex")),
    ("simulation", {"measurement": "abcd"}, ("[simulation] measurement", "32 bytes", "has 2")),
    ("sgx", {"mrenclave": ["aa" * 32, "aa"]}, ("[sgx] mrenclave", "32 bytes", "'aa' has 1")),
    ("sgx", {"attributes": "05"}, ("[sgx] attributes", "16 bytes of hex", "'05'")),
    ("tdx", {"mrtd": "00" * 32}, ("[tdx] mrtd", "48 bytes", "has 32")),
    ("tdx", {"td_attributes": "00"}, ("[tdx] td_attributes", "8 bytes of hex")),
    ("snp", {"host_data": "00" * 48}, ("[snp] host_data", "32 bytes", "has 48")),
    ("snp", {"family_id": "zz" * 16}, ("[snp] family_id", "is not hex")),
    ("nitro", {"pcr0": "abcd"}, ("[nitro] pcr0", "32, 48 or 64 bytes", "has 2")),
    ("nitro", {"pcr0": "zz" * 48}, ("[nitro] pcr0", "is not hex")),
    # a mask without its value
    ("sgx", {"attributes_mask": "ff" * 16}, ("[sgx] attributes_mask", "attributes is not")),
    ("sgx", {"misc_select_mask": 1}, ("[sgx] misc_select_mask", "misc_select is not")),
    ("tdx", {"xfam_mask": "ff" * 8}, ("[tdx] xfam_mask", "xfam is not")),
]


@pytest.mark.parametrize(("kind", "table", "needles"), REFUSALS)
def test_refusals_are_located(kind: str, table: dict[str, Any], needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        MODULES[kind].KindPolicy.from_dict(table)
    msg = str(err.value)
    assert msg.startswith("policy: ")
    for needle in needles:
        assert needle in msg, (needle, msg)
    with pytest.raises(ConfigError):  # the same through a policy file
        Policy.from_toml(tomli_w.dumps({kind: table}))


def test_every_kind_is_a_table_policy() -> None:
    for kind, mod in MODULES.items():
        assert issubclass(mod.KindPolicy, TablePolicy)
        assert mod.KindPolicy.kind == kind
        assert mod.KindPolicy.specs(), kind
