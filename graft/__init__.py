"""graft: transfer-learning advice and network surgery for Keras 3 image CNNs.

The library lives in two packages, `advisor` (facts, rules, plans) and `surgery` (layer graph, edits,
training). This package holds what both share: the version and the exception hierarchy.
"""

from graft.errors import (
    DatasetError,
    GraftError,
    InputError,
    InvalidCutError,
    LayerNotFoundError,
    ModelLoadError,
    PlanError,
    RulesError,
    SurgeryError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DatasetError",
    "GraftError",
    "InputError",
    "InvalidCutError",
    "LayerNotFoundError",
    "ModelLoadError",
    "PlanError",
    "RulesError",
    "SurgeryError",
]
