"""Performance model: memory, step time, serving and goodput, calibrated efficiencies.

``evaluate_grid`` (vectorised, for the planner) and ``predict_deployment`` (one deployment, for
`predict` and `bench compare`) are the entry points; see perf/types.py for the grid contract.
"""

from moatmeter.perf.api import Prediction, evaluate_grid, predict_deployment, single_stream_bound
from moatmeter.perf.calibrate import Calibration, default_calibration
from moatmeter.perf.types import SLO, DeploymentGrid, GridResult, Workload

__all__ = ["SLO", "Calibration", "DeploymentGrid", "GridResult", "Prediction", "Workload",
           "default_calibration", "evaluate_grid", "predict_deployment", "single_stream_bound"]
