"""res2net.optimize: same function as the eager model (fp32 tight, bf16 loose), every trunk kind; bench smoke."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import res2net
from res2net.inference import OptimizedModel
from res2net.inference.fused import FusedRes2NetBlock
from res2net.hardware import bf16_native
from res2net.inference import optimize


def _perturbed(name: str, **kw) -> nn.Module:
    """A model whose BatchNorms have non-trivial statistics and affine parameters (so folding is tested)."""
    torch.manual_seed(0)
    model = res2net.create_model(name, num_classes=kw.pop("num_classes", 10), **kw)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.8 + 0.4 * torch.rand(c, generator=gen))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))
    return model.eval()


CASES = [
    ("res2net20_cifar", 32, {}),  # CIFAR stem, hierarchical + stage blocks
    ("resnet20_cifar", 32, {}),  # scale 1
    ("se_res2net50_26w_4s", 64, {}),  # SE
    ("res2net50_26w_4s", 64, {}),
    ("res2net50_v1b_26w_4s", 64, {}),  # deep stem, avg-pool shortcut
    ("res2next50", 64, {}),  # cardinality 8 in the grouped stage conv
    ("res2net_dla60", 64, {}),  # DLA trunk, shortcut passed in
    ("res2net50_26w_4s", 64, {"features_only": True, "output_stride": 8}),  # dilated stage blocks
]


@pytest.mark.parametrize("name,size,kw", CASES, ids=[c[0] + ("-features" if c[2] else "") for c in CASES])
def test_fp32_same_function(name: str, size: int, kw: dict) -> None:
    model = _perturbed(name, **kw)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    fast = optimize(model)
    out = fast(x)
    refs, outs = ([ref], [out]) if isinstance(ref, torch.Tensor) else (ref, out)
    assert len(refs) == len(outs)
    for r, o in zip(refs, outs):
        assert o.dtype == torch.float32 and o.shape == r.shape
        assert (r - o).abs().max().item() <= 1e-4 * max(1.0, r.abs().max().item())
    # the argument is untouched and still computes the same
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # no BatchNorm left, every block fused
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, FusedRes2NetBlock) for m in fast.modules())


def test_stage_block_is_one_grouped_conv() -> None:
    fast = optimize(_perturbed("res2next50"))
    stage = fast.model.layer2[0]
    assert stage.mode == 1 and len(stage.convs) == 1
    conv = stage.convs[0]
    # 4 splits of 4*8 channels (3 convs + the average-pooled split), cardinality 8 each
    assert conv.groups == 4 * 8 and conv.in_channels == conv.out_channels == stage.width * 4
    assert fast.model.layer2[1].mode == 0  # hierarchical blocks stay sequential


def test_bf16_close_to_fp32() -> None:
    model = _perturbed("res2net50_26w_4s")
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(RuntimeWarning) if not bf16_native() else _nullcontext():
        fast = optimize(model, dtype=torch.bfloat16)
    out = fast(x)
    assert out.dtype == torch.float32
    assert next(fast.model.parameters()).dtype == torch.bfloat16
    cos = nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_bad_arguments() -> None:
    model = res2net.create_model("resnet20_cifar")
    with pytest.raises(ValueError, match="dtype"):
        optimize(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="compile"):
        optimize(model, compile="yes")  # type: ignore[arg-type]
    fast = optimize(model)
    assert isinstance(fast, OptimizedModel) and not fast.training
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()
    with pytest.raises(res2net.errors.ConfigError):
        optimize(fast)


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2next_dla60"])
def test_fused_model_traces_into_one_graph(name: str) -> None:
    """torch.compile (the inductor backend) sees the whole fused model as one graph: the eager path's writes into
    channel slices (``out=``) were a graph break in every block, and past dynamo's recompile limit (8 frames of one
    code object) the remaining blocks ran uncompiled. Under compile the splits take the functional path, which
    must compute the same values."""
    model = res2net.create_model(name).eval()
    fused = optimize(model)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        explanation = torch._dynamo.explain(fused.model)(x)
        torch._dynamo.reset()
        assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons[:2]
        block = next(m for m in fused.modules() if isinstance(m, FusedRes2NetBlock) and m.mode == 0)
        out = torch.randn(2, block.width * block.scale, 8, 8)
        torch.testing.assert_close(block._multi_scale_functional(out.clone()), block.multi_scale(out.clone()),
                                   rtol=0, atol=0)


def test_packed_conv_equals_the_convolution_it_replaces() -> None:
    """Packed once per input shape: same values as the plain Conv2d for strides, groups, dilation, channel-slice
    inputs (the hierarchical splits), bf16, more shapes than it keeps, a weight changed in place and a copy."""
    import pickle
    from res2net.inference.fused import PackedConv2d

    torch.manual_seed(0)
    for kw in (dict(kernel_size=1), dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=3, padding=2,
               dilation=2, groups=4), dict(kernel_size=7, padding=3, stride=2, bias=False)):
        conv = nn.Conv2d(16, 32, **kw).eval().requires_grad_(False).to(memory_format=torch.channels_last)
        packed = PackedConv2d(conv)
        assert packed.weight is conv.weight and packed.bias is conv.bias
        for shape in [(1, 16, 9, 9), (3, 16, 12, 10), (2, 16, 8, 8), (1, 16, 5, 7), (4, 16, 6, 6), (1, 16, 9, 9)]:
            x = torch.randn(*shape).to(memory_format=torch.channels_last)
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)
        assert len(packed._packed) <= PackedConv2d.MAX_SHAPES
        wide = torch.randn(2, 48, 10, 10).to(memory_format=torch.channels_last)
        torch.testing.assert_close(packed(wide.narrow(1, 16, 16)), conv(wide.narrow(1, 16, 16)), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            conv.weight.mul_(-2.0)  # in place: the packed copy must follow
        torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)
        copied = pickle.loads(pickle.dumps(packed))
        assert not copied._packed
        torch.testing.assert_close(copied(x), conv(x), rtol=1e-5, atol=1e-5)
        conv.double()  # another dtype: the plain path
        assert torch.equal(packed(x.double()), conv(x.double()))
    bf16 = nn.Conv2d(16, 32, 3, padding=1).eval().requires_grad_(False).to(torch.bfloat16)
    x = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    torch.testing.assert_close(PackedConv2d(bf16)(x).float(), bf16(x).float(), rtol=2e-2, atol=2e-2)


def test_optimize_packs_every_convolution_on_the_cpu() -> None:
    from res2net.inference.fused import PackedConv2d

    model = res2net.create_model("res2net17_slim").eval()
    fast = optimize(model)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, PackedConv2d) for m in convs)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4 * float(model(x).abs().max()))
