"""The line naming the machine that every benchmark prints under its table."""

import datetime
import os
import platform

import numpy as np
import sklearn
import torch


def machine_line():
    """The cores, the libraries' versions, the OpenBLAS variables that slow numpy's
    matmuls on this project's machines (``benchmarks/README.rst``) and the date."""
    env = ", ".join(
        f"{var}={os.environ.get(var, 'unset')}" for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    )
    return (
        f"machine: {platform.machine()} os.cpu_count()={os.cpu_count()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, {env}, "
        f"date {datetime.date.today().isoformat()}"
    )
