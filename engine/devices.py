"""The one check of every ``device=`` argument: a device that tensors can live on here."""

from __future__ import annotations

import torch


def as_device(device, name: str = "device") -> torch.device:
    """``device`` (a ``torch.device``, a name such as ``"cuda:0"``, or an accelerator index)
    as a ``torch.device`` that can hold tensors in this process.

    Raises ``TypeError`` for another type and ``ValueError`` for a malformed name, the
    ``meta`` device (no data) or a device this machine or this torch build lacks.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        if isinstance(device, bool) or not isinstance(device, (str, int)):
            raise TypeError(f"{name} must be a torch.device, a name such as 'cpu' or 'cuda:0', or an int, "
                            f"got {type(device).__name__}")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise ValueError(f"{name}={device!r} is not a device: {e}") from None
    if dev.type == "meta":
        raise ValueError(f"{name}={device!r}: the meta device holds no data")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, NotImplementedError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{name}={device!r} is not available here: {reason}") from None
    return dev
