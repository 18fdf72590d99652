"""The frozen-teacher contract shared by every teacher.

A teacher is a frozen unimodal encoder (CLIP's towers, an HF text encoder) whose outputs are
constants for the student (MAD, arXiv 2204.10496, §3: teachers are used during finetuning only and
dropped afterwards). :class:`Teacher` enforces that contract in one place:

* parameters are frozen (``requires_grad=False``) and every forward runs under ``torch.no_grad``;
* the module is always in eval mode: ``teacher.train()`` (or a parent's ``.train()``) cannot turn
  dropout back on;
* it is moved by ``.to()`` / ``.cuda()`` like any submodule, but it contributes **nothing** to a
  parent's ``state_dict`` and ignores whatever a checkpoint holds under its prefix, so a student
  checkpoint never carries teacher weights and loads back with ``strict=True``;
* :attr:`Teacher.identity` names the teacher and fingerprints its weights, so caches and
  checkpoints made with another teacher can be refused.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["Teacher", "weights_fingerprint"]

# elements sampled per tensor for the fingerprint: enough that two different checkpoints differ
# (finetuning moves essentially every weight), cheap even for ViT-L on a GPU
_FINGERPRINT_SAMPLES = 64


def weights_fingerprint(module: nn.Module) -> str:
    """A short hex digest of ``module``'s parameters and buffers.

    Hashes every tensor's name, shape, dtype and a fixed strided sample of its values (exact
    bytes, copied to the CPU), so it does not depend on the device or on the file format the
    weights came from, and costs milliseconds. The weights' dtype is part of it: an fp16 copy of
    a teacher is a different teacher for caching purposes.
    """
    h = hashlib.sha256()
    tensors = list(nn.Module.state_dict(module, keep_vars=False).items())
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].cpu()
        if sample.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
            sample = sample.view(torch.int16)
        h.update(sample.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Teacher(nn.Module):
    """Base class of the frozen teachers.

    Subclasses build their wrapped model, then call :meth:`_freeze` at the end of ``__init__``,
    and implement :attr:`embed_dim`, :attr:`token_dim` and :meth:`describe`. Forward-style
    methods are decorated with ``@torch.no_grad()``.
    """

    def _freeze(self) -> None:
        self.requires_grad_(False)
        nn.Module.train(self, False)
        # a checkpoint's entries under this teacher's prefix are replaced by the teacher's own
        # weights before its submodules load, so loading never changes the teacher and never
        # reports its weights as missing
        self._register_load_state_dict_pre_hook(self._keep_own_weights, with_module=True)

    # -- frozen / eval / no state ----------------------------------------------------------
    def train(self, mode: bool = True) -> Teacher:
        """Teachers stay in eval mode whatever ``mode`` is (no dropout, fixed norms)."""
        return nn.Module.train(self, False)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars=False):
        """Empty: a teacher's weights come from its spec, never from a student's checkpoint.

        Use ``teacher.model.state_dict()`` to get the wrapped model's weights.
        """
        if args:  # positional (destination, prefix, keep_vars), deprecated in torch but legal
            destination = args[0]
        return OrderedDict() if destination is None else destination

    @staticmethod
    def _keep_own_weights(module: Teacher, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]
        for name, value in nn.Module.state_dict(module, keep_vars=True).items():
            state_dict[prefix + name] = value

    # -- description ---------------------------------------------------------------------
    def describe(self) -> str:
        """What the teacher is (kind, model name, options that change its outputs)."""
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """``describe()`` plus a fingerprint of the weights, e.g. ``open_clip:ViT-B-32#1a2b...``.

        Two teachers with the same identity give the same outputs; caches and checkpoints record
        it and refuse to mix teachers.
        """
        return f"{self.describe()}#{weights_fingerprint(self)}"

    @property
    def embed_dim(self) -> int:
        """Width ``e`` of the pooled embedding (CLIP: the joint image-text space)."""
        raise NotImplementedError

    @property
    def token_dim(self) -> int:
        """Width ``d_t`` of the token features (the distillation targets)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def extra_repr(self) -> str:
        return f"describe={self.describe()!r}, frozen=True"
