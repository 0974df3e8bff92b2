"""The embedded tiny Qwen2-VL and the loader for real checkpoints: real builds, real forward passes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from earthshader import models  # noqa: E402
from earthshader.errors import UsageError  # noqa: E402
from earthshader.models import EarthShaderModelConfig, build_tiny_model, load_model_and_processor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """An EARTHSHADER_HOME of this module's own, with the tiny model built in it through the normal path."""
    home = tmp_path_factory.mktemp("es_home")
    old = os.environ.get("EARTHSHADER_HOME")
    os.environ["EARTHSHADER_HOME"] = str(home)
    try:
        models.ensure_tiny_model()
        yield home
    finally:
        if old is None:
            os.environ.pop("EARTHSHADER_HOME", None)
        else:
            os.environ["EARTHSHADER_HOME"] = old


def test_tiny_model_builds_deterministically(tiny_home, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    first = models.tiny_model_dir()
    assert first.parent == tiny_home
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert _sha(first / name) == _sha(again / name), name


def test_tiny_model_reloads_with_from_pretrained_and_generates(tiny_home):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = models.tiny_model_dir()
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLImageOnlyProcessor"
    assert 3_000_000 < model.num_parameters() < 8_000_000
    # the special ids sit inside the small vocabulary, not at Qwen's 151k defaults
    vocab = model.config.text_config.vocab_size
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert 0 <= getattr(model.config, key) < vocab

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw it."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    image = Image.new("RGB", (200, 200), (255, 255, 255))  # not 112 px: the processor resizes
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6


def test_processor_works_without_torchvision(tiny_home):
    # The point of the image-only processor: this machine has no torchvision.
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models.tiny_model_dir(), local_files_only=True)
    assert not hasattr(processor, "video_processor")
    batch = processor(
        images=[Image.new("RGB", (112, 112))], text=["<|vision_start|><|image_pad|><|vision_end|>hi"]
    )
    assert list(batch["image_grid_thw"][0]) == [1, 8, 8]
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(Exception):  # noqa: B017 - what breaks is transformers' business, that it breaks is ours
            from transformers import Qwen2VLProcessor
            from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

            Qwen2VLProcessor(processor.image_processor, processor.tokenizer, Qwen2VLVideoProcessor())


def test_tiny_processor_hands_the_tower_each_pixels_uv_coordinates(tiny_home):
    # Qwen2-VL's tower has only relative (rotary) positions; the tiny one gets uv as two more channels.
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models.tiny_model_dir(), local_files_only=True)
    ip = processor.image_processor
    assert type(ip).__name__ == "Qwen2VLCoordImageProcessor" and ip.coord_channels
    pixels = np.zeros((112, 112, 3), np.uint8)
    pixels[:14, :14] = 255  # a white patch in the top-left corner
    out = ip(images=[Image.fromarray(pixels)], return_tensors="np")
    patches = out["pixel_values"].reshape(64, 5, 2, 14, 14)  # 8 x 8 patches, RGB + (x, y), 2 frames
    # the first patch is the top-left one (Qwen's merge order starts there): white, at uv (-1, 1)
    assert patches[0, :3].min() > 1.0 and patches[1:, :3].max() < 0.0
    assert patches[0, 3, 0, 0, 0] == pytest.approx(-1 + 1 / 112) and patches[0, 4, 0, 0, 0] == pytest.approx(
        1 - 1 / 112
    )
    # x grows to the right, y grows upwards, both spanning (-1, 1) on a square image
    x, y = patches[:, 3].ravel(), patches[:, 4].ravel()
    assert x.min() == pytest.approx(-1 + 1 / 112) and x.max() == pytest.approx(1 - 1 / 112)
    assert y.min() == pytest.approx(-1 + 1 / 112) and y.max() == pytest.approx(1 - 1 / 112)
    assert np.all(np.diff(patches[0, 3, 0, 0, :]) > 0) and np.all(np.diff(patches[0, 4, 0, :, 0]) < 0)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(models.tiny_model_dir()).vision_config.in_channels == 5


