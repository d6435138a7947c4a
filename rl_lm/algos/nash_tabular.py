"""Tabular Nash learning from human feedback.

A game is a preference matrix `P[..., i, j] = P(y_i > y_j)` with
`P + P^T = 1` (so `P_ii = 1/2`), a reference distribution `ref[..., n]` and a
regularization `beta > 0`. Leading axes are independent games (one per
prompt); every function broadcasts over them. The regularized game is

    J_beta(pi, pi') = P(pi > pi') - beta KL(pi || ref) + beta KL(pi' || ref),

whose unique, symmetric Nash equilibrium pi*_beta satisfies
pi*(y) proportional to ref(y) exp(P(y > pi*) / beta).

Here live the exact solvers (Nash Mirror Prox in closed form, Nash-MD, a
fixed-point solver for pi*_beta) and the metrics (exploitability, KL), used
as ground truth for the language-model algorithms and as a fixture in tests.
Iterations carry log-probabilities so that tiny probabilities and KLs stay
meaningful in float64. Library functions do not jit themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

_LINE_SEARCH_STEPS = np.exp2(-np.arange(31.0))

ROCK_PAPER_SCISSORS_A = ((0.0, 1.0, -1.0), (-1.0, 0.0, 1.0), (1.0, -1.0, 0.0))


def _check_game(P, ref, beta) -> None:
    """Fails early on shapes that do not form a game, or on a non-positive beta."""
    P, ref = jnp.asarray(P), jnp.asarray(ref)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"P must have shape [..., n, n]; got {P.shape}")
    if ref.shape[-1:] != P.shape[-1:]:
        raise ValueError(
            f"ref must have shape [..., n] with n = {P.shape[-1]} actions as P; got {ref.shape}"
        )
    if isinstance(beta, int | float) and beta <= 0:
        raise ValueError(f"beta must be > 0 (the KL regularization); got {beta}")


def _check_eta(eta) -> None:
    if isinstance(eta, int | float) and eta <= 0:
        raise ValueError(f"eta must be > 0 (the step size); got {eta}")


def preference_against(P, pi):
    """P(y > pi) = sum_j P[y, j] pi[j] for every action y.

    Args:
      P: [..., n, n] preference matrix.
      pi: [..., n] distribution of the opponent.

    Returns:
      [..., n] the probability that each action beats a draw from pi.
    """
    return jnp.matmul(P, pi[..., None])[..., 0]


def game_value(P, pi, pi2):
    """P(pi > pi2) = pi^T P pi2, the unregularized payoff of pi against pi2."""
    return jnp.sum(pi * preference_against(P, pi2), axis=-1)


def kl(p, q):
    """KL(p || q) over the last axis, with 0 log 0 = 0."""
    return jnp.sum(xlogy(p, p) - xlogy(p, q), axis=-1)


def j_beta(P, ref, beta, pi, pi2):
    """J_beta(pi, pi2) = P(pi > pi2) - beta KL(pi || ref) + beta KL(pi2 || ref)."""
    return game_value(P, pi, pi2) - beta * kl(pi, ref) + beta * kl(pi2, ref)


def best_response(P, ref, beta, pi):
    """argmax_pi' J_beta(pi', pi), in closed form: pi' proportional to ref exp(P(. > pi) / beta)."""
    return jax.nn.softmax(jnp.log(ref) + preference_against(P, pi) / beta, axis=-1)


def exploitability(P, ref, beta, pi):
    """The regularized duality gap of the symmetric profile (pi, pi).

    gap(pi) = max_pi' J_beta(pi', pi) - min_pi' J_beta(pi, pi'). Both optima
    are the best response b = best_response(pi) (the game is symmetric), and
    the gap equals 2 beta KL(pi || b): it is >= 0 and is 0 exactly at pi*_beta.
    It is computed in that KL form, which avoids subtracting O(1) payoffs.

    Args:
      P: [..., n, n] preference matrix.
      ref: [..., n] reference distribution.
      beta: regularization (> 0).
      pi: [..., n] the policy to evaluate.

    Returns:
      [...] the gap.
    """
    _check_game(P, ref, beta)
    return 2.0 * beta * kl(pi, best_response(P, ref, beta, pi))


def unregularized_exploitability(P, pi):
    """max_y P(y > pi) - 1/2: how much the best pure response beats pi; 0 at a plain Nash."""
    return jnp.max(preference_against(P, pi), axis=-1) - 0.5


