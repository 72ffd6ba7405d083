"""ODE solvers for flow-matching sampling: Euler, DPM-Solver++ (2M) and UniPC (bh2), plus the sampling loop.

A solver is created with a σ grid (see `schedule.sampling_sigmas`) and advanced with `step(v, x, i)`, which
takes the model's velocity v = ε - x0 at x = x_{σ_i} and returns x at σ_{i+1}. Multistep solvers keep the
previous data predictions x0 = x - σ·v themselves, so `step` must be called for i = 0, 1, 2, ... in order.

The multistep solvers work in the log-SNR variable λ(σ) = log((1 - σ)/σ) (α = 1 - σ is the signal scale) on
the data prediction x0, with h = λ_{i+1} - λ_i and φ = expm1(-h). Their first-order step

    x_{i+1} = (σ_{i+1}/σ_i)·x_i - α_{i+1}·φ·x0_i

equals an Euler step in σ (it simplifies to x_i + (σ_{i+1} - σ_i)·v_i); the higher-order terms add
multiples of differences of past x0 predictions. They follow the papers (DPM-Solver++: arXiv 2211.01095;
UniPC: arXiv 2302.04867) with the settings of the Wan reference: order 2, first order at the first step
(warm-up) and the last step (the last step to σ = 0 then returns x0 exactly), UniPC in its "bh2" variant
(B(h) = e^h - 1, i.e. expm1(-h) for data prediction) with the corrector on, DPM++ with the "midpoint" rule.

Step coefficients are Python floats (float64); tensor arithmetic is done in float32 (or float64 when x is
float64), because differences of x0 predictions lose too much in bfloat16, and the result is cast back to
x's dtype. σ = 1 (α = 0) and σ = 0 are handled: λ is then ∓inf and the coefficients take their limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from openwan.diffusion.schedule import timesteps_from_sigmas

SOLVER_NAMES = ("unipc", "dpm++", "euler", "lcm")


def _lambda(sigma: float) -> float:
    """Log-SNR λ = log(α/σ) of the flow-matching path, α = 1 - σ; -inf at σ = 1, +inf at σ = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


