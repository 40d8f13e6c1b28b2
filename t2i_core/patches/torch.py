"""A torch setting the engine's ``torch.compile`` needs (``T2I_COMPILE``).

- ``no_duck_shapes``: torch's symbolic shapes give two sizes that are equal the same symbol ("duck
  shapes"), so a batch size that happens to equal another dimension (a batch of 4 with 4 latent
  channels) specializes the compiled graph and the next batch size recompiles. Off, a batch is its
  own symbol. ``torch.fx.experimental._config.use_duck_shape`` is private, hence the version guard.
  Upstream: the option is documented in torch/fx/experimental/_config.py; none known.
"""

from __future__ import annotations

from types import ModuleType

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "2.13"
CONFIG_MODULE = "torch.fx.experimental._config"


def no_duck_shapes(config: ModuleType) -> None:
    """``config``: the module ``torch.fx.experimental._config``."""
    if written_for("torch", WRITTEN_FOR, "no_duck_shapes"):
        config.use_duck_shape = False  # type: ignore[attr-defined]
