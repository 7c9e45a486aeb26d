# Trustee KBS resource policy for blindinfer: release default/blindinfer/sealing-key (the key
# that seals the shared model store) only to a replica whose TEE evidence the attestation service
# affirmed AND whose measured initdata is exactly the one this deployment rendered (owner token
# sha256, agent policy, KBS URL). Any other resource is refused.
#
# Input: the claims of an EAR attestation token (Trustee's CoCo attestation service, the default
# token type), `input.submods.cpu0`. Data: `data.plugin` and `data["resource-path"]` (a string
# "repo/type/tag" in older KBS releases, a list of segments in newer ones; both are handled).
#
# Replace the two digests with what deploy/k8s/initdata.py printed for your overlay, then
# register: see README.md. Check the claim names against `kbs-client attest` output of your
# Trustee version before relying on it.
package policy

import rego.v1

default allow := false

# deploy/k8s/initdata.py kata-qemu-tdx ... (sha384, MRCONFIGID)
tdx_initdata := "REPLACE-WITH-TDX-INITDATA-SHA384"

# deploy/k8s/initdata.py kata-qemu-snp ... (sha256, HOST_DATA)
snp_initdata := "REPLACE-WITH-SNP-INITDATA-SHA256"

sealing_key := ["default", "blindinfer", "sealing-key"]

path := split(trim_prefix(data["resource-path"], "/"), "/") if is_string(data["resource-path"])

path := data["resource-path"] if is_array(data["resource-path"])

cpu := input.submods.cpu0

evidence := cpu["ear.veraison.annotated-evidence"]

# AR4SI: executables 2-3 (approved boot chain), hardware 2 (genuine, supported TCB),
# configuration 2 (approved: no debug, no migration agent).
trustworthy if {
	cpu["ear.status"] == "affirming"
	cpu["ear.trustworthiness-vector"].executables in {2, 3}
	cpu["ear.trustworthiness-vector"].hardware == 2
	cpu["ear.trustworthiness-vector"].configuration == 2
}

# MRCONFIGID holds the initdata sha384 (48 bytes).
measured_initdata if {
	evidence.tdx.quote.body.mr_config_id == tdx_initdata
	evidence.tdx.td_attributes.debug == false
}

# HOST_DATA holds the initdata sha256 (32 bytes).
measured_initdata if {
	evidence.snp.evidence.host_data == snp_initdata
	evidence.snp.evidence.policy.debug_allowed == false
}

allow if {
	data.plugin == "resource"
	path == sealing_key
	trustworthy
	measured_initdata
}
