"""The PSS network: a torchvision DenseNet whose first convolution sees the whole pyramid set.

A pyramid sampling set (PSS) of ``P`` RGB patches is one ``3P``-channel image; the network is an
ordinary DenseNet (``weights=None``) whose ``conv0`` takes ``3P`` channels and whose classifier has
four outputs (HER2 0, 1+, 2+, 3+). Callers pass ``uint8`` sets: :class:`PSSNet` scales them to
[0, 1] and normalises every patch with the ImageNet mean/std, so a network initialised from an
ImageNet checkpoint sees inputs in the range it was trained on.

Sets come in either layout: channels-first ``(B, 3P, H, W)`` (patch ``i`` is channels
``3i..3i+2``) or channels-last ``(B, P, H, W, 3)``, the decoder's layout in which the store's
sampler writes them without transposing. The layout change is done by :meth:`PSSNet.prepare`,
on the model's device after the ``uint8`` batch has moved there: a byte copy on the GPU instead
of a transposing copy of every patch on the CPU.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import DenseNet, densenet121, densenet169, densenet201

from her2ops.profiles import Profile, get_profile
from her2ops.scores import NUM_CLASSES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = 1


def _tiny(*, weights: None = None, **kw: Any) -> DenseNet:
    # Still a DenseNet (dense blocks, transitions, BN-ReLU-conv): small enough for unit tests.
    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, **kw)


ARCHITECTURES: dict[str, Callable[..., DenseNet]] = {
    "densenet121": densenet121,
    "densenet169": densenet169,
    "densenet201": densenet201,
    "densenet-tiny": _tiny,
}


class PSSNet(nn.Module):
    """DenseNet over a PSS; accepts ``uint8`` or float sets, (batch, 3P, H, W) channels-first
    or (batch, P, H, W, 3) channels-last."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: DenseNet, *, num_patches: int, profile_name: str, arch: str):
        super().__init__()
        self.backbone = backbone
        self.profile_name = profile_name
        self.arch = arch
        self.num_patches = num_patches
        mean = torch.tensor(IMAGENET_MEAN).repeat(num_patches).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD).repeat(num_patches).view(1, -1, 1, 1)
        # Buffers travel with .to(device) but are not trained; persistent=False keeps them out
        # of checkpoints so the state dict is the plain DenseNet's.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def in_channels(self) -> int:
        return 3 * self.num_patches

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or float sets, in either layout -> the normalised float (B, 3P, H, W) input of
        the backbone. A channels-last set is rearranged where it is (call this after moving the
        batch), while still ``uint8``; on CUDA into the channels_last memory format the model
        uses (a (B, H, W, 3P) buffer seen as (B, 3P, H, W)), elsewhere contiguous."""
        if x.dim() == 5:
            x = channels_first_view(x, self.num_patches)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))


def build_network(
    profile: Profile,
    *,
    init_checkpoint: Path | None = None,
    memory_efficient: bool = False,
) -> PSSNet:
    """Build the profile's DenseNet with ``conv0`` over ``3 x patches`` channels and 4 classes.

    ``init_checkpoint`` is a local torchvision ImageNet state dict for the same architecture: every
    layer but the classifier is copied, and ``conv0``'s RGB kernel is repeated once per patch and
    divided by the number of patches (so a set of identical patches gives the ImageNet response).
    ``memory_efficient`` trades compute for memory (torchvision's checkpointed dense layers).
    """
    if profile.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {profile.arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    backbone = ARCHITECTURES[profile.arch](
        weights=None, num_classes=NUM_CLASSES, memory_efficient=memory_efficient
    )
    patches = profile.pss.num_patches
    old = backbone.features.conv0
    assert isinstance(old, nn.Conv2d)
    backbone.features.conv0 = nn.Conv2d(
        3 * patches,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        bias=False,
    )
    net = PSSNet(backbone, num_patches=patches, profile_name=profile.name, arch=profile.arch)
    if init_checkpoint is not None:
        _load_imagenet(net, Path(init_checkpoint))
    return net


_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _load_imagenet(net: PSSNet, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet checkpoint {path} does not exist")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping) and "state_dict" in raw:
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} does not hold a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        match = _LEGACY_KEY.match(key)  # torchvision's published files use 'norm.1' style keys
        state[match.group(1) + match.group(2) if match else key] = value
    own = net.backbone.state_dict()
    conv = state.get("features.conv0.weight")
    if conv is None or conv.dim() != 4 or conv.shape[1] != 3:
        raise ValueError(f"{path} has no RGB 'features.conv0.weight'; is it a DenseNet checkpoint?")
    state["features.conv0.weight"] = conv.repeat(1, net.num_patches, 1, 1) / net.num_patches
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    wanted = {k for k in own if not k.startswith("classifier.")}
    # torchvision's published files predate BatchNorm's num_batches_tracked: not required
    missing = sorted(k for k in wanted - state.keys() if not k.endswith("num_batches_tracked"))
    bad = sorted(k for k in wanted & state.keys() if state[k].shape != own[k].shape)
    if missing or bad:
        raise ValueError(
            f"{path} does not fit {net.arch}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(bad)} shape mismatches "
            f"(e.g. {bad[:2]})"
        )
    net.backbone.load_state_dict({k: state[k] for k in wanted & state.keys()}, strict=False)


def pick_device(pref: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; an explicit ``"cuda"`` must exist."""
    if pref in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r} requested but CUDA is not available")
    return device


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model; on CUDA use channels_last, which cuDNN's bf16 convolutions prefer."""
    if device.type == "cuda":
        return model.to(device).to(memory_format=torch.channels_last)
    return model.to(device)


