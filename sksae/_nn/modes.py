"""Torch's thread-local modes, set for sksae's computations whatever its caller set.

A caller who collects a model's activations under ``torch.no_grad()``,
``torch.inference_mode()`` or ``torch.autocast()`` and fits or encodes in the same
block would otherwise hand those modes to sksae: training then fails (no gradients, or
tensors that autograd refuses to save), and the products run in the caller's low
precision, not in the model's (a :class:`~sksae._nn.training.Trainer` asks for its own
``autocast_dtype`` inside).
"""

from contextlib import ExitStack, contextmanager

import torch


@contextmanager
def own_modes(*, training):
    """Gradients on for ``training`` (inference mode otherwise), and autocast off.

    Examples
    --------
    >>> import torch
    >>> from sksae._nn.modes import own_modes
    >>> with torch.no_grad(), own_modes(training=True):
    ...     torch.is_grad_enabled()
    True
    >>> with torch.autocast("cpu"), own_modes(training=False):
    ...     torch.is_autocast_enabled("cpu"), torch.is_inference_mode_enabled()
    (False, True)
    """
    with ExitStack() as modes:
        # Tensors made in inference mode cannot be saved for backward: training needs
        # it off, which enable_grad alone does not turn.
        modes.enter_context(torch.inference_mode(not training))
        if training:
            modes.enter_context(torch.enable_grad())
        for device_type in ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]:
            modes.enter_context(torch.autocast(device_type, enabled=False))
        yield
