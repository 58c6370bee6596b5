"""Symplectic and non-symplectic integrators for H(q, p) = |p|^2 / 2m + V(q).

The functional core of the Hamiltonian model (``physllm.hamiltonian.model``):
each of its layers is one :func:`leapfrog_step`. Everything here is a pure
function of tensors and a force (or potential) callable, so it can be checked
on a harmonic oscillator, where the exact answer is known, and on the model's
own potential with the context held fixed.

Hamilton's equations for a particle of mass m:

    dq/dt =  dH/dp = p / m
    dp/dt = -dH/dq = -dV/dq = F(q)

Leapfrog (velocity Verlet) splits one step of size dt into kick-drift-kick:

    p_{1/2} = p_0     + dt/2 F(q_0)       half kick
    q_1     = q_0     + dt p_{1/2} / m    drift
    p_1     = p_{1/2} + dt/2 F(q_1)       half kick

Position Verlet is the same splitting the other way round, drift-kick-drift:

    q_{1/2} = q_0     + dt/2 p_0 / m      half drift
    p_1     = p_0     + dt F(q_{1/2})     kick
    q_1     = q_{1/2} + dt/2 p_1 / m      half drift

one force evaluation per step. Velocity Verlet also needs only one per step
when the force is the same at every step (the closing kick's force opens the
next step); position Verlet needs one even when every step has its own force
(a model's layers), since a drift costs no force at all.

Each sub-step is the exact flow of a part of H (kinetic or potential), and
exact flows are symplectic, so their composition is too: the map preserves
phase-space volume and exactly conserves a "shadow" Hamiltonian
H~ = H + O(dt^2). The energy error therefore oscillates, bounded, at O(dt^2)
forever. The map is also time-reversible: stepping with -dt undoes a step.

Explicit Euler moves q and p from the same old point:

    q_1 = q_0 + dt p_0 / m,    p_1 = p_0 + dt F(q_0)

Its Jacobian has determinant 1 + dt^2 k/m on the oscillator V = k q^2 / 2,
so every step inflates phase-space area and the energy grows without bound
(by the factor 1 + dt^2 k/m per step on the oscillator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Force = Callable[[torch.Tensor], torch.Tensor]
Potential = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- energy


def kinetic_energy(p: torch.Tensor, mass: float | torch.Tensor = 1.0) -> torch.Tensor:
    """T = |p|^2 / 2m, summed over the last dimension: (..., D) -> (...)."""
    return 0.5 * (p * p).sum(-1) / mass


def hamiltonian(
    q: torch.Tensor, p: torch.Tensor, potential: Potential, mass: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """H = |p|^2 / 2m + V(q); ``potential`` maps (..., D) to (...)."""
    return kinetic_energy(p, mass) + potential(q)


def force_from_potential(potential: Potential, create_graph: bool = False) -> Force:
    """F(q) = -dV/dq by autograd, for a potential returning one energy per row (...)."""

    def force(q: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            # A fresh node: only the paths through q itself count (not, say, a
            # context that was computed from the same tensor).
            q_ = q.clone() if q.requires_grad else q.detach().requires_grad_(True)
            V = potential(q_).sum()
            (dV,) = torch.autograd.grad(V, q_, create_graph=create_graph)
        return -dV

    return force


# --------------------------------------------------------------------------- steps


def leapfrog_step(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float | torch.Tensor,
    mass: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One velocity-Verlet step: half kick, drift, half kick."""
    # p_{1/2} = p_0 + dt/2 F(q_0)
    p_half = p + 0.5 * dt * force(q)
    # q_1 = q_0 + dt p_{1/2} / m
    q_new = q + dt * p_half / mass
    # p_1 = p_{1/2} + dt/2 F(q_1)
    p_new = p_half + 0.5 * dt * force(q_new)
    return q_new, p_new


