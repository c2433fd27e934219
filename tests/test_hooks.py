"""Noise hooks over tiny timm models and the pipeline's own MLPs."""
import pytest
import torch

from pipeline_src.methods.hooks import attach_noise
from pipeline_src.methods.models import build_model
from pipeline_src.methods.noise import apply_noise

timm = pytest.importorskip("timm")

OPTIMAL = {"kind": "optimal_q"}
SHIFT = {"kind": "circular_shift", "strength": 0.3}


def always():
    return True


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("test_vit", img_size=32, num_classes=5).eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=5).eval()


@pytest.fixture(scope="module")
def dnn3():
    torch.manual_seed(0)
    return build_model("dnn3", (1, 8, 8), 5, hidden=16).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def capture(module, kind):
    """Register a hook that stores the module's input ('pre') or output ('out') in a list."""
    seen = []
    if kind == "pre":
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    return seen, handle


@pytest.mark.parametrize("name", ["vit", "resnet", "dnn3"])
@pytest.mark.parametrize("site", ["default", "image", "block:0"])
def test_attach_changes_logits_and_remove_restores_them(request, name, site, images):
    model = request.getfixturevalue(name)
    x = images[:, :1, :8, :8] if name == "dnn3" else images
    with torch.no_grad():
        clean = model(x)
        handle = attach_noise(model, site, SHIFT, always)
        noisy = model(x)
        handle.remove()
        restored = model(x)
    assert not torch.allclose(clean, noisy)
    assert torch.equal(clean, restored)


def test_inactive_hook_is_a_no_op(vit, images):
    with torch.no_grad():
        clean = vit(images)
        handle = attach_noise(vit, "default", SHIFT, lambda: False)
        quiet = vit(images)
        handle.remove()
    assert torch.equal(clean, quiet)


def test_vit_default_hook_gets_norm1_output(vit, images):
    block = vit.blocks[-1]
    normed, h1 = capture(block.norm1, "out")
    handle = attach_noise(vit, "default", OPTIMAL, always)
    received, h2 = capture(block.attn.qkv, "pre")  # sees what the noise hook handed to attn
    with torch.no_grad():
        vit(images)
    for h in (h1, h2, handle):
        h.remove()
    expected = apply_noise(normed[0], OPTIMAL, prefix_tokens=1)
    assert torch.equal(received[0], expected)
    assert torch.equal(received[0][:, 0], normed[0][:, 0])  # class token untouched


def test_vit_embedding_site_leaves_class_token(vit, images):
    clean, h1 = capture(vit.norm_pre, "pre")
    with torch.no_grad():
        vit(images)
    h1.remove()
    handle = attach_noise(vit, "embedding", SHIFT, always)
    noisy, h2 = capture(vit.norm_pre, "out")
    with torch.no_grad():
        vit(images)
    handle.remove(), h2.remove()
    assert torch.equal(noisy[0][:, 0], clean[0][:, 0])
    assert torch.equal(noisy[0][:, 1:], apply_noise(clean[0][:, 1:], SHIFT))


def test_resnet_default_hook_gets_last_block_input(resnet, images):
    stage3, h1 = capture(resnet.layer3, "out")  # test_resnet has one block per stage
    handle = attach_noise(resnet, "default", OPTIMAL, always)
    received, h2 = capture(resnet.layer4[-1], "pre")
    with torch.no_grad():
        resnet(images)
    for h in (h1, h2, handle):
        h.remove()
    assert torch.equal(received[0], apply_noise(stage3[0], OPTIMAL))


def test_dnn3_default_hook_gets_last_hidden_output(dnn3, images):
    x = images[:, :1, :8, :8]
    hidden, h1 = capture(dnn3.act2, "out")
    handle = attach_noise(dnn3, "default", OPTIMAL, always)
    received, h2 = capture(dnn3.head, "pre")
    with torch.no_grad():
        dnn3(x)
    for h in (h1, h2, handle):
        h.remove()
    assert torch.equal(received[0], apply_noise(hidden[0], OPTIMAL))


def test_noise_survives_gradient_checkpointing(images):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=32, num_classes=5).train()
    handle = attach_noise(model, "default", SHIFT, always)
    plain = model(images)
    model.set_grad_checkpointing(True)
    checkpointed = model(images)
    checkpointed.sum().backward()
    handle.remove()
    assert torch.allclose(plain, checkpointed)
    assert not torch.allclose(plain, model(images))


def test_input_norm_normalises_before_the_model_and_keeps_module_paths():
    import torch

    plain = build_model("test_resnet", (3, 16, 16), 4, small_stem=True)
    normed = build_model("test_resnet", (3, 16, 16), 4, small_stem=True,
                         input_norm={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]})
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 16, 16)
    expected = plain.eval()((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1))
    torch.testing.assert_close(normed.eval()(x), expected)
    assert [n for n, _ in normed.named_modules()] == [n for n, _ in plain.named_modules()]


def test_local_weights_file_loads_through_timm_and_keeps_matching_heads(tmp_path):
    import torch

    source = build_model("test_vit", (3, 16, 16), 1000, timm_kwargs={"img_size": 16})
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model("test_vit", (3, 16, 16), 1000, timm_kwargs={"img_size": 16}, weights_file=str(path),
                         input_norm="none")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    # another class count: the backbone is loaded, the classifier is new
    other = build_model("test_vit", (3, 16, 16), 7, timm_kwargs={"img_size": 16}, weights_file=str(path),
                        input_norm="none")
    assert torch.equal(other.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert other.head.weight.shape == (7, source.head.weight.shape[1])
