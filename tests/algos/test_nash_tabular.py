"""Tests for rl_lm.algos.nash_tabular: the fixture and convergence facts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.algos import nash_tabular as nt

BETAS = (0.01, 0.05, 0.1, 0.5, 1.0)
REF = (0.6, 0.3, 0.1)
# pi*_beta for rock-paper-scissors with ref = REF.
PI_STAR_TABLE = {
    0.01: (0.3410, 0.3215, 0.3376),
    0.05: (0.3774, 0.2765, 0.3461),
    0.1: (0.4321, 0.2303, 0.3376),
    0.5: (0.6435, 0.1932, 0.1633),
    1.0: (0.6416, 0.2344, 0.1240),
}
# KL(pi* || pi_k) of Nash-MP with beta = 0.1, eta = 0.2, pi_0 = ref.
KL_TRAJECTORY = {0: 0.20803, 1: 0.12563, 5: 1.3522e-2, 10: 5.9400e-4, 20: 1.1264e-6}

# Callers jit (the library does not); beta and eta stay traced so each shape compiles once.
fixed_point = jax.jit(nt.nash_fixed_point)
nash_mp = jax.jit(nt.nash_mp, static_argnums=4)
nash_md = jax.jit(nt.nash_md, static_argnums=4)


@pytest.fixture(autouse=True)
def _float64():
    # Tiny KLs (1e-6 and below) and a 1e-9 exploitability are only meaningful in float64.
    with jax.enable_x64(True):
        yield


def _rps_game():
    return nt.rock_paper_scissors(jnp.float64), jnp.asarray(REF, jnp.float64)


def _dirichlet(seed, shape):
    """Uniform random distributions over the last axis (numpy: nothing to compile)."""
    return jnp.asarray(np.random.default_rng(seed).dirichlet(np.ones(shape[-1]), shape[:-1]))


def _random_games(seed, num_games=20, n=10):
    """num_games random n-action games with random full-support references."""
    P = nt.random_preference_matrix(jax.random.key(seed), n, (num_games,))
    return P, _dirichlet(seed, (num_games, n))


def test_rock_paper_scissors_and_hand_values():
    P, ref = _rps_game()
    np.testing.assert_allclose(P, [[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]])
    # P(. > ref) = 1/2 + A ref / 2 with A ref = [0.3 - 0.1, 0.1 - 0.6, 0.6 - 0.3].
    np.testing.assert_allclose(nt.preference_against(P, ref), [0.6, 0.25, 0.65])
    np.testing.assert_allclose(nt.game_value(P, ref, ref), 0.5)
    np.testing.assert_allclose(nt.unregularized_exploitability(P, ref), 0.15)
    np.testing.assert_allclose(nt.unregularized_exploitability(P, jnp.ones(3) / 3), 0.0, atol=1e-15)


def test_kl_hand_values():
    np.testing.assert_allclose(
        nt.kl(jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75])),
        0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0),
    )
    # 0 log 0 = 0: the zero entry of p contributes nothing.
    np.testing.assert_allclose(nt.kl(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5])), np.log(2.0))


def test_random_preference_matrix_is_a_game():
    P = nt.random_preference_matrix(jax.random.key(3), 7, (4,))
    assert P.shape == (4, 7, 7)
    np.testing.assert_allclose(P + jnp.swapaxes(P, -1, -2), 1.0, atol=1e-15)
    np.testing.assert_allclose(jnp.diagonal(P, axis1=-2, axis2=-1), 0.5)
    assert bool(jnp.all((P >= 0) & (P <= 1)))
    assert not np.allclose(P[0], P[1])


@pytest.mark.parametrize("beta", BETAS)
def test_fixed_point_matches_design_table(beta):
    P, ref = _rps_game()
    pi_star = fixed_point(P, ref, beta)
    np.testing.assert_array_equal(np.round(np.asarray(pi_star), 4), PI_STAR_TABLE[beta])


@pytest.mark.parametrize("beta", BETAS)
def test_fixed_point_solves_its_equation_with_zero_exploitability(beta):
    P, ref = _random_games(seed=0)
    pi_star = fixed_point(P, ref, beta)
    np.testing.assert_allclose(pi_star, nt.best_response(P, ref, beta, pi_star), rtol=1e-10)
    assert float(jnp.max(jnp.abs(nt.exploitability(P, ref, beta, pi_star)))) < 1e-12
    # Each game of the batch is solved as if alone.
    np.testing.assert_allclose(fixed_point(P[3], ref[3], beta), pi_star[3], rtol=1e-10)


@jax.jit
def _duality_gap_by_definition(P, ref, beta, pi):
    """max_pi' J(pi', pi) - min_pi' J(pi, pi'); both optima are the closed-form best response."""
    br = nt.best_response(P, ref, beta, pi)
    return nt.j_beta(P, ref, beta, br, pi) - nt.j_beta(P, ref, beta, pi, br)


def test_exploitability_is_the_regularized_duality_gap_and_positive_off_equilibrium():
    P, ref = _random_games(seed=1)
    beta = 0.1
    others = _dirichlet(2, (3, 20, 10))
    pis = jnp.concatenate([ref[None], jnp.full_like(ref, 0.1)[None], others])  # [5, games, 10]
    gap = _duality_gap_by_definition(P, ref, beta, pis)
    np.testing.assert_allclose(jax.jit(nt.exploitability)(P, ref, beta, pis), gap, rtol=1e-10)
    assert bool(jnp.all(gap > 1e-6))
    # No challenger does better against pi than the closed-form best response.
    j_beta = jax.jit(nt.j_beta)
    br = nt.best_response(P, ref, beta, pis)
    assert bool(jnp.all(j_beta(P, ref, beta, others[:, None], pis) < j_beta(P, ref, beta, br, pis)))


@jax.jit
def _prox_objective(P, ref, pi_k, opponent, beta, eta, pi):
    """(1/beta) P(opponent > pi) + KL(pi || ref) + (1/eta) KL(pi || pi_k)."""
    return (1 - nt.game_value(P, pi, opponent)) / beta + nt.kl(pi, ref) + nt.kl(pi, pi_k) / eta


def test_proximal_step_is_the_argmin_of_its_objective():
    P, ref = _random_games(seed=4, num_games=1, n=5)
    P, ref = P[0], ref[0]
    pi_k, opponent = _dirichlet(5, (2, 5))
    game = (P, ref, pi_k, opponent, 0.1, 0.3)
    pi = nt.mp_proximal_step(*game)
    # Stationarity on the simplex: the gradient is the same for every action.
    grad = jax.grad(_prox_objective, argnums=6)(*game, pi)
    np.testing.assert_allclose(grad - grad.mean(), 0.0, atol=1e-10)
    candidates = _dirichlet(6, (200, 5))
    nearby = jax.nn.softmax(jnp.log(pi) + 0.05 * np.random.default_rng(7).normal(size=(200, 5)))
    for others in (candidates, nearby):
        assert bool(jnp.all(_prox_objective(*game, others) > _prox_objective(*game, pi)))


def test_nash_mp_step_is_half_step_then_full_step():
    P, ref = _rps_game()
    pi_k = jnp.array([0.2, 0.5, 0.3])
    half = nt.mp_proximal_step(P, ref, pi_k, pi_k, 0.1, 0.2)
    full = nt.mp_proximal_step(P, ref, pi_k, half, 0.1, 0.2)
    np.testing.assert_allclose(nt.nash_mp_step(P, ref, pi_k, 0.1, 0.2), full, rtol=1e-14)
    trajectory = nash_mp(P, ref, 0.1, 0.2, 3, pi0=pi_k)
    assert trajectory.shape == (4, 3)
    np.testing.assert_allclose(trajectory[0], pi_k)
    np.testing.assert_allclose(trajectory[1], full, rtol=1e-14)


def test_nash_mp_kl_trajectory_matches_design_fixture():
    P, ref = _rps_game()
    pi_star = fixed_point(P, ref, 0.1)
    kls = nt.kl(pi_star, nash_mp(P, ref, 0.1, 0.2, 20))
    for k, expected in KL_TRAJECTORY.items():
        np.testing.assert_allclose(kls[k], expected, rtol=1e-4, err_msg=f"k={k}")


@pytest.mark.parametrize("beta", BETAS)
def test_nash_mp_linear_rate_bound(beta):
    """KL(pi* || pi_k) <= (1+2 beta)^-k KL(pi* || ref) with eta = 2 beta, pi_0 = ref."""
    num_iters = 50
    rate_k = (1 + 2 * beta) ** -np.arange(num_iters + 1.0)
    P_rps, ref_rps = _rps_game()
    P_rand, ref_rand = _random_games(seed=0)
    for P, ref in ((P_rps, ref_rps), (P_rand, ref_rand)):
        pi_star = fixed_point(P, ref, beta)
        kls = np.asarray(nt.kl(pi_star, nash_mp(P, ref, beta, 2 * beta, num_iters)))
        bound = rate_k.reshape((-1,) + (1,) * (kls.ndim - 1)) * kls[0]
        # The atol covers KLs that reach rounding level (~1e-16) before k = 50.
        assert np.all(kls <= bound * (1 + 1e-9) + 1e-14), np.max(kls - bound)
        assert np.all(kls[0] > 1e-3)


def test_nash_mp_converges_to_pi_star_but_nash_md_keeps_an_order_eta_bias():
    P, ref = _rps_game()
    beta = 0.1
    pi_star = fixed_point(P, ref, beta)
    assert float(nt.kl(pi_star, nash_mp(P, ref, beta, 2 * beta, 400)[-1])) < 1e-10
    kls, dists = [], []
    for eta in (0.4, 0.2, 0.1):
        trajectory = nash_md(P, ref, beta, eta, 3000)
        limit = trajectory[-1]
        np.testing.assert_allclose(trajectory[-2], limit, atol=1e-12)  # converged
        # The limit is the fixed point pi = normalize(ref exp(P(. > pi^mu) / beta)), not pi*.
        mu = jax.nn.softmax((1 - eta * beta) * jnp.log(limit) + eta * beta * jnp.log(ref))
        np.testing.assert_allclose(
            limit, jax.nn.softmax(jnp.log(ref) + nt.preference_against(P, mu) / beta), rtol=1e-9
        )
        kls.append(float(nt.kl(pi_star, limit)))
        dists.append(float(jnp.sum(jnp.abs(pi_star - limit))))
    assert min(kls) > 1e-6
    # Halving eta halves the distance to pi*; KL, being quadratic in it, drops by 4.
    for i in range(2):
        assert 1.8 < dists[i] / dists[i + 1] < 2.2, dists
        assert 3.6 < kls[i] / kls[i + 1] < 4.8, kls


def test_nash_mp_with_large_eta_fails_to_converge():
    """beta = 0.05, eta = 10 on the 10-action game of seed 0 with a uniform ref."""
    beta = 0.05
    P = nt.random_preference_matrix(jax.random.key(0), 10)
    ref = jnp.full(10, 0.1)
    pi_star = fixed_point(P, ref, beta)
    kls = nt.kl(pi_star, nash_mp(P, ref, beta, 10.0, 1000))
    # Over the last 100 iterations it never comes back even as close as ref was.
    assert float(jnp.min(kls[-100:])) > float(kls[0]) > 0.1
    assert float(nt.kl(pi_star, nash_mp(P, ref, beta, 2 * beta, 300)[-1])) < 1e-10


@pytest.mark.parametrize("beta", BETAS)
def test_uniform_reference_stays_uniform_on_a_symmetric_game(beta):
    P = nt.rock_paper_scissors(jnp.float64)
    uniform = jnp.full(3, 1 / 3)
    np.testing.assert_allclose(fixed_point(P, uniform, beta), uniform, rtol=1e-12)
    for eta in (2 * beta, 10.0):
        np.testing.assert_allclose(nash_mp(P, uniform, beta, eta, 20), 1 / 3, rtol=1e-12)
    np.testing.assert_allclose(nash_md(P, uniform, beta, 1.0, 20), 1 / 3, rtol=1e-12)


def test_float32_fixed_point_is_accurate_to_float32():
    with jax.enable_x64(False):
        P, ref = nt.rock_paper_scissors(), jnp.asarray(REF)
        pi_star = fixed_point(P, ref, 0.1)
        assert pi_star.dtype == jnp.float32
    np.testing.assert_allclose(pi_star, PI_STAR_TABLE[0.1], atol=1e-4)


def test_bad_input_fails_early_with_a_message():
    P, ref = _rps_game()
    with pytest.raises(ValueError, match=r"\[\.\.\., n, n\]"):
        nt.nash_fixed_point(P[:2], ref, 0.1)
    with pytest.raises(ValueError, match="ref must have shape"):
        nt.nash_mp(P, ref[:2], 0.1, 0.2, 3)
    with pytest.raises(ValueError, match="beta must be > 0"):
        nt.exploitability(P, ref, 0.0, ref)
    with pytest.raises(ValueError, match="eta must be > 0"):
        nt.nash_mp_step(P, ref, ref, 0.1, -1.0)
    with pytest.raises(ValueError, match="eta \\* beta <= 1"):
        nt.nash_md(P, ref, 0.5, 4.0, 3)
