"""The Hamiltonian LLM (notebook 01): tokens with position and momentum, a symplectic
integrator as the layers, steering toward or away from a word."""

from physllm.arch import Architecture, Entry, Headline
from physllm.hamiltonian.model import HamiltonianConfig, HamiltonianLM
from physllm.hamiltonian.presets import PRESETS
from physllm.hamiltonian.steering import STEER_COMMAND

ARCH = Architecture(
    name="hamiltonian",
    config_class=HamiltonianConfig,
    model_class=HamiltonianLM,
    notebook="01_hamiltonian",
    presets=PRESETS,
    leaderboard=(
        Entry(
            "hamiltonian",
            "hamiltonian",
            "leapfrog-shaped layers, non-conservative force (mode direct: no energy exists)",
            # position Verlet: lower validation loss than velocity Verlet at equal wall-clock
            # (reports/choices/hamiltonian_integrator_cpu, `python -m physllm choose`)
            {"integrator": "position"},
            per_preset={"gpu": {"eos_id": -1}},  # its gpu preset's id is gpt2"s; bytes have none
        ),
    ),
    headlines=(
        Headline(
            "01_hamiltonian", "symplectic", "leapfrog-shaped, non-conservative force (mode direct)"
        ),
        Headline(
            "01_hamiltonian", "symplectic-conservative", "symplectic: conservative force F = -dV/dq"
        ),
        Headline("01_hamiltonian", "seed", "the seed's model"),
    ),
    commands=(STEER_COMMAND,),
)

__all__ = ["ARCH", "HamiltonianConfig", "HamiltonianLM"]
