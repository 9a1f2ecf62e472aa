"""The model zoo: the paper's networks (CIFAR VGG-16 and ResNet-18, DnCNN, NAFNet) built with
weighted convolutions (``weighted=False`` for the plain twin), and a trained denoiser.

    from wconv_deploy.zoo import create_model, list_models
    model = create_model("dncnn", depth=10, width=32, den=0.7)

Importing the zoo registers every model (:mod:`.cifar`, :mod:`.denoisers`) without importing
torch: the builders import it, and their networks (:mod:`.cifar_nets`, :mod:`.denoiser_nets`),
when a model is built, so listing the zoo stays fast.
"""

from wconv_deploy.zoo import cifar, denoisers  # noqa: F401  (their decorators register the models)
from wconv_deploy.zoo.layers import DEFAULT_DEN, ConvFactory, density_table
from wconv_deploy.zoo.registry import ZooEntry, create_model, get_entry, list_models, parse_zoo_uri, register_model

__all__ = [
    "DEFAULT_DEN",
    "ConvFactory",
    "ZooEntry",
    "create_model",
    "density_table",
    "get_entry",
    "list_models",
    "parse_zoo_uri",
    "register_model",
]
