"""The modern Hopfield update, as pure functions (the module shell is ``models/hopfield.py``).

Names follow ml-jku/hopfield-layers: the *stored patterns* X = (x_1 ... x_N)
are the memories, the *state pattern* xi is the probe that gets cleaned up,
``update_steps_max`` bounds the iterations.

Energy of Ramsauer et al. (2020), "Hopfield Networks is All You Need", for
one head with inverse temperature beta:

    lse(beta, z) = 1/beta log sum_i exp(beta z_i)
    E(xi)        = -lse(beta, X^T xi) + 1/2 xi^T xi          (+ constants we drop)

Its minimiser by the concave-convex procedure (CCCP) is the update

    xi_new = X softmax(beta X^T xi)

which never increases E (the -lse term is concave, 1/2|xi|^2 convex: each
step minimises the convex part against the tangent of the concave one). One
step is attention with xi as the query and X as both keys and values; a
separate value matrix V read with the final weights gives the usual
key/value memory: out = V softmax(beta X^T xi).

A *bias* b_i per stored pattern (``bias``, e.g. a recency term: how late x_i was
written) adds a linear term inside the log-sum-exp,

    E(xi) = -1/beta log sum_i exp(beta x_i^T xi + b_i) + 1/2 xi^T xi,

still a concave function of xi (the lse of an affine map) plus a convex one, so the
same CCCP step xi_new = X softmax(beta X^T xi + b) still never increases E: the bias
only tilts which minimum a probe falls into (with b_i = gamma t_i, toward later
patterns when two match equally well).

Shapes: stored patterns (B, H, S, d) for S slots and H heads; state patterns
(B, H, Q, d) for Q probes; ``beta`` a float or (H,); ``mask`` (B, S), True
where a slot holds a memory. A batch of 1 in the stored patterns broadcasts
over the probes' batch. ``bias`` broadcasts against the logits (B, H, Q, S), e.g. (B, H, 1, S).
"""

from __future__ import annotations

import torch


def _beta(beta: torch.Tensor | float, ndim: int) -> torch.Tensor | float:
    """(H,) -> (H, 1, 1) so it broadcasts against (B, H, Q, S)."""
    if isinstance(beta, torch.Tensor) and beta.dim() == 1:
        return beta.view(-1, *([1] * (ndim - 2)))
    return beta


def similarity(
    state_pattern: torch.Tensor,
    stored_pattern: torch.Tensor,
    beta: torch.Tensor | float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """beta X^T xi (+ b): (B, H, Q, S) logits over slots; -inf where the slot is empty."""
    scores = _beta(beta, 4) * (state_pattern @ stored_pattern.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores


def get_association_matrix(
    state_pattern: torch.Tensor,
    stored_pattern: torch.Tensor,
    beta: torch.Tensor | float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(beta X^T xi + b): (B, H, Q, S), each probe's weights over the slots."""
    return similarity(state_pattern, stored_pattern, beta, mask, bias).softmax(dim=-1)


def energy(
    state_pattern: torch.Tensor,
    stored_pattern: torch.Tensor,
    beta: torch.Tensor | float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """E(xi) = -lse(beta, X^T xi + b / beta) + |xi|^2 / 2 for every probe: (B, H, Q)."""
    scores = similarity(state_pattern, stored_pattern, beta, mask, bias)
    # lse(beta, z) = log sum exp(beta z) / beta
    lse = torch.logsumexp(scores, dim=-1) / _beta(beta, 3)
    return -lse + 0.5 * state_pattern.pow(2).sum(-1)


def update(
    state_pattern: torch.Tensor,
    stored_pattern: torch.Tensor,
    beta: torch.Tensor | float,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One CCCP step: xi_new = X softmax(beta X^T xi + b), shape of ``state_pattern``."""
    p = get_association_matrix(state_pattern, stored_pattern, beta, mask, bias)  # (B, H, Q, S)
    return p @ stored_pattern  # (B, H, Q, d)


def retrieve(
    state_pattern: torch.Tensor,
    stored_pattern: torch.Tensor,
    beta: torch.Tensor | float,
    update_steps_max: int = 1,
    mask: torch.Tensor | None = None,
    pattern_projection: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the update ``update_steps_max`` (>= 1) times and read with the last weights.

    With one step this is exactly attention: out = V softmax(beta X^T xi).
    Returns ``(out, association, energies)``: ``out`` (B, H, Q, d_v) is
    ``pattern_projection`` (values, (B, H, S, d_v)) read with the last
    weights, or the new state X softmax(...) when no values are given;
    ``association`` (B, H, Q, S) those weights; ``energies`` (steps + 1, B,
    H, Q) the energy of the probe and of the state after each step. ``bias`` (broadcasts
    to (B, H, Q, S)): b_i added to every logit (see the module docstring).
    """
    if update_steps_max < 1:
        raise ValueError(f"update_steps_max must be >= 1, got {update_steps_max}")
    xi = state_pattern
    energies = [energy(xi, stored_pattern, beta, mask, bias)]
    for _ in range(update_steps_max):
        association = get_association_matrix(xi, stored_pattern, beta, mask, bias)  # (B, H, Q, S)
        xi = association @ stored_pattern  # xi <- X softmax(beta X^T xi + b)
        energies.append(energy(xi, stored_pattern, beta, mask, bias))
    values = stored_pattern if pattern_projection is None else pattern_projection
    return association @ values, association, torch.stack(energies)


__all__ = ["energy", "get_association_matrix", "retrieve", "similarity", "update"]
