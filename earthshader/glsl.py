"""The shader dialect: Shadertoy's single-pass convention, checked and wrapped into a full program.

User code defines ``void mainImage(out vec4 fragColor, in vec2 fragCoord)`` and may read the Shadertoy
uniforms ``iResolution``, ``iTime``, ``iTimeDelta``, ``iFrame``, ``iFrameRate``, ``iMouse``, ``iDate``.
``fragCoord`` is in pixels, origin bottom-left, pixel centres at .5 (that is ``gl_FragCoord.xy``).

Code from a model is untrusted. :func:`check_source` rejects, with a reason, what no compiler should
see; the renderer still compiles what passes in a sandboxed worker process.
"""

from __future__ import annotations

import re
from typing import Any

MAX_SOURCE_BYTES = 32 * 1024
MAX_DEFINES = 256
# Loop iterations one pixel may run, all loops together. llvmpipe silently ends a loop after about
# 65k iterations and a GPU may hang on an endless one; a budget under both makes every driver agree.
MAX_LOOP_ITERATIONS = 20_000
# Object-like macro expansion bigger than this (in tokens) is a preprocessor bomb.
MAX_MACRO_EXPANSION = 200_000

GLSL_VERSION = "#version 330 core"

# Every Shadertoy uniform the dialect supports. iChannel samplers are not (single-pass, no inputs).
HEADER = f"""\
#version 330 core
#define ES_MAX_ITERATIONS {MAX_LOOP_ITERATIONS}
uniform vec3 iResolution;
uniform float iTime;
uniform float iTimeDelta;
uniform int iFrame;
uniform float iFrameRate;
uniform vec4 iMouse;
uniform vec4 iDate;
out vec4 es_FragColor;
int es_iterations = 0;
bool es_loop_guard() {{ es_iterations++; return es_iterations <= ES_MAX_ITERATIONS; }}
"""

# The output starts as NaN so that a pixel mainImage never writes is caught as invalid output
# instead of whatever the driver leaves in an uninitialised variable.
FOOTER = """
void main() {
    vec4 es_color = vec4(uintBitsToFloat(0x7fc00000u));
    es_color.a = 1.0;
    mainImage(es_color, gl_FragCoord.xy);
    // Alpha carries the pixel's loop iterations (1 + count): the renderer spots loops that ran past
    // the budget there.
    es_FragColor = vec4(es_color.rgb, 1.0 + float(es_iterations));
}
"""

# Vertex stage: one triangle that covers the viewport, no buffers needed.
VERTEX_SHADER = """\
#version 330 core
void main() {
    vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
    gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);
}
"""

_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)", re.S)
_DIRECTIVE_RE = re.compile(r"^[ \t]*#[ \t]*(version|extension|include)\b", re.M)
_DEFINE_RE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\([^)]*\))?[ \t]*(.*)$", re.M)
_MAIN_IMAGE_RE = re.compile(r"\bmainImage\s*\(")
_MAIN_IMAGE_OUT_RE = re.compile(r"(\bmainImage\s*\(\s*)out\b")
_USER_MAIN_RE = re.compile(r"\b\w+\s+main\s*\(")
_LOOP_HEAD_RE = re.compile(r"\b(for|while)\s*\(")
_TOKEN_RE = re.compile(r"\w+|\S")
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def strip_comments(code: str) -> str:
    """Remove ``//`` and ``/* */`` comments, keeping newlines so that line numbers still hold."""
    return _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), code)


def _macro_expansion_size(code: str) -> int:
    """The largest number of tokens any ``#define`` expands to, following nested macros."""
    bodies = {name: _TOKEN_RE.findall(body) for name, _, body in _DEFINE_RE.findall(code)}
    sizes: dict[str, int] = {}

    def size(name: str, depth: int = 0) -> int:
        if name in sizes:
            return sizes[name]
        if depth > 64:  # self-reference: the preprocessor stops there, so count it once
            return 1
        sizes[name] = 1  # guards recursion
        total = 0
        for tok in bodies[name]:
            total += size(tok, depth + 1) if tok in bodies and tok != name else 1
            if total > MAX_MACRO_EXPANSION:
                break
        sizes[name] = total
        return total

    return max((size(n) for n in bodies), default=0)


