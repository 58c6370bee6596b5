"""Leapfrog vs explicit Euler on a harmonic oscillator (exact answer known) and on
the Hamiltonian model's own conservative potential with the context held fixed."""

from __future__ import annotations

import math

import pytest
import torch

from physllm.hamiltonian.integrators import (
    drift_kicks,
    energy_drift_vs_dt,
    force_from_potential,
    harmonic_exact,
    harmonic_potential,
    integrate,
    kinetic_energy,
    leapfrog_step,
    loglog_slope,
    position_verlet_step,
    relative_energy_error,
    reversibility_error,
)
from physllm.hamiltonian.model import DecayConv, HamiltonianConfig, HamiltonianLM

DTS = [0.01, 0.02, 0.05, 0.1]


def oscillator():
    q0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    p0 = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    V = harmonic_potential(2.0)
    return q0, p0, V, force_from_potential(V)


def model_system(seed: int = 0):
    """(q0, p0, V, F) of one conservative layer of a random model, context fixed, float64.

    The potential's learned term is scaled up so that it, not the confining
    kappa |q|^2 / 2, dominates the force: the dynamics are genuinely nonlinear.
    """
    torch.manual_seed(seed)
    cfg = HamiltonianConfig(
        vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, mode="conservative"
    )
    model = HamiltonianLM(cfg).double()
    layer = model.layers[0]
    with torch.no_grad():
        layer.v.normal_(std=1.0)
        layer.c_fc.weight.normal_(std=0.5)
        model.wte.weight.normal_(std=1.0)
        model.wte_p.weight.normal_(std=1.0)
    idx = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        q0, p0 = model.phase_space(idx)
        c = layer.context(q0)  # fixed context

    def V(q):  # one energy per token: given the context, tokens move independently
        return layer.potential(q, c)

    return q0, p0, V, force_from_potential(V)


SYSTEMS = {"oscillator": oscillator, "model": model_system}


SYMPLECTIC = ("leapfrog", "position_verlet")  # velocity Verlet, and drift-kick-drift


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("method", SYMPLECTIC)
def test_leapfrog_energy_bounded_euler_grows(system, method):
    q0, p0, V, F = SYSTEMS[system]()
    errs = {}
    for m in (method, "euler"):
        qs, ps = integrate(q0, p0, F, 0.05, 1000, m)
        errs[m] = relative_energy_error(qs, ps, V).flatten(1).max(-1).values  # worst token
    lf, eu = errs[method], errs["euler"]
    # bounded: the second half's worst error is within 1.5x of the first half's
    assert lf[501:].max() <= 1.5 * lf[1:501].max()
    # Euler's grows
    assert eu[501:].max() > 1.5 * eu[1:501].max()
    assert eu[-1] > eu[100]
    # at dt = 0.05 leapfrog is at least 10x better
    assert lf.max() * 10 <= eu.max()


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("method", SYMPLECTIC)
def test_leapfrog_error_is_second_order(system, method):
    q0, p0, V, F = SYSTEMS[system]()
    drift = energy_drift_vs_dt(q0, p0, V, DTS, t_final=2.0, methods=(method, "euler"), force=F)
    slope = loglog_slope(DTS, drift[method])
    assert 1.8 <= slope <= 2.2, slope
    # Euler is first order: its error falls only about linearly with dt
    assert loglog_slope(DTS, drift["euler"]) < 1.3


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("method", SYMPLECTIC)
def test_leapfrog_is_reversible(system, method):
    q0, p0, _, F = SYSTEMS[system]()
    assert reversibility_error(q0, p0, F, 0.05, 200, method) < 1e-6
    # Euler is not: backward Euler steps with -dt do not undo forward ones
    assert reversibility_error(q0, p0, F, 0.05, 200, "euler") > 1e-4


def test_oscillator_matches_exact_solution():
    q0, p0, _, F = oscillator()
    qs, ps = integrate(q0, p0, F, 0.01, 500, "leapfrog")
    q_exact, p_exact = harmonic_exact(q0, p0, 5.0, k=2.0)
    assert torch.allclose(qs[-1], q_exact, atol=1e-3)
    assert torch.allclose(ps[-1], p_exact, atol=1e-3)


def test_force_is_minus_gradient():
    q0, _, V, F = model_system()
    q = q0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(V(q).sum(), q)
    assert torch.allclose(F(q0), -grad)
    # finite differences on one coordinate
    e = torch.zeros_like(q0)
    e[0, 3, 5] = 1e-6
    with torch.no_grad():
        fd = (V(q0 + e) - V(q0 - e)).sum() / 2e-6
    assert math.isclose(fd.item(), -F(q0)[0, 3, 5].item(), rel_tol=1e-5, abs_tol=1e-8)


@pytest.mark.parametrize(
    "integrator, step", [("velocity", leapfrog_step), ("position", position_verlet_step)]
)
def test_model_layer_is_one_leapfrog_step(integrator, step):
    """A conservative layer's forward equals its integrator's step on its own potential
    (fixed context)."""
    q0, p0, _, _ = model_system()
    torch.manual_seed(0)
    cfg = HamiltonianConfig(
        vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, mode="conservative",
        integrator=integrator,
    )  # fmt: skip
    layer = HamiltonianLM(cfg).double().layers[0]
    with torch.no_grad():
        c = layer.context(q0)
        q1, p1 = layer(q0, p0)
    F = force_from_potential(lambda q: layer.potential(q, c))
    q2, p2 = step(q0, p0, F, float(layer.dt.detach()))
    assert torch.allclose(q1, q2) and torch.allclose(p1, p2)


