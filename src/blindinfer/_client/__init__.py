"""The blindinfer SDK: attested connections to a blindinfer server."""

from blindinfer._client.connection import (
    Connection,
    InsecureSimulationWarning,
    ModelInfo,
    attest,
    connect,
)

__all__ = ["Connection", "InsecureSimulationWarning", "ModelInfo", "attest", "connect"]