def position_verlet_step(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float | torch.Tensor,
    mass: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One position-Verlet step: half drift, kick, half drift."""
    return drift_kicks(q, p, force, dt, 0.5 * dt / mass, 1)


def leapfrog_steps(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float | torch.Tensor,
    n_steps: int,
    mass: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_steps`` velocity-Verlet steps; a step's closing force opens the next one, so
    each step evaluates the force once (n + 1 evaluations in all, not 2n)."""
    return leapfrog_kicks(q, p, force, 0.5 * dt, dt / mass, n_steps)


def _axpy(y: torch.Tensor, a: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y + a x in one op, for a float or a 0-dim tensor a."""
    return torch.addcmul(y, a, x) if isinstance(a, torch.Tensor) else torch.add(y, x, alpha=a)


def leapfrog_kicks(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    half_dt: float | torch.Tensor,
    drift: float | torch.Tensor,
    n_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`leapfrog_steps` from its factors, half_dt = dt / 2 and drift = dt / m, so a
    caller that steps many times with the same dt (decoding) computes them once."""
    f = force(q)
    for _ in range(n_steps):
        p_half = _axpy(p, half_dt, f)  # p_{1/2} = p + dt/2 F(q)
        q = _axpy(q, drift, p_half)  # q_1 = q + dt p_{1/2} / m
        f = force(q)
        p = _axpy(p_half, half_dt, f)  # p_1 = p_{1/2} + dt/2 F(q_1)
    return q, p


def drift_kicks(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    kick: float | torch.Tensor,
    half_drift: float | torch.Tensor,
    n_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_steps`` position-Verlet steps from their factors, kick = dt and half_drift =
    dt / 2m: a step's closing half drift and the next one's opening half drift merge into
    one drift, so the force is evaluated n times."""
    q = _axpy(q, half_drift, p)  # q_{1/2} = q + dt/2 p / m
    for i in range(n_steps):
        p = _axpy(p, kick, force(q))  # p_1 = p + dt F(q_{1/2})
        # q_1 = q_{1/2} + dt/2 p_1 / m, then the next step's half drift with the same p_1
        q = _axpy(q, half_drift if i == n_steps - 1 else 2 * half_drift, p)
    return q, p


def euler_step(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float | torch.Tensor,
    mass: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One explicit (forward) Euler step: both updates read the old point."""
    # q_1 = q_0 + dt p_0 / m,  p_1 = p_0 + dt F(q_0)
    return q + dt * p / mass, p + dt * force(q)


STEPS = {"leapfrog": leapfrog_step, "position_verlet": position_verlet_step, "euler": euler_step}


def integrate(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float,
    n_steps: int,
    method: str = "leapfrog",
    mass: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trajectory from (q, p) (..., D): returns qs, ps of shape (n_steps + 1, ..., D)."""
    step = STEPS[method]
    qs, ps = [q], [p]
    for _ in range(n_steps):
        q, p = step(q, p, force, dt, mass)
        qs.append(q)
        ps.append(p)
    return torch.stack(qs), torch.stack(ps)


# --------------------------------------------------------------------------- measurements


def relative_energy_error(
    qs: torch.Tensor, ps: torch.Tensor, potential: Potential, mass: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """|H(t) - H(0)| / |H(0)| along a trajectory (n + 1, ..., D) -> (n + 1, ...)."""
    H = hamiltonian(qs, ps, potential, mass)
    return (H - H[0]).abs() / H[0].abs().clamp_min(1e-30)


def energy_drift_vs_dt(
    q0: torch.Tensor,
    p0: torch.Tensor,
    potential: Potential,
    dts: Sequence[float],
    t_final: float,
    methods: Sequence[str] = ("leapfrog", "euler"),
    mass: float = 1.0,
    force: Force | None = None,
) -> dict[str, list[float]]:
    """Max relative energy error over [0, t_final] for each dt and method.

    The same physical time for every dt, so the numbers measure the method's
    order, not the length of the run.
    """
    force = force or force_from_potential(potential)
    out: dict[str, list[float]] = {m: [] for m in methods}
    for dt in dts:
        n = max(1, round(t_final / dt))
        for m in methods:
            qs, ps = integrate(q0, p0, force, dt, n, m, mass)
            err = relative_energy_error(qs, ps, potential, mass).detach()
            out[m].append(float(err.max()))
    return out


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x: the order of an error law y ~ x^k."""
    lx = torch.tensor([math.log(x) for x in xs], dtype=torch.float64)
    ly = torch.tensor([math.log(y) for y in ys], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


def reversibility_error(
    q: torch.Tensor,
    p: torch.Tensor,
    force: Force,
    dt: float,
    n_steps: int,
    method: str = "leapfrog",
    mass: float | torch.Tensor = 1.0,
) -> float:
    """Integrate n steps forward, then n steps with -dt: max |distance| from the start."""
    step = STEPS[method]
    q1, p1 = q, p
    for _ in range(n_steps):
        q1, p1 = step(q1, p1, force, dt, mass)
    for _ in range(n_steps):
        q1, p1 = step(q1, p1, force, -dt, mass)
    return float(torch.maximum((q1 - q).abs().max(), (p1 - p).abs().max()))


# --------------------------------------------------------------------------- harmonic oscillator


def harmonic_potential(k: float = 1.0) -> Potential:
    """V(q) = k |q|^2 / 2 (one energy per row)."""
    return lambda q: 0.5 * k * (q * q).sum(-1)


def harmonic_exact(
    q0: torch.Tensor, p0: torch.Tensor, t: torch.Tensor | float, k: float = 1.0, mass: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact flow of the oscillator: a rotation in (q, p / (m w)) at w = sqrt(k/m)."""
    w = math.sqrt(k / mass)
    t = torch.as_tensor(t, dtype=q0.dtype)
    c, s = torch.cos(w * t), torch.sin(w * t)
    return q0 * c + p0 / (mass * w) * s, p0 * c - q0 * mass * w * s