def mp_proximal_step(P, ref, pi_k, opponent, beta, eta):
    """argmin_pi (1/beta) P(opponent > pi) + KL(pi || ref) + (1/eta) KL(pi || pi_k), in closed form.

    log pi = eta/(beta(1+eta)) P(. > opponent) + eta/(1+eta) log ref + 1/(1+eta) log pi_k + c.
    Nash-MP's half step is this with opponent = pi_k, its full step with
    opponent = pi_{k+1/2}; for the language-model algorithm it is the target
    of each half step.

    Args:
      P: [..., n, n] preference matrix.
      ref: [..., n] reference distribution.
      pi_k: [..., n] the anchor.
      opponent: [..., n] the policy pi must beat.
      beta: regularization (> 0).
      eta: step size (> 0).

    Returns:
      [..., n] the minimizer.
    """
    _check_game(P, ref, beta)
    _check_eta(eta)
    return jnp.exp(_mp_prox(P, jnp.log(ref), jnp.log(pi_k), opponent, beta, eta))


def _mp_prox(P, log_ref, log_pi_k, opponent, beta, eta):
    logits = (
        eta / (beta * (1.0 + eta)) * preference_against(P, opponent)
        + eta / (1.0 + eta) * log_ref
        + 1.0 / (1.0 + eta) * log_pi_k
    )
    return jax.nn.log_softmax(logits, axis=-1)


def _mp_log_step(P, log_ref, log_pi_k, beta, eta):
    log_half = _mp_prox(P, log_ref, log_pi_k, jnp.exp(log_pi_k), beta, eta)
    return _mp_prox(P, log_ref, log_pi_k, jnp.exp(log_half), beta, eta)


def nash_mp_step(P, ref, pi_k, beta, eta):
    """One exact Nash Mirror Prox iteration (Tiapkin et al. 2025), two preference queries.

    The half step pi_{k+1/2} is the proximal step against pi_k, the full step
    the proximal step (again from pi_k) against pi_{k+1/2}; both in closed
    form (`mp_proximal_step`).

    Args:
      P: [..., n, n] preference matrix.
      ref: [..., n] reference distribution.
      pi_k: [..., n] the anchor.
      beta: regularization (> 0).
      eta: step size (> 0); eta = 2 beta gives KL(pi* || pi_k) <= (1+2 beta)^-k KL(pi* || ref).

    Returns:
      [..., n] pi_{k+1}.
    """
    _check_game(P, ref, beta)
    _check_eta(eta)
    return jnp.exp(_mp_log_step(P, jnp.log(ref), jnp.log(pi_k), beta, eta))


def _trajectory(log_step, log_pi0, num_iters):
    def body(log_pi, _):
        log_next = log_step(log_pi)
        return log_next, jnp.exp(log_next)

    _, pis = jax.lax.scan(body, log_pi0, None, length=num_iters)
    return jnp.concatenate([jnp.exp(log_pi0)[None], pis], axis=0)


def nash_mp(P, ref, beta, eta, num_iters: int, pi0=None):
    """Runs exact Nash-MP from pi0 (default ref).

    Args:
      P: [..., n, n] preference matrix.
      ref: [..., n] reference distribution.
      beta: regularization (> 0).
      eta: step size (> 0).
      num_iters: number of iterations K (a Python int).
      pi0: [..., n] start; ref when None.

    Returns:
      [K + 1, ..., n] the iterates pi_0, ..., pi_K.
    """
    _check_game(P, ref, beta)
    _check_eta(eta)
    log_ref = jnp.log(ref)
    log_pi0 = log_ref if pi0 is None else jnp.log(pi0)
    return _trajectory(lambda lp: _mp_log_step(P, log_ref, lp, beta, eta), log_pi0, num_iters)


def nash_md(P, ref, beta, eta, num_iters: int, pi0=None):
    """Runs Nash-MD (Munos et al. 2024, "Nash learning from human feedback") from pi0.

    pi^mu_t proportional to pi_t^(1 - eta beta) ref^(eta beta);
    pi_{t+1} proportional to pi^mu_t exp(eta P(. > pi^mu_t)).
    This is the paper's mirror-descent step on J_beta with the KL to ref
    folded into the mixture, so no 1/beta scales the preference. Its fixed
    points satisfy pi proportional to ref exp(P(. > pi^mu) / beta) with
    pi^mu != pi, so a constant eta leaves an O(eta) bias from pi*_beta.

    Args:
      P: [..., n, n] preference matrix.
      ref: [..., n] reference distribution.
      beta: regularization (> 0).
      eta: step size, 0 < eta beta <= 1 (the paper's condition).
      num_iters: number of iterations T (a Python int).
      pi0: [..., n] start; ref when None.

    Returns:
      [T + 1, ..., n] the iterates pi_0, ..., pi_T.
    """
    _check_game(P, ref, beta)
    _check_eta(eta)
    if isinstance(eta, int | float) and isinstance(beta, int | float) and eta * beta > 1:
        raise ValueError(f"Nash-MD needs eta * beta <= 1; got eta={eta}, beta={beta}")
    log_ref = jnp.log(ref)

    def log_step(log_pi):
        log_mu = jax.nn.log_softmax((1.0 - eta * beta) * log_pi + eta * beta * log_ref, axis=-1)
        return jax.nn.log_softmax(log_mu + eta * preference_against(P, jnp.exp(log_mu)), axis=-1)

    log_pi0 = log_ref if pi0 is None else jnp.log(pi0)
    return _trajectory(log_step, log_pi0, num_iters)