def test_tiny_tokenizer_keeps_numbers_and_specials_whole(tiny_home):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.tiny_model_dir(), local_files_only=True)
    assert tok.tokenize("0.25") == ["0.25"]
    # a sign stays with its number, so a value is one decision: "(" then "-0.35", " -0.55"
    assert tok.tokenize("(-0.35") == ["(", "-0.35"] and tok.tokenize(", -0.55)") == [",", "Ġ-0.55", ")"]
    assert tok.tokenize("uv - vec2") == ["uv", "Ġ-", "Ġvec2"]  # a minus between words stays punctuation
    assert len(tok.tokenize("vec2(-0.30, 0.12)")) <= 7
    for special in models.SPECIAL_TOKENS:
        assert tok.tokenize(special) == [special]
    assert tok.decode(tok("float d = length(p) - 0.25;\n")["input_ids"]) == "float d = length(p) - 0.25;\n"


def test_load_model_and_processor_tiny_default_never_needs_network(tiny_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load_model_and_processor(EarthShaderModelConfig())
    assert model.config.vision_config.hidden_size == model.config.text_config.hidden_size
    assert processor.image_processor.size["longest_edge"] == 112 * 112


def test_load_model_applies_pixel_limits(tiny_home):
    _, processor = load_model_and_processor(EarthShaderModelConfig(min_pixels=56 * 56, max_pixels=56 * 56))
    from PIL import Image

    batch = processor(
        images=[Image.new("RGB", (112, 112))], text=["<|vision_start|><|image_pad|><|vision_end|>"]
    )
    assert list(batch["image_grid_thw"][0]) == [1, 4, 4]


def test_hub_id_not_cached_fails_with_one_clear_line(tiny_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UsageError) as err:
        load_model_and_processor(EarthShaderModelConfig(model_name_or_path="Qwen/Qwen2-VL-2B-Instruct"))
    message = str(err.value)
    assert "\n" not in message and "Qwen/Qwen2-VL-2B-Instruct" in message and "cache" in message


def test_missing_local_folder_is_usage_error():
    with pytest.raises(UsageError, match="does not exist"):
        load_model_and_processor(EarthShaderModelConfig(model_name_or_path="./no/such/model"))


def test_load_in_4bit_without_bitsandbytes_is_usage_error(tiny_home):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(UsageError, match="bitsandbytes"):
        load_model_and_processor(EarthShaderModelConfig(load_in_4bit=True, use_peft=True))


def test_lora_adapters_follow_train_vision_tower(tiny_home):
    text_only, _ = load_model_and_processor(
        EarthShaderModelConfig(use_peft=True, lora_r=4, train_vision_tower=False)
    )
    lora = [n for n, p in text_only.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for n, p in text_only.named_parameters() if "lora_" in n)
    assert not any("visual" in n for n in lora)
    assert not any(p.requires_grad for n, p in text_only.named_parameters() if "lora_" not in n)

    both, _ = load_model_and_processor(
        EarthShaderModelConfig(use_peft=True, lora_r=4, train_vision_tower=True)
    )
    assert any("visual" in n and "lora_" in n for n, _ in both.named_parameters())


def test_full_finetune_can_freeze_the_vision_tower(tiny_home):
    model, _ = load_model_and_processor(EarthShaderModelConfig(train_vision_tower=False))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all("visual" in n for n in frozen)


def test_init_model_cli_writes_and_refuses_to_overwrite(tiny_home, tmp_path):
    out = tmp_path / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "earthshader.cli", "init-model", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    # built in another process, byte for byte the model this process built
    for name in ("model.safetensors", "tokenizer.json"):
        assert _sha(out / name) == _sha(models.tiny_model_dir() / name), name
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0 and "--overwrite" in second.stderr


def test_patch_embedding_runs_as_a_linear_map_with_the_convolutions_weights(tiny_home, tmp_path):
    import torch

    model, _ = load_model_and_processor(EarthShaderModelConfig())
    embed = model.model.visual.patch_embed
    assert "forward" in vars(embed)  # load_model_and_processor swapped it in
    assert models.patch_embed_as_linear(model) == 1
    patches = torch.randn(64, embed.proj.weight[0].numel())
    as_conv = type(embed).forward(embed, patches)  # the class's own Conv3d path
    as_linear = embed(patches)
    assert as_linear.shape == as_conv.shape == (64, embed.embed_dim)
    assert torch.allclose(as_linear, as_conv, atol=1e-5) and not torch.equal(
        as_linear, torch.zeros_like(as_linear)
    )
    as_linear.square().sum().backward()  # the convolution's weight still learns
    assert embed.proj.weight.grad is not None and embed.proj.weight.grad.abs().sum() > 0
    # saved files are the convolution's: a plain transformers load reads them unchanged
    model.save_pretrained(tmp_path / "saved")
    from transformers import AutoModelForImageTextToText

    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved")
    assert "forward" not in vars(again.model.visual.patch_embed)
    assert torch.allclose(again.model.visual.patch_embed(patches), as_conv, atol=1e-5)


def _tower_on(model, pixels, grid):
    """The vision tower's merged tokens and its parameters' gradients for one batch."""
    model.model.visual.zero_grad(set_to_none=True)
    tokens = model.model.get_image_features(pixels, grid).pooler_output
    tokens = torch.cat(list(tokens)) if isinstance(tokens, tuple | list) else tokens
    tokens.square().sum().backward()
    return tokens.detach(), [p.grad.clone() for p in model.model.visual.parameters()]


@pytest.mark.parametrize("sizes", [[(8, 8)] * 3, [(8, 8), (4, 4), (8, 8)]], ids=["same", "mixed"])
def test_vision_attention_in_one_call_is_the_per_picture_attention(tiny_home, monkeypatch, sizes):
    model, _ = load_model_and_processor(EarthShaderModelConfig(train_vision_tower=True))
    attentions = [block.attn for block in model.model.visual.blocks]
    assert all("forward" in vars(a) for a in attentions)  # load_model_and_processor swapped it in
    assert models.batch_vision_attention(model) == len(attentions) > 0
    grid = torch.tensor([[1, h, w] for h, w in sizes])
    dim = model.model.visual.patch_embed.proj.weight[0].numel()
    pixels = torch.randn(int(grid.prod(-1).sum()), dim, generator=torch.Generator().manual_seed(0))
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])  # the batch: pictures attended at once
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    fast, fast_grads = _tower_on(model, pixels, grid)
    fast_calls, calls[:] = list(calls), []
    for a in attentions:
        del a.forward  # the class's own: one call per picture
    own, own_grads = _tower_on(model, pixels, grid)
    assert calls == [1] * len(sizes) * len(attentions)
    if len(set(sizes)) == 1:  # one call a block over all the pictures
        assert fast_calls == [len(sizes)] * len(attentions)
    else:  # pictures of different sizes keep the class's path
        assert fast_calls == calls
    assert fast.shape == own.shape and fast.abs().max() > 0
    assert torch.allclose(fast, own, atol=1e-6)
    for a, b in zip(fast_grads, own_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6 * max(1.0, b.abs().max().item()))


