"""Models: any Qwen2-VL-family checkpoint (4-bit QLoRA or LoRA), and the embedded default ``tiny``.

``load_model_and_processor(cfg)`` is the one entry point. ``cfg.model_name_or_path`` is a local folder,
a Hugging Face Hub id, or ``"tiny"``: a ~5M-parameter Qwen2-VL built here from a config, with a
byte-level BPE tokenizer trained on GLSL and scene descriptions, so the whole pipeline runs offline
on a CPU through exactly the code path the 7B model takes. The tiny model is built deterministically
on first use into ``$EARTHSHADER_HOME/tiny-<hash>`` (default ``~/.cache/earthshader``) and from then
on loaded like any checkpoint, with ``from_pretrained``; ``earthshader init-model`` builds it on demand.

Facts that shaped the tiny build (each one failed loudly or silently before it was handled):
- ``Qwen2VLConfig``'s top-level ``image_token_id`` / ``video_token_id`` / ``vision_start_token_id`` /
  ``vision_end_token_id`` default to Qwen's 151k ids; with a small vocabulary they must be set.
- ``mrope_section`` (temporal, height, width) must sum to head_dim / 2.
- The vision merger projects to ``vision_config.hidden_size``, which must equal the text hidden size.
- Without torchvision, ``Qwen2VLProcessor`` cannot load its video processor; the tiny model ships an
  image-only processor class (:class:`Qwen2VLImageOnlyProcessor`, registered with ``AutoProcessor``) over
  the PIL/numpy image processor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AttentionInterface,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedConfig,
    Qwen2VLProcessor,
)
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    ALL_ATTENTION_FUNCTIONS,
    VisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
    is_flash_attention_requested,
)
from transformers.processing_utils import ProcessorMixin
from trl import ModelConfig

from earthshader.errors import ArgumentParser, UsageError

logger = logging.getLogger(__name__)

TINY = "tiny"

# Qwen's special tokens, in Qwen's order; the tiny tokenizer gives them the ids 0..N-1.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template without the default system prompt (tokens a tiny model need not spend).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Everything that decides the tiny model's bytes. Changing any value gives a new cache folder.
TINY_SPEC: dict[str, Any] = {
    "version": 6,
    "seed": 0,
    "vocab_size": 4096,
    "corpus_docs": 3000,
    "text": {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        # head_dim 64 -> 32 rotary pairs, split over (time, height, width)
        "mrope_section": [8, 12, 12],
    },
    "vision": {
        # 4 blocks, not 2 (version 6): after the same 1,000-step warmup a ridge probe reads the shape
        # count from the image tokens 88% right against 81% (bench/LEARNING.md, session 6)
        "depth": 4,
        "embed_dim": 128,
        "num_heads": 4,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # RGB plus the pixel's (x, y): see Qwen2VLCoordImageProcessor
        "in_channels": 5,
    },
    # 112 x 112 px -> 8 x 8 patches of 14 px -> 16 image tokens after the 2 x 2 merge
    "image_pixels": 112 * 112,
}


def _pin_threads() -> None:
    """Pin PyTorch's CPU threads: a thread per core in each of two processes oversubscribes small machines."""
    want = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or min(4, os.cpu_count() or 1)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class EarthShaderModelConfig(ModelConfig):
    """TRL's ``ModelConfig`` (name, dtype, LoRA, 4-bit) with what a vision-language recipe adds.

    ``model_name_or_path`` defaults to the embedded ``tiny`` model. With ``load_in_4bit`` the base is
    quantised to NF4 with double quantisation and bf16 compute (QLoRA); ``use_peft`` adds LoRA adapters.
    """

    model_name_or_path: str | None = field(
        default=TINY,
        metadata={"help": "'tiny' (the embedded default), a local model folder, or a Hugging Face Hub id."},
    )
    train_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Whether the vision tower trains: with LoRA, whether its linear layers get adapters; "
            "without, whether its weights are unfrozen."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest image area (pixels) after resizing; None keeps the processor's own."},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Largest image area (pixels) after resizing; bounds the image tokens per sample."},
    )
    local_files_only: bool = field(
        default=False,
        metadata={"help": "Never reach the Hub: load only local folders and cached checkpoints."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.load_in_4bit and not self.use_peft:
            raise UsageError(
                "load_in_4bit needs use_peft: a 4-bit base can only be trained through LoRA adapters"
            )


# --------------------------------------------------------------------------------------------------
# The image-only processor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor, which needs torchvision.

    Images and text behave exactly as in ``Qwen2VLProcessor``; videos are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class _ImageOnlyProcessorKey(PreTrainedConfig):
    """A config class used only as the registry key that lets ``AutoProcessor`` find the class above."""

    model_type = "earthshader_image_only_qwen2_vl"


AutoProcessor.register(_ImageOnlyProcessorKey, Qwen2VLImageOnlyProcessor, exist_ok=True)


class Qwen2VLCoordImageProcessor(Qwen2VLImageProcessorPil):
    """Qwen2-VL's image processor that appends each pixel's screen coordinates as two more channels.

    Qwen2-VL's vision tower has no absolute position embedding: its only positional signal is a 2D
    rotary embedding inside attention, which is relative. A pretrained tower has learned to live with
    that; a tiny tower trained from scratch has no way to put "where" into a token, and the language
    model reads image tokens through attention values, which carry no position either. Handing the
    tower the coordinates as input (CoordConv) fixes that without touching the model's code: the tiny
    model is a stock ``Qwen2VLForConditionalGeneration`` whose patch embedding has ``in_channels = 5``
    (``bench/LEARNING.md``, session 2).

    The two channels hold Shadertoy's ``uv = (2 * fragCoord - iResolution.xy) / iResolution.y`` at each
    pixel centre, x then y (y up), the very coordinates the shaders and the reasoning text use.
    """

    def __init__(self, coord_channels: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.coord_channels = coord_channels

    def patchify(self, image, patch_size: int, merge_size: int, temporal_patch_size: int):
        image = np.asarray(image, dtype=np.float32)
        if self.coord_channels:
            _, h, w = image.shape
            x = (2.0 * (np.arange(w, dtype=np.float32) + 0.5) - w) / h
            y = -(2.0 * (np.arange(h, dtype=np.float32) + 0.5) - h) / h  # row 0 is the top: largest y
            coords = np.stack([np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w))])
            image = np.concatenate([image, coords], axis=0)
        return super().patchify(image, patch_size, merge_size, temporal_patch_size)


AutoImageProcessor.register(
    _ImageOnlyProcessorKey, image_processor_classes={"pil": Qwen2VLCoordImageProcessor}, exist_ok=True
)


# --------------------------------------------------------------------------------------------------
# The tiny model

_GLSL_SNIPPETS = [
    "float sdCircle(vec2 p, float r) {\n    return length(p) - r;\n}\n",
    "float sdBox(vec2 p, vec2 b) {\n    vec2 d = abs(p) - b;\n    return length(max(d, 0.0)) + min(max(d.x, d.y), 0.0);\n}\n",
    "float sdAnnulus(vec2 p, float r, float w) {\n    return abs(length(p) - r) - w;\n}\n",
    "float sdSegment(vec2 p, vec2 a, vec2 b) {\n    vec2 pa = p - a, ba = b - a;\n"
    "    float h = clamp(dot(pa, ba) / dot(ba, ba), 0.0, 1.0);\n    return length(pa - ba * h);\n}\n",
    "float sdRoundBox(vec2 p, vec2 b, float r) {\n    vec2 q = abs(p) - b + r;\n"
    "    return min(max(q.x, q.y), 0.0) + length(max(q, 0.0)) - r;\n}\n",
    "float sdTriangle(vec2 p, float r) {\n    const float k = sqrt(3.0);\n    p.x = abs(p.x) - r;\n"
    "    p.y = p.y + r / k;\n    if (p.x + k * p.y > 0.0) p = vec2(p.x - k * p.y, -k * p.x - p.y) / 2.0;\n"
    "    p.x -= clamp(p.x, -2.0 * r, 0.0);\n    return -length(p) * sign(p.y);\n}\n",
    "float sdEllipse(vec2 p, vec2 ab) {\n    float k0 = length(p / ab);\n    float k1 = length(p / (ab * ab));\n"
    "    return k0 * (k0 - 1.0) / k1;\n}\n",
    "float opSmoothUnion(float a, float b, float k) {\n    float h = clamp(0.5 + 0.5 * (b - a) / k, 0.0, 1.0);\n"
    "    return mix(b, a, h) - k * h * (1.0 - h);\n}\n",
    "mat2 rot(float a) {\n    float c = cos(a), s = sin(a);\n    return mat2(c, -s, s, c);\n}\n",
]
_SHAPES = [
    "circle",
    "square",
    "box",
    "rounded box",
    "annulus",
    "ring",
    "segment",
    "capsule",
    "triangle",
    "ellipse",
]
_OPS = [("union", "min({a}, {b})"), ("minus", "max({a}, -{b})"), ("intersected with", "max({a}, {b})")]


def _number(rng: random.Random, lo: float = -1.0, hi: float = 1.0) -> str:
    return f"{rng.uniform(lo, hi):.2f}"


def _builtin_doc(rng: random.Random) -> str:
    """One document: a scene description, then a Shadertoy shader that draws it."""
    n = rng.randint(1, 4)
    parts, terms = [], []
    for i in range(n):
        shape = rng.choice(_SHAPES)
        x, y, r = _number(rng), _number(rng), _number(rng, 0.05, 0.6)
        parts.append(f"a {shape} at ({x}, {y}) with radius {r}")
        terms.append(
            f"sdCircle(p - vec2({x}, {y}), {r})" if i % 2 == 0 else f"sdBox(p - vec2({x}, {y}), vec2({r}))"
        )
    words = ["One", "Two", "Three", "Four"][n - 1]
    reasoning = f"{words} shape{'s' if n > 1 else ''}: " + ", ".join(parts) + "."
    d = terms[0]
    for term in terms[1:]:
        _, pattern = rng.choice(_OPS)
        d = pattern.format(a=d, b=term)
    helpers = "".join(rng.sample(_GLSL_SNIPPETS, k=2))
    code = (
        f"{helpers}\nvoid mainImage(out vec4 fragColor, in vec2 fragCoord) {{\n"
        "    vec2 p = (2.0 * fragCoord - iResolution.xy) / iResolution.y;\n"
        f"    float d = {d};\n"
        "    float a = 1.0 - smoothstep(0.0, 2.0 / iResolution.y, d);\n"
        "    fragColor = vec4(vec3(a), 1.0);\n}\n"
    )
    return f"{reasoning}\n```glsl\n{code}```"


def tiny_corpus(n: int, seed: int = 0) -> list[str]:
    """The tokenizer's training text: GLSL and scene descriptions, deterministic in ``(n, seed)``.

    Uses ``earthshader.scenes.sample_corpus`` (the real data's text) when that module provides it, plus
    built-in GLSL snippets and every two-decimal number in [-2, 2], so numbers such as ``0.25`` become
    single tokens.
    """
    rng = random.Random(seed)
    docs = [_builtin_doc(rng) for _ in range(n)]
    try:
        from earthshader.scenes import sample_corpus  # type: ignore[attr-defined]
    except ImportError:
        sample_corpus = None
    if sample_corpus is not None:
        docs += list(sample_corpus(n, seed))
    numbers = [f"{i / 100:.2f}" for i in range(-200, 201)]
    # Seen often enough, in both spacings, to win merges over rarer character pairs.
    docs += [" ".join(numbers) + " " + ", ".join(numbers) + " (" + ", ".join(numbers) + ")"] * 8
    docs += _GLSL_SNIPPETS * 20
    return docs


def _train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with Qwen's special tokens; numbers like ``-0.25`` stay one pre-token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Words with their leading space, numbers with their sign and decimal part whole (so "(-0.25" is
    # "(" then "-0.25": the model decides a value in one token, not its sign first and apart), runs
    # of punctuation, newlines.
    split = Regex(r" ?-?\d+(?:\.\d+)?| ?[A-Za-z_]\w*| ?(?:[^\s\w-]|-(?!\d))+|\n+| +(?!\S)| +")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_SPEC["text"]["max_position_embeddings"],
    )
    return fast


