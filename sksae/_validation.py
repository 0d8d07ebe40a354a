"""Number checks that refuse booleans.

``True`` is an :class:`~numbers.Integral` (and a :class:`~numbers.Real`) to Python, and
scikit-learn's ``Interval`` accepts it, but a user who passes it as a count, a latent or
a coefficient never means 1.
"""

from numbers import Integral, Real

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


def is_real(value):
    """Whether ``value`` is a real number and not a boolean (numpy's are not
    :class:`~numbers.Real`).

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._validation import is_real
    >>> is_real(0.5), is_real(np.float32(2)), is_real(3), is_real(True)
    (True, True, True, False)
    """
    return isinstance(value, Real) and not isinstance(value, bool)


#: The largest int a torch tensor holds (int64): sizes and step counts beyond it
#: overflow inside torch.
TORCH_INT_MAX = 2**63 - 1


class Integers(Interval):
    """The integers from ``left`` on (up to ``right``), as a parameter constraint.

    Python's, and numpy's of 64 bits: under NumPy 2 arithmetic with a narrower numpy
    integer stays in its width, and the counts of steps and rows made from it overflow
    (``max_iter=np.int16(600)`` planned a negative number of steps).

    Examples
    --------
    >>> import numpy as np
    >>> from sksae._validation import Integers
    >>> Integers(1).is_satisfied_by(2), Integers(1).is_satisfied_by(True)
    (True, False)
    >>> Integers(1).is_satisfied_by(np.int64(600)), Integers(1).is_satisfied_by(np.int16(600))
    (True, False)
    >>> str(Integers(0, 10))
    "an int in the range [0, 10] (Python's, or numpy's of 64 bits)"
    """

    def __init__(self, left, right=None):
        super().__init__(Integral, left, right, closed="both" if right is not None else "left")

    def is_satisfied_by(self, val):
        narrow = isinstance(val, np.integer) and val.dtype.itemsize < 8
        return is_int(val) and not narrow and super().is_satisfied_by(val)

    def __str__(self):
        # np.int16(600) is an int in the range [1, inf): the message says why it is not.
        return f"{super().__str__()} (Python's, or numpy's of 64 bits)"


class Reals(Interval):
    """The real numbers between ``left`` and ``right`` (``None``: unbounded), as a
    parameter constraint; ``closed`` as in scikit-learn's ``Interval``.

    Examples
    --------
    >>> from sksae._validation import Reals
    >>> Reals(0, None, closed="left").is_satisfied_by(0.5), Reals(0, 1).is_satisfied_by(True)
    (True, False)
    >>> str(Reals(0, None, closed="neither"))
    'a float in the range (0.0, inf)'
    """

    def __init__(self, left, right, *, closed="both"):
        super().__init__(Real, left, right, closed=closed)

    def is_satisfied_by(self, val):
        return is_real(val) and super().is_satisfied_by(val)