def _fixed_point_residual(P, log_ref, beta, z):
    """F(z) = z - log ref - P(. > softmax(z)) / beta; its unique zero z* has softmax(z*) = pi*."""
    return z - log_ref - preference_against(P, jax.nn.softmax(z, axis=-1)) / beta


def nash_fixed_point(P, ref, beta, num_iters: int = 60):
    """Solves pi*_beta = normalize(ref exp(P(. > pi*) / beta)) by damped Newton on logits.

    The unknown is z with pi = softmax(z), and the equation is F(z) = 0 with
    F(z) = z - log ref - P(. > pi) / beta. Writing P = 11^T/2 + A/2 (A
    antisymmetric), the Jacobian is I - A (diag(pi) - pi pi^T) / (2 beta),
    which is nonsingular for every z (if Jv = 0 then v^T M v = 0 for the PSD
    M = diag(pi) - pi pi^T, so Mv = 0 and v = 0). The zero is unique and
    ||F|| grows without bound, so Newton's direction always descends ||F||^2;
    each iteration takes the best step of a halving ladder (1, 1/2, ..., 2^-30)
    and keeps z if none lowers ||F||. Convergence is quadratic near pi*.

    Small beta makes softmax(z) very nonlinear, so the solve follows a
    continuation in beta: iteration t solves at beta_t = max(beta, 2^(-t/2)),
    starting from ref, with the predictor z - log ref scaled by
    beta_{t-1} / beta_t (exact if P(. > pi) did not move). The default 60
    iterations reach rounding level in float64 for beta >= 1e-3 on random
    games of 10 and 50 actions (smaller beta can push probabilities of
    order exp(-1/(2 beta)) below the float64 range).

    Convergence check: `exploitability(P, ref, beta, pi)` (>= 0, 0 only at
    pi*) should be at rounding level, ~1e-15 in float64.

    Args:
      P: [..., n, n] preference matrix with P + P^T = 1.
      ref: [..., n] reference distribution with full support.
      beta: regularization (> 0).
      num_iters: Newton iterations (a Python int).

    Returns:
      [..., n] pi*_beta.
    """
    _check_game(P, ref, beta)
    P, ref = jnp.asarray(P), jnp.asarray(ref)
    log_ref = jnp.log(ref)
    eye = jnp.eye(P.shape[-1], dtype=P.dtype)

    def stage_beta(t):
        return jnp.maximum(beta, 2.0 ** (-t / 2))

    def newton(z, t):
        beta_t = stage_beta(t)
        z = log_ref + (z - log_ref) * stage_beta(jnp.maximum(t - 1, 0)) / beta_t
        pi = jax.nn.softmax(z, axis=-1)
        F = _fixed_point_residual(P, log_ref, beta_t, z)
        cov = pi[..., :, None] * eye - pi[..., :, None] * pi[..., None, :]
        jac = eye - jnp.matmul(P, cov) / beta_t
        dz = -jnp.linalg.solve(jac, F[..., None])[..., 0]
        steps = jnp.asarray(_LINE_SEARCH_STEPS, z.dtype).reshape((-1,) + (1,) * z.ndim)
        z_try = z + steps * dz
        norms = jnp.sum(_fixed_point_residual(P, log_ref, beta_t, z_try) ** 2, axis=-1)
        best = jnp.argmin(norms, axis=0)
        z_best = jnp.take_along_axis(z_try, best[None, ..., None], axis=0)[0]
        better = jnp.min(norms, axis=0) < jnp.sum(F**2, axis=-1)
        return jnp.where(better[..., None], z_best, z), None

    z0 = jnp.broadcast_to(log_ref, jnp.broadcast_shapes(P.shape[:-1], ref.shape))
    z, _ = jax.lax.scan(newton, z0, jnp.arange(num_iters, dtype=z0.dtype))
    return jax.nn.softmax(z, axis=-1)


def random_preference_matrix(key, n: int, batch_shape: tuple[int, ...] = ()):
    """A random game: P_ij ~ U(0, 1) for i < j, P_ji = 1 - P_ij, P_ii = 1/2.

    Args:
      key: PRNG key.
      n: number of actions.
      batch_shape: leading axes of independent games.

    Returns:
      [*batch_shape, n, n] preference matrix (float64 when x64 is enabled).
    """
    u = jax.random.uniform(key, (*batch_shape, n, n), dtype=jnp.result_type(float))
    d = jnp.triu(u - 0.5, k=1)
    return 0.5 + d - jnp.swapaxes(d, -1, -2)


def rock_paper_scissors(dtype=None):
    """P = 1/2 + A/2 with A the rock-paper-scissors payoff (row beats column): [3, 3]."""
    return 0.5 + jnp.asarray(ROCK_PAPER_SCISSORS_A, dtype=dtype) / 2