def batch_to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an input batch (kept ``uint8`` until it is on the device: 4x less to copy).

    A channels-first (B, 3P, H, W) batch is made channels_last on CUDA; a channels-last
    (B, P, H, W, 3) batch moves as it is, and :meth:`PSSNet.prepare` rearranges it there."""
    if device.type == "cuda":
        moved = x.to(device, non_blocking=True)
        if moved.dim() == 4:
            return moved.contiguous(memory_format=torch.channels_last)
        return moved
    return x.to(device)


def channels_first_view(
    x: torch.Tensor, num_patches: int | None = None, *, channels_last: bool | None = None
) -> torch.Tensor:
    """(B, P, H, W, 3) channels-last sets as (B, 3P, H, W), channel ``3i + c`` = patch ``i``,
    colour ``c`` (the channels-first order), in one copy. In the channels_last memory format
    (the strides of a (B, H, W, 3P) buffer, which cuDNN's convolutions prefer and
    :func:`to_device` gives the model on CUDA) when ``channels_last``, by default on CUDA;
    contiguous otherwise."""
    if x.dim() != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected (batch, patches, size, size, 3) sets, got {tuple(x.shape)}")
    b, p, h, w, _ = x.shape
    if num_patches is not None and p != num_patches:
        raise ValueError(f"sets of {p} patches given to a network over {num_patches}")
    if channels_last is None:
        channels_last = x.device.type == "cuda"
    if channels_last:
        return x.permute(0, 2, 3, 1, 4).reshape(b, h, w, 3 * p).permute(0, 3, 1, 2)
    return x.permute(0, 1, 4, 2, 3).reshape(b, 3 * p, h, w)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no loss scaling needed), nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> PSSNet:
    """The :class:`PSSNet` inside a DDP (or ``torch.compile``) wrapper."""
    inner: nn.Module = model
    for _ in range(3):
        if isinstance(inner, PSSNet):
            return inner
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None) or inner
    if not isinstance(inner, PSSNet):
        raise TypeError(f"expected a PSSNet, got {type(model).__name__}")
    return inner


def save_weights(model: nn.Module, path: Path, profile: Profile, **meta: Any) -> Path:
    """Write a weights file that names its profile (atomically: a kill never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "profile": profile.name,
        "profile_config": profile.to_dict(),
        "model": unwrap(model).backbone.state_dict(),
        **meta,
    }
    atomic_save(payload, path)
    return path


def atomic_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def check_profile(ckpt: Mapping[str, Any], profile: Profile, path: Path) -> None:
    """Refuse a checkpoint written for another profile (by name or by geometry/architecture)."""
    name = ckpt.get("profile")
    config = ckpt.get("profile_config")
    if name != profile.name:
        raise ValueError(
            f"checkpoint {path} was written for profile {name!r}, not {profile.name!r}"
        )
    if isinstance(config, Mapping):
        for key in ("pss", "arch"):
            if config.get(key) != profile.to_dict().get(key):
                raise ValueError(
                    f"checkpoint {path} (profile {name!r}) has a different {key} than "
                    f"profile {profile.name!r} defines now"
                )


def load_network(
    path: Path, profile: Profile | None = None, *, device: torch.device | None = None
) -> tuple[PSSNet, dict[str, Any]]:
    """Load a weights file (from :func:`save_weights` or a training checkpoint).

    Without ``profile`` the file's own profile name is looked up; with one, a file written for
    another profile raises ``ValueError`` naming both.
    """
    path = Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "profile" not in ckpt:
        raise ValueError(f"{path} is not a her2ops model checkpoint")
    if profile is None:
        profile = get_profile(str(ckpt["profile"]))
    check_profile(ckpt, profile, path)
    net = build_network(profile)
    net.backbone.load_state_dict(ckpt["model"])
    if device is not None:
        to_device(net, device)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler")}
    return net, meta
