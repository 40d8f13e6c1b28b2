"""Warnings that importing the engine's libraries prints on every start, and that say nothing about
this server, kept out of its log (they stay visible at ERROR):

- ``torchao`` (int8 weights): its optional CUDA kernels (mxfp8, cutlass) and triton are absent on
  a CPU machine, and it says so each time diffusers imports it;
- ``torch.utils._pytree``: torchao registers enums that torch 2.13 supports natively, and torch warns;
- ``diffusers.quantizers.torchao.torchao_quantizer``: torchao 0.18 no longer has the tensor types
  diffusers 0.42 lists as safe globals; none of them is in a checkpoint this server loads.

A logger's level is set before its library is imported, so the warnings are never made.
"""

from __future__ import annotations

import logging

QUIETED = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def quiet_library_warnings() -> None:
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.ERROR)