def _tiny_config(tokenizer):
    from transformers import Qwen2VLConfig

    text, vision = TINY_SPEC["text"], TINY_SPEC["vision"]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if sum(text["mrope_section"]) != head_dim // 2:
        raise ValueError(f"mrope_section {text['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"],
            "max_position_embeddings": text["max_position_embeddings"],
            "max_window_layers": text["num_hidden_layers"],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": text["rope_theta"],
                "mrope_section": text["mrope_section"],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision["depth"],
            "embed_dim": vision["embed_dim"],
            # the merger's output width: it must be the text model's hidden size
            "hidden_size": text["hidden_size"],
            "num_heads": vision["num_heads"],
            "mlp_ratio": vision["mlp_ratio"],
            "patch_size": vision["patch_size"],
            "spatial_merge_size": vision["spatial_merge_size"],
            "temporal_patch_size": vision["temporal_patch_size"],
            "in_channels": vision["in_channels"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def tiny_spec_hash() -> str:
    """Short hash of everything that decides the tiny model's bytes (the spec, the template, and the
    source of ``earthshader.scenes``, whose text the tokenizer learns from)."""
    import importlib.util

    spec = importlib.util.find_spec("earthshader.scenes")
    scenes_source = Path(spec.origin).read_bytes() if spec and spec.origin else b""
    payload = json.dumps({"spec": TINY_SPEC, "template": CHAT_TEMPLATE}, sort_keys=True).encode()
    return hashlib.sha256(payload + hashlib.sha256(scenes_source).digest()).hexdigest()[:10]


def earthshader_home() -> Path:
    return Path(os.environ.get("EARTHSHADER_HOME") or Path.home() / ".cache" / "earthshader")


def tiny_model_dir() -> Path:
    """Where the tiny model lives once built: ``$EARTHSHADER_HOME/tiny-<hash>``."""
    return earthshader_home() / f"tiny-{tiny_spec_hash()}"


def build_tiny_model(out: str | Path, overwrite: bool = False) -> Path:
    """Build the tiny Qwen2-VL, its tokenizer and its processor into ``out``; deterministic, offline.

    The folder is written under a temporary name and renamed into place, so a reader never sees a
    half-written model, and two processes building at once both end with the same complete folder.
    """
    from transformers import Qwen2VLForConditionalGeneration, set_seed

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    _pin_threads()
    tokenizer = _train_tokenizer(
        tiny_corpus(TINY_SPEC["corpus_docs"], TINY_SPEC["seed"]), TINY_SPEC["vocab_size"]
    )
    config = _tiny_config(tokenizer)
    set_seed(TINY_SPEC["seed"])
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    pixels = TINY_SPEC["image_pixels"]
    vision = TINY_SPEC["vision"]
    image_processor = Qwen2VLCoordImageProcessor(
        coord_channels=vision["in_channels"] == 5,
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=vision["patch_size"],
        merge_size=vision["spatial_merge_size"],
        temporal_patch_size=vision["temporal_patch_size"],
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "earthshader_tiny.json").write_text(
            json.dumps({"spec": TINY_SPEC, "hash": tiny_spec_hash()}, indent=2)
        )
        if out.exists() and overwrite:
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)  # atomic for an absent or empty target folder
        except OSError:
            if not (out / "config.json").exists():
                raise
            # another process finished the same build first; its folder is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built the tiny model (%d parameters) in %s", model.num_parameters(), out)
    return out


