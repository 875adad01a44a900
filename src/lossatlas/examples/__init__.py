"""Built-in example problems: convex baselines and non-convex networks on offline data.

>>> from lossatlas import examples
>>> examples.names()[:3]
['seed-relu', 'linreg-mse', 'logreg-bce']
"""

from . import _builtin  # noqa: F401  (registers the examples)
from ._data import breast_cancer, diabetes, digits, fashion_mnist, synthetic_regression
from ._models import SeedReLU, SmallCNN, SmallResNet, mlp
from ._paths import mlp_digits_pair, mlp_digits_trajectory
from ._registry import REGISTRY, TRAINING_THREADS, Example, cache_dir, load, names

__all__ = ["Example", "REGISTRY", "TRAINING_THREADS", "load", "names", "cache_dir", "SeedReLU", "SmallCNN",
           "SmallResNet", "mlp", "digits", "breast_cancer", "diabetes", "synthetic_regression", "fashion_mnist",
           "mlp_digits_pair", "mlp_digits_trajectory"]