def check_source(code: str) -> str | None:
    """Return why ``code`` must not reach a compiler, or None if it may.

    >>> check_source("void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0); }") is None
    True
    >>> check_source("void main() {}")
    'no mainImage function'
    """
    if len(code.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return f"source larger than {MAX_SOURCE_BYTES // 1024} KB"
    if "\x00" in code:
        return "source contains NUL bytes"
    bare = strip_comments(code)
    if not bare.isascii():
        line = next(i for i, text in enumerate(bare.splitlines(), 1) if not text.isascii())
        return f"non-ASCII character outside comments (line {line})"
    directive = _DIRECTIVE_RE.search(bare)
    if directive:
        return f"#{directive.group(1)} is not allowed (the renderer sets the version)"
    if not _MAIN_IMAGE_RE.search(bare):
        return "no mainImage function"
    if _USER_MAIN_RE.search(bare):
        return "user-defined main() is not allowed (define mainImage instead)"
    defines = len(_DEFINE_RE.findall(bare))
    if defines > MAX_DEFINES:
        return f"more than {MAX_DEFINES} #defines ({defines})"
    if defines and _macro_expansion_size(bare) > MAX_MACRO_EXPANSION:
        return f"#define expansion larger than {MAX_MACRO_EXPANSION} tokens"
    return None


def _matching_paren(code: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == "(":
            depth += 1
        elif code[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def guard_loops(code: str) -> str:
    """Add the per-pixel iteration budget to every ``for`` and ``while`` (do-while too) condition.

    ``for (a; b; c)`` becomes ``for (a; (b) && es_loop_guard(); c)`` and ``while (b)`` becomes
    ``while ((b) && es_loop_guard())``; the guard counts iterations and fails past the budget, so the
    loop ends and the pixel is marked. Expects comment-free code; malformed headers are left for the
    compiler to report.
    """
    out, pos = [], 0
    for match in _LOOP_HEAD_RE.finditer(code):
        if match.start() < pos:
            continue
        open_at = match.end() - 1
        close_at = _matching_paren(code, open_at)
        if close_at < 0:
            break
        inner = code[open_at + 1 : close_at]
        if match.group(1) == "for":
            parts = inner.split(";")
            if len(parts) != 3:
                continue
            cond = parts[1].strip()
            parts[1] = f" ({cond}) && es_loop_guard()" if cond else " es_loop_guard()"
            inner = ";".join(parts)
        else:
            inner = f"({inner}) && es_loop_guard()"
        out.append(code[pos : open_at + 1] + inner)
        pos = close_at
    out.append(code[pos:])
    return "".join(out)


def prepare(code: str) -> str:
    """The user's code as the renderer compiles it: comments gone, loops guarded, ``inout`` output."""
    return _MAIN_IMAGE_OUT_RE.sub(r"\1inout", guard_loops(strip_comments(code)))


def wrap(code: str) -> str:
    """Wrap Shadertoy ``mainImage`` code into a complete GLSL 330 fragment shader.

    Comments go (line breaks stay, so compiler line numbers equal the user's own after ``#line 1``),
    loops get the iteration budget, and ``out`` on mainImage's first parameter becomes ``inout`` so
    that the NaN sentinel reaches it and an unwritten pixel shows as invalid output.
    """
    return wrap_prepared(prepare(code))


def wrap_prepared(body: str) -> str:
    """:func:`wrap` for code that has been through :func:`prepare` already."""
    return f"{HEADER}#line 1\n{body}\n{FOOTER}"


# Names that keep their meaning in every shader: GLSL keywords, types, built-in functions and
# variables, preprocessor words, and the Shadertoy uniforms. Everything else declared at global
# scope is private to its shader when several are combined into one program.
_SHARED_NAMES = frozenset(
    """
    void bool int uint float double vec2 vec3 vec4 dvec2 dvec3 dvec4 bvec2 bvec3 bvec4 ivec2 ivec3
    ivec4 uvec2 uvec3 uvec4 mat2 mat3 mat4 mat2x2 mat2x3 mat2x4 mat3x2 mat3x3 mat3x4 mat4x2 mat4x3
    mat4x4 sampler2D sampler3D samplerCube struct const in out inout uniform if else for while do
    break continue return discard switch case default true false precision highp mediump lowp flat
    smooth centroid invariant layout attribute varying define undef ifdef ifndef elif endif error
    pragma line defined radians degrees sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh
    pow exp log exp2 log2 sqrt inversesqrt abs sign floor trunc round roundEven ceil fract mod modf
    min max clamp mix step smoothstep isnan isinf floatBitsToInt floatBitsToUint intBitsToFloat
    uintBitsToFloat fma frexp ldexp packUnorm2x16 packSnorm2x16 packUnorm4x8 packSnorm4x8
    unpackUnorm2x16 unpackSnorm2x16 unpackUnorm4x8 unpackSnorm4x8 packHalf2x16 unpackHalf2x16
    length distance dot cross normalize faceforward reflect refract matrixCompMult outerProduct
    transpose determinant inverse lessThan lessThanEqual greaterThan greaterThanEqual equal notEqual
    any all not bitfieldExtract bitfieldInsert bitfieldReverse bitCount findLSB findMSB texture
    textureSize texelFetch textureLod textureGrad textureProj dFdx dFdy fwidth iResolution iTime
    iTimeDelta iFrame iFrameRate iMouse iDate es_loop_guard es_iterations ES_MAX_ITERATIONS
    """.split()
)
# Numbers first, so that the "e5" of "1e5" or the "f" of "1.0f" is never read as a name; a name
# after a dot (a field or a swizzle) is matched with its dot, so it can be left alone.
_TOKEN_RE = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[uUfF]?|\.\s*[A-Za-z_]\w*|[A-Za-z_]\w*|[{}]")


def _global_names(code: str) -> set[str]:
    """Identifiers that appear outside every ``{}`` block (declarations, parameters, macros)."""
    names, depth = set(), 0
    for token in _TOKEN_RE.findall(code):
        if token == "{":
            depth += 1
        elif token == "}":
            depth = max(0, depth - 1)
        elif depth == 0 and (token[0].isalpha() or token[0] == "_"):
            names.add(token)
    return {n for n in names if n not in _SHARED_NAMES and not n.startswith(("gl_", "GL_", "__"))}


def namespace(code: str, prefix: str) -> str:
    """Prefix every global name of prepared ``code`` (not fields after a dot, not numbers)."""
    names = _global_names(code)
    if not names:
        return code
    return _TOKEN_RE.sub(lambda m: prefix + m.group(0) if m.group(0) in names else m.group(0), code)


def combine(bodies: list[str]) -> str:
    """One fragment shader holding several prepared ``mainImage`` bodies; ``es_which`` picks one.

    Each body's global names get their own prefix, so helpers with the same name in two shaders do
    not collide. Compiling (and, on llvmpipe, JIT-compiling) once for many shaders is what makes
    batches fast. Line numbers inside a combined program are not the user's: callers fall back to
    single programs to report compile errors.
    """
    parts = [f"{HEADER}uniform int es_which;\n"]
    calls = []
    for k, body in enumerate(bodies):
        parts.append(namespace(body, f"es{k}_") + "\n")
        calls.append(
            f"    {'else ' if k else ''}if (es_which == {k}) es{k}_mainImage(es_color, gl_FragCoord.xy);"
        )
    main = FOOTER.replace("    mainImage(es_color, gl_FragCoord.xy);", "\n".join(calls))
    parts.append(main)
    return "".join(parts)


def _message_text(message: Any) -> str:
    content = message.get("content", "") if isinstance(message, dict) else message
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    if isinstance(completion, list | tuple):
        return "".join(
            _message_text(m)
            for m in completion
            if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"
        )
    return str(completion)


def extract_code(completion: Any) -> str:
    """The shader in a model's completion.

    The first fenced block labelled ``glsl`` wins; else the first fenced block of any label; else the
    whole text. An unterminated fence (generation cut at its token limit) runs to the end.

    >>> extract_code("A circle.\\n```glsl\\nvoid mainImage(out vec4 c, in vec2 p) {}\\n```")
    'void mainImage(out vec4 c, in vec2 p) {}'
    """
    text = completion_text(completion)
    blocks = _FENCE_RE.findall(text)
    for lang, body in blocks:
        if lang.lower() in ("glsl", "frag", "hlsl", "shader"):
            return body.strip()
    if blocks:
        return blocks[0][1].strip()
    return text.strip()


def count_code_blocks(completion: Any) -> int:
    """Number of fenced code blocks in a completion (an unterminated one counts)."""
    return len(_FENCE_RE.findall(completion_text(completion)))