def _attention_case(case: str, dtype):
    """Queries, keys, values and an SDPA mask for one attention call of 4 heads sharing 2 key-value heads."""
    from transformers.masking_utils import sdpa_mask

    generator = torch.Generator().manual_seed(0)
    batch, length = 3, 24
    queries = 1 if case == "decode" else length  # decode: one new token against a cache of 24
    q = torch.randn(batch, 4, queries, 16, generator=generator) * 2
    k, v = (torch.randn(batch, 2, length, 16, generator=generator) * 2 for _ in range(2))
    mask = None
    if case == "padded":
        padding = torch.arange(length)[None, :] < torch.tensor([length, 17, 9])[:, None]
        mask = sdpa_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=padding)
        assert mask is not None and mask.dtype == torch.bool
    return [x.to(dtype).requires_grad_() for x in (q, k, v)], mask


@pytest.mark.parametrize("case", ["padded", "causal", "decode"])
def test_matmul_attention_is_sdpa_to_bf16s_rounding(case, monkeypatch):
    """On a CPU in bf16 (or under bf16 autocast, where the rotary embedding hands over fp32 queries)
    the decoder's attention is two matrix products and a softmax; its outputs and gradients are as
    close to an fp64 SDPA as bf16 SDPA's are. In fp32 it is SDPA itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=True)
    exact_inputs, mask = _attention_case(case, torch.float64)
    exact = sdpa_attention_forward(module, *exact_inputs, mask)[0]
    weights = torch.randn(exact.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact_grads = torch.autograd.grad((exact * weights).sum(), exact_inputs)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )

    def errors(way, dtype, autocast=False):
        inputs, _ = _attention_case(case, dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = way(module, *inputs, mask)[0]
        grads = torch.autograd.grad((out.double() * weights).sum(), inputs)
        assert out.shape == exact.shape
        return [(out.double() - exact).abs().max().item()] + [
            ((g.double() - e).norm() / e.norm()).item() for g, e in zip(grads, exact_grads, strict=True)
        ]

    sdpa_bf16 = errors(sdpa_attention_forward, torch.bfloat16)
    calls.clear()
    ours = errors(models.matmul_attention_forward, torch.bfloat16)
    in_autocast = errors(models.matmul_attention_forward, torch.float32, autocast=True)
    assert not calls  # neither took SDPA's kernel
    for mine, theirs in [(ours, sdpa_bf16), (in_autocast, sdpa_bf16)]:
        assert all(m <= 2 * t + 1e-3 for m, t in zip(mine, theirs, strict=True)), (mine, theirs)
    assert 0 < ours[0] < 0.03 * exact.abs().max().item()
    assert errors(models.matmul_attention_forward, torch.float32)[0] < 1e-5 and calls == [1]


def test_the_decoder_takes_matmul_attention_unless_a_recipe_names_one(tiny_home, tmp_path, monkeypatch):
    model, _ = load_model_and_processor(EarthShaderModelConfig())
    named, _ = load_model_and_processor(EarthShaderModelConfig(attn_implementation="sdpa"))
    assert model.config.text_config._attn_implementation == models.CPU_HALF_ATTENTION
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert named.config.text_config._attn_implementation == "sdpa"
    ids = torch.randint(
        0, model.config.text_config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)
    )
    padding = torch.ones_like(ids)
    padding[1, 25:] = 0
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    with torch.no_grad():
        exact = named(input_ids=ids, attention_mask=padding).logits
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(input_ids=ids, attention_mask=padding).logits.float()
            assert not calls
            theirs = named(input_ids=ids, attention_mask=padding).logits.float()
    assert calls == [1] * model.config.text_config.num_hidden_layers  # the named SDPA, once a layer
    real = padding.bool()
    error, sdpa_error = ((x - exact)[real].abs().max().item() for x in (ours, theirs))
    assert 0 < error <= 2 * sdpa_error + 1e-3, (error, sdpa_error)
    model.save_pretrained(tmp_path / "saved")
    assert models.CPU_HALF_ATTENTION not in (tmp_path / "saved" / "config.json").read_text()


def test_compiled_language_model_computes_what_the_eager_one_does_and_saves_the_same_names(
    tiny_home, tmp_path
):
    import torch

    if not models.has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on a machine with no GPU")
    model, _ = load_model_and_processor(EarthShaderModelConfig())
    decoder = model.get_decoder()
    names = set(model.state_dict())
    ids = torch.randint(0, model.config.text_config.vocab_size, (2, 40))
    with torch.no_grad():
        eager = model(input_ids=ids).logits
    assert models.compile_language_model(model)
    with torch.no_grad():
        compiled = model(input_ids=ids).logits
        longer = model(input_ids=torch.cat([ids, ids[:, :7]], dim=1)).logits  # another length
    assert decoder._compiled_call_impl is not None  # the decoder, in place: the model is the same object
    assert torch.allclose(compiled, eager, atol=1e-4) and eager.abs().max() > 0
    assert torch.allclose(longer[:, :40], eager, atol=1e-4)
    assert set(model.state_dict()) == names
    model.save_pretrained(tmp_path / "saved")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
