"""The demo: train a model, delete part of its training data with a certificate, compare, verify.

Everything the demo needs lives here and nowhere else in the library: the datasets
(:mod:`certun.demo.data`), the small models and the one plain-SGD training loop
(:mod:`certun.demo.models`), the configuration (:mod:`certun.demo.config`), the run itself
(:mod:`certun.demo.run`; the exact routes: :mod:`certun.demo.routes`),
what the report says (:mod:`certun.demo.findings`) and its ``report.md`` /
``report.png`` (:mod:`certun.demo.run_report`). ``certun demo`` is the command line; the benchmarks
reuse these modules. Importing this package does not import torch. See docs/tutorial.md.
"""

from certun.demo.config import CENTERS, CLIPS, ROUTES, VARIANTS, DemoConfig, default_hyperparameters, plan_schedule
from certun.demo.run import OUTPUTS, DemoResult, prepare_out_dir, run_demo

__all__ = [
    "CENTERS",
    "CLIPS",
    "OUTPUTS",
    "ROUTES",
    "VARIANTS",
    "DemoConfig",
    "DemoResult",
    "default_hyperparameters",
    "plan_schedule",
    "prepare_out_dir",
    "run_demo",
]
