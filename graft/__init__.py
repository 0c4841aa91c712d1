"""graft: transfer-learning advice and network surgery for Keras 3 image CNNs.

The library lives in two packages, `advisor` (facts, rules, plans) and `surgery` (layer graph, edits,
training). This package is the floor both stand on, and imports nothing of theirs: the version, the
exception hierarchy (`errors`), the plan schema (`plan`), the image listing (`images`), preprocessing
conventions (`preprocessing`), atomic writes, the run-directory lock, YAML with line numbers, the
console and hardware detection. Layers: docs/architecture.md.
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