def _as_grid(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    grid = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError("sigmas must be a 1-D grid of at least 2 values; build it with sampling_sigmas().")
    if not bool(torch.all(grid[1:] < grid[:-1])):
        raise ValueError(
            "sigmas must be strictly decreasing (noise to data); build it with sampling_sigmas()."
        )
    if grid[0] > 1 or grid[-1] < 0:
        raise ValueError(
            "sigmas must lie in [0, 1] (1 = pure noise, 0 = data); build it with sampling_sigmas()."
        )
    return grid


class Solver:
    """Base class: holds the σ grid and checks that steps come in order. Subclasses implement `_step`."""

    name = "base"

    def __init__(self, sigmas: torch.Tensor | Sequence[float]) -> None:
        self.sigmas = _as_grid(sigmas)  # [N + 1] float64
        self._sig = self.sigmas.tolist()
        self._lam = [_lambda(s) for s in self._sig]
        self._next_index = 0

    @property
    def num_steps(self) -> int:
        return len(self._sig) - 1

    def step(self, model_output: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """Advance x from sigmas[i] to sigmas[i + 1], given the model's velocity v at (x, sigmas[i])."""
        if i != self._next_index:
            raise ValueError(
                f"{self.name} solver expected step index {self._next_index}, got {i}; call step with "
                "i = 0, 1, 2, ... in order, and create a new solver to sample again."
            )
        if i >= self.num_steps:
            raise ValueError(
                f"the σ grid has {self.num_steps} steps, so i must be < {self.num_steps}; got {i}."
            )
        dtype = torch.promote_types(x.dtype, torch.float32)
        x_next = self._step(model_output.to(dtype), x.to(dtype), i)
        self._next_index += 1
        return x_next.to(x.dtype)

    def _step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        raise NotImplementedError

    def _first_order(self, x: torch.Tensor, d: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """x_t = (σ_t/σ_s)·x - α_t·expm1(-h)·d with h = λ_t - λ_s: the exponential-integrator step."""
        sigma_s, sigma_t = self._sig[s], self._sig[t]
        phi = math.expm1(-(self._lam[t] - self._lam[s]))
        return (sigma_t / sigma_s) * x - ((1.0 - sigma_t) * phi) * d

    def _x0_slope(self, x0_s: torch.Tensor, x0_r: torch.Tensor, s: int, r: int, t: int) -> torch.Tensor:
        """Finite difference of x0 between grid points r and s, scaled to the step s -> t (h units).

        (x0_r - x0_s) / ((λ_r - λ_s)/h); an infinite λ_r (σ_r = 1) gives 0: that point carries no slope.
        """
        ratio = (self._lam[r] - self._lam[s]) / (self._lam[t] - self._lam[s])
        return (x0_r - x0_s) / ratio


class Euler(Solver):
    """x_{i+1} = x_i + (σ_{i+1} - σ_i)·v_i. Exact when v does not change along the path."""

    name = "euler"

    def _step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return x + (self._sig[i + 1] - self._sig[i]) * v


class DPMSolverPP2M(Solver):
    """DPM-Solver++ 2M (multistep, second order, data prediction, midpoint rule).

    x_{i+1} = first-order step with d = x0_i + ½·D, D = slope of x0 from the previous point. First order at
    the first step (no history yet) and at the last step.
    """

    name = "dpm++"

    def __init__(self, sigmas: torch.Tensor | Sequence[float]) -> None:
        super().__init__(sigmas)
        self._x0_prev: torch.Tensor | None = None

    def _step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        x0 = x - self._sig[i] * v
        if i == 0 or i == self.num_steps - 1:
            d = x0
        else:
            d = x0 + 0.5 * self._x0_slope(x0, self._x0_prev, i, i - 1, i + 1)
        self._x0_prev = x0
        return self._first_order(x, d, i, i + 1)


class UniPC(Solver):
    """UniPC, order 2, "bh2" (B(h) = e^h - 1), data prediction, corrector on.

    Each step first *corrects* the sample it is given (the previous predictor's output) using the new model
    evaluation — UniC, which costs no extra model call — then *predicts* the next one (UniP). Orders: the
    predictor uses min(2, i + 1, N - i) (warm-up, first order at the last step); the corrector uses the order
    of the predictor whose output it corrects. The x0 of a step is taken at the uncorrected sample, where the
    model was evaluated. The order-2 predictor equals the DPM++ 2M midpoint update.
    """

    name = "unipc"

    def __init__(self, sigmas: torch.Tensor | Sequence[float]) -> None:
        super().__init__(sigmas)
        self._x0s: list[torch.Tensor] = []  # data predictions of the last two steps, oldest first
        self._x_last: torch.Tensor | None = None  # the (corrected) sample the last predictor started from
        self._order_last = 0

    def _step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        x0 = x - self._sig[i] * v
        if i > 0:
            x = self._correct(x0, i)
        self._x0s = (self._x0s + [x0])[-2:]
        order = min(2, i + 1, self.num_steps - i)
        self._x_last, self._order_last = x, order
        return self._predict(x, i, order)

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP from σ_i to σ_{i+1}; the order-2 weight of the slope is ½."""
        x0 = self._x0s[-1]
        d = x0 if order == 1 else x0 + 0.5 * self._x0_slope(x0, self._x0s[-2], i, i - 1, i + 1)
        return self._first_order(x, d, i, i + 1)

    def _correct(self, x0_new: torch.Tensor, i: int) -> torch.Tensor:
        """UniC: redo the step σ_{i-1} -> σ_i from the same start, now also using x0 at σ_i."""
        s = i - 1
        x0_s = self._x0s[-1]
        if self._order_last == 1:
            d = x0_s + 0.5 * (x0_new - x0_s)
        else:
            h = self._lam[i] - self._lam[s]
            rho_prev, rho_new = _unic_weights(h, (self._lam[s - 1] - self._lam[s]) / h)
            slope_prev = self._x0_slope(x0_s, self._x0s[-2], s, s - 1, i)
            d = x0_s + rho_prev * slope_prev + rho_new * (x0_new - x0_s)
        return self._first_order(self._x_last, d, s, i)


def _unic_weights(h: float, r: float) -> tuple[float, float]:
    """Order-2 UniC weights (ρ_prev, ρ_new) for "bh2" in data prediction, where B(h) = expm1(-h).

    They solve [[1, 1], [r, 1]]·ρ = [g1, g2] with g_k = k!·z·φ_{k+1}(z) / B(h) at z = -h, where
    φ_2(z) = (e^z - 1 - z)/z² and φ_3(z) = (e^z - 1 - z - z²/2)/z³; r = (λ_{s-1} - λ_s)/h < 0 locates the
    older point. (The order-1 corrector uses the fixed weight ½ instead, as the reference does.)
    """
    z = -h
    b = math.expm1(z)
    g1 = (b / z - 1.0) / b  # z·φ_2(z) / B
    g2 = 2.0 * ((b / z - 1.0) / z - 0.5) / b  # 2·z·φ_3(z) / B
    rho_prev = (g1 - g2) / (1.0 - r)
    return rho_prev, g1 - rho_prev


class Consistency(Solver):
    """Multistep consistency sampling (LCM) for a distilled student on its own grid (``consistency.student_sigmas``).

    x0 = x_i − σ_i·v, then x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε', where ε' is the noise the step implies,
    ε̂ = x_i + (1 − σ_i)·v, mixed with fresh noise z by ``gamma``: ε' = √(1 − γ)·ε̂ + √γ·z. γ = 0 is deterministic
    and algebraically an Euler step (what a phased-consistency student is trained for); γ = 1 re-noises with fresh
    noise at every step, as LCM's sampler does. z is drawn on the CPU from ``generator``.
    """

    name = "lcm"

    def __init__(self, sigmas: torch.Tensor | Sequence[float], gamma: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(sigmas)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma is the fraction of fresh noise per step, from 0 to 1; got {gamma!r}.")
        self.gamma, self.generator = gamma, generator

    def _step(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        x0 = x - sigma * v
        eps = x + (1.0 - sigma) * v
        if self.gamma > 0 and sigma_next > 0:
            z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
            eps = math.sqrt(1.0 - self.gamma) * eps + math.sqrt(self.gamma) * z
        return (1.0 - sigma_next) * x0 + sigma_next * eps


def make_solver(name: str, sigmas: torch.Tensor | Sequence[float]) -> Solver:
    """A fresh solver of the given kind ("unipc", "dpm++", "euler" or "lcm") for the σ grid `sigmas`."""
    solvers = {"unipc": UniPC, "dpm++": DPMSolverPP2M, "euler": Euler, "lcm": Consistency}
    if name not in solvers:
        raise ValueError(f"Unknown solver {name!r}; use one of {', '.join(SOLVER_NAMES)}.")
    return solvers[name](sigmas)


def sample(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    solver: Solver | str = "unipc",
) -> torch.Tensor:
    """Integrate from noise x at sigmas[0] down to sigmas[-1] (0 for a full run) and return the result.

    `model_fn(x, t)` returns the velocity v = ε - x0 at x for the timestep t = σ·1000 (a 0-dim int64 tensor,
    as the reference gives its model); guidance and expert switching live inside model_fn.
    """
    if isinstance(solver, str):
        solver = make_solver(solver, sigmas)
    elif not torch.equal(solver.sigmas, _as_grid(sigmas)):
        raise ValueError("the solver was built for a different σ grid; pass the same sigmas to both.")
    timesteps = timesteps_from_sigmas(torch.as_tensor(sigmas, dtype=torch.float64))
    for i in range(solver.num_steps):
        v = model_fn(x, timesteps[i])
        x = solver.step(v, x, i)
    return x