def ensure_tiny_model() -> Path:
    """The tiny model's folder, built on first use."""
    path = tiny_model_dir()
    if not (path / "config.json").exists():
        logger.info("building the embedded tiny model into %s (once)", path)
        build_tiny_model(path)
    return path


# --------------------------------------------------------------------------------------------------
# Loading


def resolve_model_path(
    name: str, local_files_only: bool = False, revision: str | None = None
) -> tuple[str, bool]:
    """Map ``tiny`` to its folder; return ``(path_or_id, local_only)`` for ``from_pretrained``.

    A Hub id is used from the cache when it is there; otherwise the Hub is asked once (unless offline),
    and an unreachable or unknown id is one clear ``UsageError``.
    """
    if name == TINY:
        return str(ensure_tiny_model()), True
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), True
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        raise UsageError(f"model folder {name!r} does not exist")
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return name, True
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise _not_found(name, OSError("offline"))
    # One quick question to the Hub, instead of from_pretrained's minutes of retries when it is unreachable.
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except Exception as exc:  # no network, unknown repository, gated model: all one line for the user
        raise _not_found(name, exc) from None
    return name, False


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise UsageError(f"unknown dtype {name!r} (use float32, bfloat16, float16 or auto)") from None


def load_processor(cfg: EarthShaderModelConfig, _resolved: tuple[str, bool] | None = None):
    """The checkpoint's processor, with the recipe's image size limits applied."""
    path, local_only = _resolved or resolve_model_path(
        cfg.model_name_or_path or TINY, cfg.local_files_only, cfg.model_revision
    )
    try:
        processor = AutoProcessor.from_pretrained(
            path, revision=cfg.model_revision, local_files_only=local_only
        )
    except OSError as exc:
        raise _not_found(cfg.model_name_or_path, exc) from None
    _apply_pixel_limits(processor, cfg)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def _apply_pixel_limits(processor, cfg: EarthShaderModelConfig) -> None:
    if cfg.min_pixels is None and cfg.max_pixels is None:
        return
    ip = processor.image_processor
    size = dict(ip.size) if ip.size is not None else {}
    if cfg.min_pixels is not None:
        size["shortest_edge"] = cfg.min_pixels
    if cfg.max_pixels is not None:
        size["longest_edge"] = cfg.max_pixels
    ip.size = size
    for key in ("min_pixels", "max_pixels"):
        if getattr(cfg, key) is not None and hasattr(ip, key):
            setattr(ip, key, getattr(cfg, key))


