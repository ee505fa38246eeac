"""The plots of ``neuralode.viz``: they take tensors as they come (recording gradients, any
device), make their directory, refuse an empty panel list, and leave the caller's matplotlib
as it was: its backend, and no figure open in pyplot, also when a save fails."""

from __future__ import annotations

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from neuralode.viz import save_phase_portraits, save_work_precision  # noqa: E402
from neuralode.viz.flows import save_density_grid, save_flow_panels  # noqa: E402

PNG = b"\x89PNG"


@pytest.fixture
def svg_backend():
    """The caller's own backend (not the Agg the plots write with), restored afterwards."""
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    yield plt
    plt.switch_backend(before)


def _draw_every_plot(folder) -> list:
    x = torch.linspace(0.0, 1.0, 5, requires_grad=True)
    y = x.square()  # records gradients
    phase = {"title": "p", "exact": (x, y), "methods": {"rk4": (x, 2 * y)}}
    rows = [{"method": "rk4", "nfe": torch.tensor(8), "error": y[1]}]
    points = torch.randn(10, 2, requires_grad=True)
    flow = [{"title": "f", "points": points, "paths": torch.stack([points, 2 * points])}]
    density = [[{"density": torch.rand(4, 4, requires_grad=True), "extent": (0, 1, 0, 1)}]]
    return [
        save_phase_portraits(folder / "a" / "phase.png", [phase]),
        save_work_precision(folder / "b" / "work.png", rows, "title"),
        save_flow_panels(folder / "c" / "flow.png", flow),
        save_density_grid(folder / "d" / "density.png", density),
    ]


def test_plots_take_tensors_that_record_gradients_and_make_their_directory(tmp_path) -> None:
    for path in _draw_every_plot(tmp_path):
        assert path.read_bytes()[:4] == PNG


def test_plots_keep_the_callers_backend_and_leave_no_figure_open(svg_backend, tmp_path) -> None:
    plt = svg_backend
    open_before = plt.get_fignums()
    _draw_every_plot(tmp_path)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the PNG's directory would be")
    for _ in range(3):  # a save that fails
        with pytest.raises(OSError):
            save_work_precision(blocked / "work.png", [{"method": "m", "nfe": 1, "error": 1}], "")
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == open_before


@pytest.mark.parametrize(
    "plot",
    [
        lambda path: save_phase_portraits(path, []),
        lambda path: save_flow_panels(path, []),
        lambda path: save_density_grid(path, [[]]),
    ],
    ids=["phase_portraits", "flow_panels", "density_grid"],
)
def test_an_empty_panel_list_is_refused(plot, tmp_path) -> None:
    with pytest.raises(ValueError, match="panels is empty"):
        plot(tmp_path / "x.png")
