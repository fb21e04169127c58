"""agentd: declarative node agent for k3s edge fleets running WebAssembly workloads."""

__version__ = "0.1.0"
