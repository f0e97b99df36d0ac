"""The PSS network: geometry from the profile, ImageNet initialisation, weights files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models import DenseNet

from her2ops.models.network import (
    ARCHITECTURES,
    batch_to_device,
    build_network,
    channels_first_view,
    load_network,
    pick_device,
    save_weights,
)
from her2ops.profiles import PROFILES, get_profile


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", list(PROFILES))
def test_first_conv_and_classifier_follow_the_profile(name: str) -> None:
    profile = get_profile(name)
    net = build_network(profile)
    conv0 = net.backbone.features.conv0
    assert isinstance(conv0, torch.nn.Conv2d)
    assert conv0.in_channels == profile.pss.channels == 3 * profile.pss.num_patches
    assert net.backbone.classifier.out_features == 4
    assert net.in_channels == profile.pss.channels


def test_paper_profile_is_densenet201() -> None:
    net = build_network(get_profile("paper"))
    blocks = [m for n, m in net.backbone.features.named_children() if n.startswith("denseblock")]
    assert [len(b) for b in blocks] == [6, 12, 48, 32]
    assert net.backbone.features.conv0.in_channels == 153


def test_forward_uint8_gives_four_logits() -> None:
    profile = get_profile("test")
    net = build_network(profile).eval()
    x = torch.randint(0, 256, (3, profile.pss.channels, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        out = net(x)
        same = net(x.float() / 255.0)  # the wrapper normalises uint8 the same as [0,1] floats
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, same)


def test_unknown_architecture_lists_known_ones() -> None:
    bad = replace(get_profile("test"), arch="resnet50")
    with pytest.raises(ValueError, match="densenet201") as err:
        build_network(bad)
    assert "resnet50" in str(err.value)
    assert set(ARCHITECTURES) >= {"densenet121", "densenet169", "densenet201"}


def test_imagenet_init_repeats_and_scales_rgb_kernel(tmp_path: Path) -> None:
    profile = get_profile("test")
    torch.manual_seed(3)
    # An "ImageNet" checkpoint of the same (tiny) DenseNet, written the way torchvision's files
    # are: 3 input channels, 1000 classes, legacy 'norm.1' style keys.
    imagenet = DenseNet(
        growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, num_classes=1000
    )
    state = {}
    for key, value in imagenet.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # absent from torchvision's published files
        legacy = key.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")
        state[legacy] = value
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)

    net = build_network(profile, init_checkpoint=path)
    patches = profile.pss.num_patches
    w = net.backbone.features.conv0.weight
    ref = imagenet.features.conv0.weight
    assert w.shape == (16, 3 * patches, 7, 7)
    for p in range(patches):
        torch.testing.assert_close(w[:, 3 * p : 3 * p + 3], ref / patches)
    got = net.backbone.state_dict()
    for key, value in imagenet.state_dict().items():
        if key.startswith(("classifier", "features.conv0")):
            continue
        torch.testing.assert_close(got[key], value, msg=key)
    assert net.backbone.classifier.out_features == 4
    # A set of identical patches through conv0 reproduces the ImageNet response.
    rgb = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        net.backbone.features.conv0(rgb.repeat(1, patches, 1, 1)),
        imagenet.features.conv0(rgb),
        rtol=1e-4,
        atol=1e-5,
    )


def test_imagenet_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    other = DenseNet(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit densenet-tiny"):
        build_network(get_profile("test"), init_checkpoint=path)


def test_weights_round_trip_and_profile_mismatch(tmp_path: Path) -> None:
    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile)
    path = save_weights(net, tmp_path / "w.pt", profile, epoch=3)
    loaded, meta = load_network(path)
    assert meta["profile"] == "test" and meta["epoch"] == 3
    for (k1, v1), (_, v2) in zip(
        net.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(v1, v2), k1
    with pytest.raises(ValueError, match=r"profile 'test', not 'demo'"):
        load_network(path, get_profile("demo"))


def test_pick_device_defaults_to_cpu_without_cuda() -> None:
    if torch.cuda.is_available():
        assert pick_device(None).type == "cuda"
    else:
        assert pick_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_memory_efficient_network_computes_the_same() -> None:
    profile = get_profile("test")
    torch.manual_seed(0)
    plain = build_network(profile)
    lean = build_network(profile, memory_efficient=True)
    lean.load_state_dict(plain.state_dict())
    x = torch.randint(0, 256, (2, profile.pss.channels, 32, 32), dtype=torch.uint8)
    out_plain, out_lean = plain(x), lean(x)
    torch.testing.assert_close(out_plain, out_lean)
    out_lean.sum().backward()
    assert lean.backbone.features.conv0.weight.grad is not None


def _to_channels_last(sets: torch.Tensor) -> torch.Tensor:
    """(B, 3P, H, W) -> (B, P, H, W, 3): the store sampler's layout of the same pixels."""
    b, c, h, w = sets.shape
    return sets.reshape(b, c // 3, 3, h, w).permute(0, 1, 3, 4, 2).contiguous()


def test_a_set_gives_the_same_logits_in_either_layout() -> None:
    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile).eval()
    gen = torch.Generator().manual_seed(1)
    first = torch.randint(
        0, 256, (3, profile.pss.channels, 32, 32), dtype=torch.uint8, generator=gen
    )
    last = _to_channels_last(first)
    assert last.shape == (3, profile.pss.num_patches, 32, 32, 3)
    with torch.inference_mode():
        a = net(first)
        b = net(batch_to_device(last, torch.device("cpu")))
    assert torch.equal(a, b)  # the same input tensor reaches the backbone: the same logits
    # the CUDA arrangement (channels_last memory format) holds the same values
    cuda_like = channels_first_view(last, profile.pss.num_patches, channels_last=True)
    assert cuda_like.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cuda_like, first)
    assert channels_first_view(last).is_contiguous()  # on the CPU: plain contiguous
    with pytest.raises(ValueError, match="3 patches given to a network over 7"):
        net(last[:, :3])
    with pytest.raises(ValueError, match=r"expected \(batch, patches, size, size, 3\)"):
        channels_first_view(first.unsqueeze(-1))
