"""The blindinfer SDK: attested connections to a blindinfer server."""

from blindinfer.client.connection import (
    Connection,
    InsecureSimulationWarning,
    ModelInfo,
    attest,
    connect,
)

__all__ = ["Connection", "InsecureSimulationWarning", "ModelInfo", "attest", "connect"]
