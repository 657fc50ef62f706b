"""Type aliases shared by the package: nothing else lives here."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]
Params = dict[str, Array]  # flat, keyed by PEFT state_dict names
