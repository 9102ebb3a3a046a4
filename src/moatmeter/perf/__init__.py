"""Performance model: memory, step time, serving and goodput, calibrated efficiencies.

``evaluate_grid`` (vectorised, for the planner) and ``predict_deployment`` (one deployment, for
`predict` and `bench compare`) are the entry points; see perf/types.py for the grid contract.

Global hyper-parameters chosen by leave-one-source-out CV (benchmarks/calibration_cv.py), each
documented where it is defined: ``step.OVERHEAD_LAYER_SHARE`` (1.0), ``step.ATTN_EFF`` (0.65),
``calibrate.SOURCE_POWER`` (0.4), ``deploy.ACT_RW_*`` (8 / 3 / 2), ``deploy.LINK_EFF_PCIE`` (0.45),
``calibrate.NEW_TO_PAIR_DROPS`` (the pair's offsets, for a class or format new to it) with
``calibrate.NEW_FORMAT_KEEPS`` (its per-step overhead kept when only the format is new),
``calibrate.SIGMA_SCALE`` (1.1), ``calibrate.NEW_CLASS_WIDEN`` (1.5) and
``calibrate.LATENCY_SPREAD`` (TPOT 1.0, TTFT 3.2), ``calibrate.DECODE_SPREAD`` (1.1) and
``calibrate.PREFILL_WIDEN`` (0.5), for P10-P90 coverage.
"""

from moatmeter.perf.api import Prediction, evaluate_grid, predict_deployment, single_stream_bound
from moatmeter.perf.calibrate import Calibration, default_calibration
from moatmeter.perf.types import SLO, DeploymentGrid, GridResult, Workload

__all__ = ["SLO", "Calibration", "DeploymentGrid", "GridResult", "Prediction", "Workload",
           "default_calibration", "evaluate_grid", "predict_deployment", "single_stream_bound"]
