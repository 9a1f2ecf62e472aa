"""Load a trained model from any format users save, without running code hidden in the file.

Formats (detected from the file's content, not its name):

- ``pickle``: ``torch.save(model)``, a whole module;
- ``state_dict``: ``torch.save(model.state_dict())``; needs ``arch`` to build the architecture;
- ``checkpoint``: a dict holding a module or a state_dict under a key such as ``model`` or ``ema``;
- ``torchscript``: ``torch.jit.save`` archives (``torchscript_weights``: only their tensors, into ``arch``);
- ``export``: ``torch.export.save`` programs, ``.pt2`` (``export_weights``: only their weights, into ``arch``).

Safety: nothing inside a model file runs unless the user vouches for it (``trust_pickle=True``).
Files written by ``torch.save`` pass the unpickling boundary of :mod:`.unpickle` (an allowlist,
placeholders for unknown classes when ``arch`` is given, checks of the module tree that comes
out). TorchScript archives are code: without trust they load only with ``arch``, their tensors
read straight from the archive (:mod:`.archives`). A ``.pt2`` program loads without trust when
nothing in it would run (:func:`~.archives.check_pt2`), and with ``arch`` from its raw weight
records only. The path must be a regular file, every archive passes the listing checks of
:func:`~.archives.open_zip`, and ``zoo:`` models are sized on the meta device before they are
built.

Modules: :mod:`.formats` (format detection, one loader per format, :func:`load_model`),
:mod:`.unpickle` (the security boundary), :mod:`.archives` (zip/tar listings, TorchScript and
``.pt2`` weights read as data, the ``.pt2`` scan), :mod:`.arch` (``--arch``, checkpoint dicts,
fitting a state_dict).

Whatever the file's dtype, the model comes out float32 (:func:`~.formats.as_float32`, noted),
and training wrappers (DataParallel, DDP, torch.compile) are unwrapped (:func:`~.unpickle.unwrap`).
"""

from wconv_deploy.loading.arch import CHECKPOINT_KEYS, HALF_DTYPES, resolve_arch
from wconv_deploy.loading.formats import MAX_ZOO_PARAMETERS, LoadedModel, as_float32, load_model
from wconv_deploy.loading.unpickle import MAX_MODULE_DEPTH, MAX_MODULES

__all__ = [
    "CHECKPOINT_KEYS",
    "HALF_DTYPES",
    "MAX_MODULES",
    "MAX_MODULE_DEPTH",
    "MAX_ZOO_PARAMETERS",
    "LoadedModel",
    "as_float32",
    "load_model",
    "resolve_arch",
]