def _not_found(name: str | None, exc: Exception) -> UsageError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(
        f"cannot load model {name!r}: not a local folder, not in the Hugging Face cache, and not reachable "
        f"on the Hub ({first[:120]}); download it first (`hf download {name}`) or pass a local folder"
    )


def quantization_config(cfg: EarthShaderModelConfig):
    """NF4 with double quantisation and bf16 compute (QLoRA), or None; imports bitsandbytes only when asked."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError(
            "load_in_4bit/load_in_8bit needs bitsandbytes and a CUDA GPU: pip install 'earthshader[quant]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=_dtype(cfg.bnb_4bit_quant_storage) if cfg.bnb_4bit_quant_storage else None,
    )


def lora_config(cfg: EarthShaderModelConfig):
    """PEFT LoRA settings from the recipe; without ``train_vision_tower`` the vision tower gets no adapters."""
    from peft import LoraConfig

    targets: Any = cfg.lora_target_modules or "all-linear"
    if not cfg.train_vision_tower:
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if targets != "all-linear":
            names = [targets] if isinstance(targets, str) else list(targets)
        # a regex: the named projections anywhere but under the vision tower (`visual`)
        targets = rf"^(?!.*\bvisual\b).*\.({'|'.join(names)})$"
    return LoraConfig(
        task_type=cfg.lora_task_type,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=cfg.lora_modules_to_save,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        bias="none",
    )


# Qwen2-VL's checkpoints keep transformers 4's key names (``model.layers``, ``visual``); the loaded
# module names them ``model.language_model.layers`` and ``model.visual``. ``from_pretrained`` maps them,
# but ``Trainer``'s resume loads the file with ``load_state_dict(strict=False)``: no key matched, nothing
# was loaded, and a resumed run went on from the starting weights with the checkpoint's optimizer and
# step (bench/LEARNING.md, session 36).
_SAVED_KEY_NAMES = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!visual\.|language_model\.)"), "model.language_model."),
)


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: str | Path) -> bool:
    """Load a full-model checkpoint (``model.safetensors``) into ``model`` under the module's own names.

    Returns False where there is no such file or ``model`` is a PEFT model (adapters, shards: Trainer's
    own loading handles those). Raises ``UsageError`` where a saved tensor has no place in the model or a
    parameter of the model gets no tensor (weights tied to a loaded one excepted).
    """
    path = Path(checkpoint) / "model.safetensors"
    if not path.is_file() or hasattr(model, "peft_config"):
        return False
    from safetensors.torch import load_file

    own_state = model.state_dict()  # compile_language_model compiles in place: the names stay
    state = {}
    for key, tensor in load_file(str(path), device="cpu").items():
        name = key
        for pattern, new in _SAVED_KEY_NAMES if name not in own_state else ():
            name = pattern.sub(new, name)
        if name not in own_state:
            raise UsageError(f"checkpoint {checkpoint} does not fit the model: it holds {key!r}")
        state[name] = tensor
    missing = model.load_state_dict(state, strict=False).missing_keys
    loaded = {own_state[key].data_ptr() for key in state}
    untied = [key for key in missing if own_state[key].data_ptr() not in loaded]
    if untied:
        raise UsageError(f"checkpoint {checkpoint} does not fit the model: no weights for {untied[0]!r}")
    return True


class CheckpointWeightsMixin:
    """A ``Trainer`` mixin: resume loads a full checkpoint's weights by the module's names
    (:func:`load_checkpoint_weights`), other checkpoints as ``Trainer`` does."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = model if model is not None else self.model
        distributed = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if distributed or not load_checkpoint_weights(target, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


def load_model_and_processor(cfg: EarthShaderModelConfig, gradient_checkpointing: bool = False):
    """Load a Qwen2-VL-family model and its processor as the recipe says.

    Args:
        cfg: the model section of a recipe.
        gradient_checkpointing: prepare a 4-bit base for checkpointing (the trainer switches it on).

    Returns:
        ``(model, processor)``; the model is a ``PeftModel`` when ``cfg.use_peft``.

    Raises:
        UsageError: the checkpoint is neither local, cached nor reachable; or 4-bit without bitsandbytes.
    """
    _pin_threads()
    name = cfg.model_name_or_path or TINY
    quant = quantization_config(cfg)
    path, local_only = resolve_model_path(name, cfg.local_files_only, cfg.model_revision)
    processor = load_processor(cfg, (path, local_only))
    kwargs: dict[str, Any] = {
        "revision": cfg.model_revision,
        "local_files_only": local_only,
        "dtype": _dtype(cfg.dtype),
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["dtype"] = torch.bfloat16
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise _not_found(name, exc) from None
    patch_embed_as_linear(model)
    batch_vision_attention(model)
    if not cfg.attn_implementation:
        use_cpu_half_attention(model)

    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if cfg.use_peft:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
        if gradient_checkpointing and quant is None:
            # checkpointed blocks need an input that requires grad, or the adapters get none
            model.enable_input_require_grads()
    elif not cfg.train_vision_tower:
        freeze_vision_tower(model)
    return model, processor


def _linear_patch_embed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if type(self.proj) is not torch.nn.Conv3d:  # wrapped since (a LoRA adapter on it): its own forward
        return type(self).forward(self, hidden_states)
    weight = self.proj.weight  # (embed_dim, channels, temporal, patch, patch)
    flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
    return torch.nn.functional.linear(flat, weight.reshape(weight.shape[0], -1), self.proj.bias)


def patch_embed_as_linear(model) -> int:
    """Compute the vision tower's patch embedding as the matrix product it is; returns modules changed.

    Qwen2-VL embeds each patch with a ``Conv3d`` whose kernel equals its stride, applied to one patch
    at a time: a linear map of the flattened patch. On a CPU PyTorch runs that convolution several
    times slower than the same product as ``linear``, forward and above all backward
    (``bench/vision.py``). Only ``forward`` changes: the weights, their names and saved files stay
    the convolution's, so checkpoints load anywhere as before.
    """
    changed = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if (
            isinstance(proj, torch.nn.Conv3d)
            and hasattr(module, "temporal_patch_size")
            and tuple(proj.kernel_size) == tuple(proj.stride)
            and all(p == 0 for p in proj.padding)
            and proj.groups == 1
        ):
            module.forward = _linear_patch_embed_forward.__get__(module)
            changed += 1
    return changed


def _batched_vision_attention_forward(
    self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs
):
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if is_flash_attention_requested(self.config) or len(set(lengths)) != 1:  # the class's own paths
        return type(self).forward(
            self,
            hidden_states,
            cu_seqlens,
            position_embeddings=position_embeddings,
            max_seqlen=max_seqlen,
            **kwargs,
        )
    seq_length, chunks = hidden_states.shape[0], len(lengths)
    qkv = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(qkv[0], qkv[1], cos, sin)

    def by_chunk(states: torch.Tensor) -> torch.Tensor:  # (seq, heads, dim) -> (chunks, heads, length, dim)
        return states.reshape(chunks, lengths[0], self.num_heads, -1).transpose(1, 2)

    attention = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, eager_attention_forward
    )
    out, _ = attention(
        self,
        by_chunk(query),
        by_chunk(key),
        by_chunk(qkv[2]),
        attention_mask=None,
        scaling=self.scaling,
        dropout=0.0 if not self.training else self.attention_dropout,
        is_causal=False,
        **kwargs,
    )  # (chunks, length, heads, dim): the chunks in order, as the class's concatenation leaves them
    return self.proj(out.reshape(seq_length, -1).contiguous())


def batch_vision_attention(model) -> int:
    """Attend within all of a batch's pictures in one call where they have the same size; returns
    modules changed.

    Outside flash attention, Qwen2-VL's vision attention splits the batch's patches picture by picture
    and calls the attention once for each, then concatenates: a vision warmup step of 32 pictures
    makes 128 small SDPA calls forward and as many backward, with the splits' and concatenations'
    copies. Where every picture has the same number of patches (a synthetic stage's pictures all do),
    that is one batched call over ``(pictures, heads, patches, dim)``, the same numbers
    (``bench/vision.py``). Pictures of different sizes, and flash attention's packed path, take the
    class's own forward. Only ``forward`` changes: weights, names and saved files do not.
    """
    changed = 0
    for module in model.modules():
        if type(module) is VisionAttention:
            module.forward = _batched_vision_attention_forward.__get__(module)
            changed += 1
    return changed


# The text decoder's default attention (load_model_and_processor): SDPA, but on a CPU in bf16 or fp16 the
# two matrix products and a softmax of matmul_attention_forward
CPU_HALF_ATTENTION = "sdpa_matmul_on_cpu"


def matmul_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' SDPA attention, computed as two matrix products and a softmax for half precision on a CPU.

    PyTorch's CPU SDPA kernel in bf16 took 38 ms for a forward and backward of one decoder layer's
    attention over a mix batch (8 rows of 400 tokens, 4 heads of 64); the products and the softmax,
    with the scores in the input's dtype as transformers' eager attention has them and the softmax
    accumulated in fp32 and returned in bf16, took 27 ms, and a compiled mix step ran 1.07-1.24x faster
    (``bench/attention.py``): the products use the CPU's bf16 matrix units, and a few hundred
    positions' scores fit in memory. Elsewhere (a GPU, fp32, dropout,
    a position bias, a soft cap) this is ``sdpa_attention_forward`` itself. Takes SDPA's masks
    (``sdpa_mask``): boolean, True where a position attends, or None for plain causal attention.
    """
    # under autocast the rotary embedding hands over fp32 queries and keys that SDPA would cast down
    half = _cpu_half_dtype(query, value)
    special = (
        (dropout and module.training) or kwargs.get("position_bias") is not None or kwargs.get("softcap")
    )
    if half is None or special:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups).to(half), repeat_kv(value, groups).to(half)
    q_length = query.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is None and q_length > 1 and causal:
        # as sdpa_attention_forward: causal from the first key, keys past the queries dropped
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        attention_mask = torch.ones(q_length, q_length, dtype=torch.bool, device=query.device).tril()
    with torch.autocast("cpu", enabled=False):  # the softmax in half too: fp32 inside, half out
        scores = torch.matmul((query * scaling).to(half), key.transpose(2, 3))
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # added, not filled in: an addition's backward is free
                bias = torch.zeros(attention_mask.shape, dtype=half, device=query.device)
                attention_mask = bias.masked_fill_(~attention_mask, torch.finfo(half).min)
            scores = scores + attention_mask.to(half)
        out = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out.transpose(1, 2).contiguous(), None


def use_cpu_half_attention(model) -> bool:
    """Give the text decoder :func:`matmul_attention_forward` where it has SDPA; returns whether it changed.

    What it computes differs from SDPA only in bf16 or fp16 on a CPU; a recipe's ``attn_implementation``
    (``sdpa`` for PyTorch's kernel everywhere) keeps what it names. The choice is not saved with the model.
    """
    text = getattr(model.config, "text_config", None)
    if text is None or text._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation({"text_config": CPU_HALF_ATTENTION})
    return True


def _cpu_half_dtype(query: torch.Tensor, value: torch.Tensor) -> torch.dtype | None:
    """The half dtype an attention on a CPU computes in (its inputs', or autocast's), or None."""
    if query.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype in (torch.bfloat16, torch.float16) else None
    return value.dtype if value.dtype in (torch.bfloat16, torch.float16) else None


AttentionInterface.register(CPU_HALF_ATTENTION, matmul_attention_forward)
AttentionMaskInterface.register(CPU_HALF_ATTENTION, sdpa_mask)


def is_vision_parameter(name: str) -> bool:
    """Whether a Qwen2-VL parameter (a PEFT model's too) belongs to the vision tower or its merger."""
    return ".visual." in f".{name}"  # "visual.*" and "*.visual.*"


def freeze_vision_tower(model) -> int:
    """Stop training the vision tower and its merger (a PEFT model too); returns the tensors frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_vision_parameter(name) and param.requires_grad:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def has_cpp_compiler() -> bool:
    """Whether a C++ compiler is on the PATH: inductor needs one to compile for the CPU."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def compile_language_model(model) -> bool:
    """``torch.compile`` the text decoder in place, with dynamic shapes; returns whether it did.

    On the CPU a step of the tiny model is mostly small element-wise kernels (bf16 casts, RMSNorm,
    rotary embedding, SiLU), which inductor fuses: the demo's mix steps ran 1.28-1.40x faster for about 95 s
    of compilation on the 2-core machine (bench/sft.py ``--compile``). Compiling the decoder (not the
    whole model, whose image-token bookkeeping breaks the graph) keeps the parameter names, so
    checkpoints and saved models do not change. Inductor needs a C++ compiler on a machine with no
    GPU; without one the model is left as it is.
    """
    if not torch.cuda.is_available() and not has_cpp_compiler():
        logger.warning("no C++ compiler found: the language model runs uncompiled")
        return False
    model.get_decoder().compile(dynamic=True)
    return True


# Text configs' logit transforms that TRL's fused head applies and the compact head below does not
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def add_compact_lm_head(model, temperature: float = 1.0, cast_to_fp32: bool = False) -> bool:
    """Score only the labelled positions when TRL's fused LM head runs on a device without Triton.

    TRL's trainers patch ``model.forward`` (``trl.trainer.utils.add_fused_lm_head``) so that
    ``model(..., labels=..., fused_lm_head=True)`` returns per-token log-probabilities without the full
    logits. On a GPU its Triton kernel scores the positions that have a label. Elsewhere it scores every
    position, prompt and padding too, in about ten unfused passes over each ``(tokens, vocab)`` tile
    in fp32. The tiny model's vocabulary is 1,408 tokens, so those passes cost more than the decoder
    does; only about half of an SFT batch's positions carry a label.

    This wraps the patched forward once more. On a device without Triton it projects only the labelled
    positions and takes one ``log_softmax``: the same log-probabilities, entropy and top-1 flags, in
    the same ``FusedCausalLMOutput``. On CUDA/XPU devices, and for models whose configs transform
    their logits (softcapping, scales), it calls TRL's forward. ``temperature`` and ``cast_to_fp32``
    are what the trainer gave TRL's head (GRPO's sampling temperature, ``cast_lm_head_to_fp32``).
    Returns whether it wrapped ``model``. Call it after TRL's trainer is built: it finds the model TRL
    patched (the base model of a PEFT model) itself.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in _LOGIT_TRANSFORMS):
        return False
    fused_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, **kwargs):
        lm_head = self.get_output_embeddings()
        if (
            not fused_lm_head
            or labels is None
            or shift_labels is not None
            or lm_head.weight.device.type in ("cuda", "xpu")
            or kwargs.get("output_router_logits")
        ):
            return fused_forward(
                *args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels, **kwargs
            )
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        if cast_to_fp32:
            with torch.autocast(hidden.device.type, enabled=False):
                bias = None if lm_head.bias is None else lm_head.bias.float()
                logits = torch.nn.functional.linear(hidden[mask].float(), lm_head.weight.float(), bias)
        else:
            logits = lm_head(hidden[mask]).float()
        if temperature != 1.0:
            logits = logits / temperature
        log_p = torch.log_softmax(logits, dim=-1)
        picked = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        is_top1 = logits.detach().argmax(-1) == targets

        def per_token(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_token(picked)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=per_token(entropy),
            is_top1=per_token(is_top1),
            label_mask=mask,
        )

    model.trl_fused_forward = fused_forward  # for comparisons (tests, bench/lm_head.py)
    model.forward = types.MethodType(forward, model)
    return True


@functools.cache
def cpu_bf16_speedup(tokens: int = 2048, reps: int = 7) -> float:
    """How many times faster bf16 autocast runs the tiny decoder's matrix products than fp32, on this CPU.

    Whether ``bf16: true`` pays on a machine with no GPU depends on the CPU, not on the recipe: the
    demo's whole mix step ran 1.29x faster in bf16 on an Intel CPU with AMX, and 0.68-0.79x as fast
    (slower) on an Intel CPU with AVX-512 bf16 but no AMX (bench/sft.py, bench/RESULTS.md). This
    probe asks the CPU directly, in about half a second: a SiLU MLP of the decoder's widths on
    ``tokens`` tokens, forward and backward, fp32 and bf16 steps alternating, the ratio of their
    medians (above 1: bf16 is faster). On the no-AMX host it read 0.65-0.71, where the step read
    0.68-0.79. Computed once a process.
    """
    import statistics
    import time

    width, hidden = TINY_SPEC["text"]["hidden_size"], TINY_SPEC["text"]["intermediate_size"]
    generator = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, width))
    x = torch.randn(tokens, width, generator=generator)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = mlp(x)
        y.float().square().mean().backward()
        return time.perf_counter() - start

    for bf16 in (False, True, False, True):  # first calls pick and warm up the kernels
        step(bf16)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(reps):
        for bf16 in (False, True) if i % 2 == 0 else (True, False):
            times[bf16].append(step(bf16))
    return statistics.median(times[False]) / statistics.median(times[True])


# --------------------------------------------------------------------------------------------------
# CLI


def cli_main(argv: list[str]) -> int:
    """``earthshader init-model [--out DIR] [--overwrite]``: build the embedded tiny Qwen2-VL."""
    parser = ArgumentParser(prog="earthshader init-model", description=cli_main.__doc__)
    parser.add_argument("--out", default=None, help=f"folder to write (default: {tiny_model_dir()})")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out) if args.out else tiny_model_dir()
    if args.out is None and (out / "config.json").exists() and not args.overwrite:
        print(f"tiny model already built: {out}")
        return 0
    build_tiny_model(out, overwrite=args.overwrite)
    print(f"tiny model written to {out}")
    return 0