def test_position_verlet_merges_half_drifts_and_evaluates_the_force_once_per_step():
    """drift_kicks(n) is n position-Verlet steps (adjacent half drifts merged), with n force
    evaluations; velocity Verlet with a step's own force needs two per step."""
    q0, p0, _, F = oscillator()
    calls = []

    def counted(q):
        calls.append(1)
        return F(q)

    q1, p1 = q0, p0
    for _ in range(5):
        q1, p1 = position_verlet_step(q1, p1, F, 0.1)
    q2, p2 = drift_kicks(q0, p0, counted, 0.1, 0.05, 5)
    torch.testing.assert_close((q2, p2), (q1, p1), atol=1e-12, rtol=0)
    assert len(calls) == 5
    calls.clear()
    leapfrog_step(q0, p0, counted, 0.1)
    assert len(calls) == 2


def test_local_influence_decays_as_learned_exponential():
    torch.manual_seed(0)
    conv = DecayConv(channels=6, kernel=12, decay_init=0.5).double()
    with torch.no_grad():
        conv.raw_decay.uniform_(-2.0, 1.0)  # a different decay per channel
        conv.gain.uniform_(0.5, 1.5)
    T = 20
    x = torch.randn(1, T, 6, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    # influence of token t-k on token t: d y_t / d x_{t-k}, per channel
    t = T - 1
    grads = torch.stack(
        [torch.autograd.grad(y[0, t, ch], x, retain_graph=True)[0][0, :, ch] for ch in range(6)]
    )  # (C, T)
    influence = grads[:, t - torch.arange(12)]  # (C, K): k = 0..11
    lam = conv.decay.detach()
    expected = conv.gain.detach()[:, None] * torch.exp(-lam[:, None] * torch.arange(12))
    assert torch.allclose(influence, expected)
    # log-linear in k with slope -lambda, and nothing from beyond the kernel or the future
    for ch in range(6):
        slope = loglog_slope([math.exp(k) for k in range(12)], influence[ch].tolist())
        assert math.isclose(slope, -float(lam[ch]), rel_tol=1e-6)
    assert grads[:, : t - 11].abs().max() == 0
    future = torch.autograd.grad(y[0, 5].sum(), x)[0][0, 6:]
    assert future.abs().max() == 0


def frozen_context_layer(mode: str, substeps: int = 1, dt: float = 0.5):
    """One float64 layer with O(1) weights and its context frozen at a fixed input: the map
    (q, p) -> (q', p') it computes, and the (q, p) it was frozen at (1, 3, 4 each)."""
    torch.manual_seed(0)
    cfg = HamiltonianConfig(
        vocab_size=20,
        block_size=8,
        n_layer=1,
        n_head=2,
        n_embd=4,
        mode=mode,
        dt=dt,
        substeps=substeps,
    )
    layer = HamiltonianLM(cfg).double().layers[0]
    with torch.no_grad():
        for param in layer.parameters():  # far from init, where every force is nearly linear
            param.normal_(0.0, 0.5)
        layer.dt.fill_(dt)
    q0, p0 = torch.randn(2, 1, 3, 4, dtype=torch.float64).unbind(0)
    c = layer.context(q0).detach()
    layer.context = lambda q, cache=None: c  # the layer's own forward, its context held
    return layer, q0, p0


def symplectic_defect(layer, q0: torch.Tensor, p0: torch.Tensor) -> float:
    """max |J^T Omega J - Omega| of the layer's map at (q0, p0), Omega = [[0, I], [-I, 0]]."""
    n = q0.numel()

    def step(z: torch.Tensor) -> torch.Tensor:
        q, p = layer(z[:n].view_as(q0), z[n:].view_as(p0))
        return torch.cat([q.flatten(), p.flatten()])

    J = torch.autograd.functional.jacobian(step, torch.cat([q0.flatten(), p0.flatten()]))
    eye, zero = torch.eye(n, dtype=J.dtype), torch.zeros(n, n, dtype=J.dtype)
    omega = torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)])
    return float((J.T @ omega @ J - omega).abs().max())


@pytest.mark.parametrize("substeps", [1, 3])
def test_conservative_layer_is_symplectic_direct_is_not(substeps):
    """J^T Omega J = Omega for the conservative layer (context frozen); the direct force is
    the gradient of nothing, so the same leapfrog shape does not preserve Omega."""
    conservative = symplectic_defect(*frozen_context_layer("conservative", substeps))
    direct = symplectic_defect(*frozen_context_layer("direct", substeps))
    assert conservative < 1e-8
    assert direct > 1e-3


def test_substeps_cut_the_energy_error_as_one_over_k_squared():
    """k leapfrog steps of dt / k: the layer's energy error falls about k^2-fold."""
    errors = []
    for k in (1, 4):
        layer, q0, p0 = frozen_context_layer("conservative", substeps=k, dt=0.2)
        c = layer.context(q0)
        with torch.no_grad():
            q1, p1 = layer(q0, p0)
            H0 = kinetic_energy(p0) + layer.potential(q0, c)
            H1 = kinetic_energy(p1) + layer.potential(q1, c)
        errors.append(float(((H1 - H0).abs() / H0.abs()).max()))
    assert errors[0] > 0 and errors[1] < errors[0] / 8
