"""Integer checks that refuse booleans.

``True`` is an :class:`~numbers.Integral` to Python, and scikit-learn's ``Interval`` of
integers accepts it, but a user who passes it as a count or a latent never means 1.
"""

from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import Interval


def is_int(value):
    """Whether ``value`` is an integer and not a boolean.

    Examples
    --------
    >>> from sksae._validation import is_int
    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)


#: The largest int a torch tensor holds (int64): sizes and step counts beyond it
#: overflow inside torch.
TORCH_INT_MAX = 2**63 - 1


class Integers(Interval):
    """The integers from ``left`` on (up to ``right``), as a parameter constraint.

    Examples
    --------
    >>> from sksae._validation import Integers
    >>> Integers(1).is_satisfied_by(2), Integers(1).is_satisfied_by(True)
    (True, False)
    >>> str(Integers(1)), str(Integers(0, 10))
    ('an int in the range [1, inf)', 'an int in the range [0, 10]')
    """

    def __init__(self, left, right=None):
        super().__init__(Integral, left, right, closed="both" if right is not None else "left")

    def is_satisfied_by(self, val):
        return is_int(val) and super().is_satisfied_by(val)
