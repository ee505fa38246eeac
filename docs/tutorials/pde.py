"""Tutorial: learn the advection term of viscous Burgers with a hybrid neural PDE.

u_t = nu u_xx - u u_x on a periodic grid. The diffusion nu u_xx is known; the advection
-u u_x is learned by a pointwise MLP of (u, u_x). Data come from a reference solve on a grid
four times finer with FFT derivatives. Run ``python docs/tutorials/pde.py`` (about a minute
on one CPU thread); ``--iterations``, ``--grid`` and ``--train-ics`` make it smaller.
"""

from __future__ import annotations

import argparse
import math

import torch

import neuralode as no
from neuralode import pde


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--train-ics", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nu, dt, steps = 0.1, 0.05, 20  # saved every dt up to the training horizon T = 1

    # 1. Grids: the model's and a finer one for the reference ("truth").
    grid = pde.Grid((args.grid,), lengths=(2 * math.pi,))
    fine = pde.Grid((4 * args.grid,), lengths=(2 * math.pi,))
    truth = pde.Burgers(fine, nu, spectral=True)

    # 2. Data: random smooth initial conditions, solved to rtol 1e-8, sampled on `grid`.
    def trajectories(batch: int, seed: int, n_steps: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        _, on = pde.random_fourier_field(grid, batch, modes=3, generator=generator)
        ts = torch.arange(n_steps + 1, dtype=torch.float64) * dt
        return pde.reference_solve(truth, on(fine), ts)[..., ::4]  # (time, batch, 1, grid)

    train = trajectories(args.train_ics, 1, steps)
    test = trajectories(4, 2, 2 * steps)  # held out, to twice the training horizon

    # 3. The hybrid model: known diffusion + a pointwise MLP of (u, u_x).
    model = pde.NeuralPDE(
        pde.Diffusion(grid, nu, order=4),
        pde.PointwiseMLP(grid, 1, hidden=24, features=("u", "gradient"), order=4),
    ).double()

    # 4. Training on short windows: from every saved state, 4 saved steps ahead by RK4.
    window = 4
    starts = torch.cat([train[k] for k in range(steps - window + 1)])
    targets = torch.cat([train[k + 1 : k + 1 + window] for k in range(steps - window + 1)], 1)
    ts_window = torch.arange(window + 1, dtype=torch.float64) * dt
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iterations)
    for it in range(args.iterations):
        optimiser.zero_grad()
        sol = no.solve(
            model, starts, ts_window, solver=no.RK4(), controller=no.FixedGrid(step_size=dt / 2)
        )
        loss = torch.mean((sol.ys[1:] - targets) ** 2)
        loss.backward()
        optimiser.step()
        schedule.step()
        if it % max(1, args.iterations // 5) == 0:
            print(f"iteration {it}: loss {loss.item():.3e}")

    # 5. Forecast the held-out initial conditions from u(0) alone, to T and 2T.
    ts = torch.arange(2 * steps + 1, dtype=torch.float64) * dt
    with torch.no_grad():
        forecast = no.solve(model, test[0], ts, controller=no.PIController(rtol=1e-6, atol=1e-8))
    for k, name in ((steps, "T"), (2 * steps, "2T")):
        error = (forecast.ys[k] - test[k]).norm() / test[k].norm()
        print(f"relative L2 forecast error at {name}: {error.item():.4f}")

    # 6. What did the MLP learn? Compare it with -u u_x at the held-out states.
    u = test[-1]
    with torch.no_grad():
        learned = model.learned(None, u)
    advection = -u * pde.derivative(u, grid, 0, 1, order=4)
    mismatch = (learned - advection).norm() / advection.norm()
    print(f"learned term vs -u u_x: relative L2 {mismatch.item():.4f}")


if __name__ == "__main__":
    main()
