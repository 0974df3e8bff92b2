"""The shader dialect: Shadertoy's single-pass convention, checked and wrapped into a full program.

User code defines ``void mainImage(out vec4 fragColor, in vec2 fragCoord)`` and may read the Shadertoy
uniforms ``iResolution``, ``iTime``, ``iTimeDelta``, ``iFrame``, ``iFrameRate``, ``iMouse``, ``iDate``.
``fragCoord`` is in pixels, origin bottom-left, pixel centres at .5 (that is ``gl_FragCoord.xy``).

Code from a model is untrusted. :func:`check_source` rejects, with a reason, what no compiler should
see; the renderer still compiles what passes in a sandboxed worker process.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

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
int es_iterations = 0;
bool es_loop_guard() {{ es_iterations++; return es_iterations <= ES_MAX_ITERATIONS; }}
"""

# The renderer reads location 0. Pinning the output there means an output the user's code declares
# itself (which a macro can hide from check_source) fails to link at location 0, and anywhere else is
# never read: it cannot take the place of this one, with its NaN check and loop budget.
_OUTPUT = "layout(location = 0) out vec4 es_FragColor;\n"

# The output starts as NaN so that a pixel mainImage never writes is caught as invalid output
# instead of whatever the driver leaves in an uninitialised variable.
_NAN = "vec4(uintBitsToFloat(0x7fc00000u))"
FOOTER = f"""
void main() {{
    vec4 es_color = {_NAN};
    es_color.a = 1.0;
    mainImage(es_color, gl_FragCoord.xy);
    // Alpha carries the pixel's loop iterations (1 + count): the renderer spots loops that ran past
    // the budget there.
    es_FragColor = vec4(es_color.rgb, 1.0 + float(es_iterations));
}}
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
# Patterns that start with a literal are searched many times faster by Python's re than ones that
# start with \b or \w; where a word must start at the match, _word_starts checks it.
_MAIN_IMAGE_RE = re.compile(r"mainImage\s*\(")  # at a word start
_MAIN_IMAGE_OUT_RE = re.compile(r"(mainImage\s*\(\s*)out\b")  # at a word start
_MAIN_RE = re.compile(r"main\s*\(")  # after a word and white space: a user main()
_LOOP_HEAD_RE = re.compile(r"(for|while)\s*\(")  # at a word start
_MACRO_TOKEN_RE = re.compile(r"\w+|\S")
# Brackets, and the words that would declare a shader output of the user's own at the top level.
_OUTPUT_SCAN_RE = re.compile(r"[(){}]|\b(?:out|layout)\b")
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def _word_starts(code: str, at: int) -> bool:
    """Whether ``\\b`` holds before ``code[at]`` (a word character): nothing word-like before it."""
    return at == 0 or not (code[at - 1].isalnum() or code[at - 1] == "_")


def _user_main(code: str) -> bool:
    """Whether ``code`` holds ``\\w+\\s+main\\s*\\(``: a definition (or declaration) of main()."""
    for match in _MAIN_RE.finditer(code):
        at = before = match.start()
        while before > 0 and code[before - 1].isspace():
            before -= 1
        if before < at and not _word_starts(code, before):
            return True
    return False


def strip_comments(code: str) -> str:
    """Remove ``//`` and ``/* */`` comments, keeping newlines so that line numbers still hold."""
    return _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), code)


def _macro_expansion_size(code: str) -> int:
    """The largest number of tokens any ``#define`` expands to, following nested macros."""
    bodies = {name: _MACRO_TOKEN_RE.findall(body) for name, _, body in _DEFINE_RE.findall(code)}
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


def _declares_output(code: str) -> bool:
    """Whether ``code`` has ``out`` or ``layout`` outside every bracket: an output of its own, which
    could take the place of the renderer's (and with it the NaN check and the loop budget)."""
    depth = 0
    for match in _OUTPUT_SCAN_RE.finditer(code):
        token = match[0]
        if token in "({":
            depth += 1
        elif token in ")}":
            depth -= 1
        elif depth == 0:
            return True
    return False


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
    directive = _DIRECTIVE_RE.search(bare) if "#" in bare else None
    if directive:
        return f"#{directive.group(1)} is not allowed (the renderer sets the version)"
    if not any(_word_starts(bare, m.start()) for m in _MAIN_IMAGE_RE.finditer(bare)):
        return "no mainImage function"
    if _user_main(bare):
        return "user-defined main() is not allowed (define mainImage instead)"
    if _declares_output(bare):
        return "a global out or layout declaration is not allowed (write fragColor in mainImage)"
    defines = len(_DEFINE_RE.findall(bare)) if "#" in bare else 0
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


def has_loops(body: str) -> bool:
    """Whether a prepared body (:func:`prepare`) has a loop: :func:`guard_loops` marked every one."""
    return "es_loop_guard()" in body


def guard_loops(code: str) -> str:
    """Add the per-pixel iteration budget to every ``for`` and ``while`` (do-while too) condition.

    ``for (a; b; c)`` becomes ``for (a; (b) && es_loop_guard(); c)`` and ``while (b)`` becomes
    ``while ((b) && es_loop_guard())``; the guard counts iterations and fails past the budget, so the
    loop ends and the pixel is marked. Expects comment-free code; malformed headers are left for the
    compiler to report.
    """
    out, pos = [], 0
    for match in _LOOP_HEAD_RE.finditer(code):
        if match.start() < pos or not _word_starts(code, match.start()):
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
    code = guard_loops(strip_comments(code))
    return _MAIN_IMAGE_OUT_RE.sub(lambda m: m[1] + "inout" if _word_starts(code, m.start()) else m[0], code)


def wrap(code: str) -> str:
    """Wrap Shadertoy ``mainImage`` code into a complete GLSL 330 fragment shader.

    Comments go (line breaks stay, so compiler line numbers equal the user's own after ``#line 1``),
    loops get the iteration budget, and ``out`` on mainImage's first parameter becomes ``inout`` so
    that the NaN sentinel reaches it and an unwritten pixel shows as invalid output.
    """
    return wrap_prepared(prepare(code))


def wrap_prepared(body: str) -> str:
    """:func:`wrap` for code that has been through :func:`prepare` already."""
    return f"{HEADER}{_OUTPUT}#line 1\n{body}\n{FOOTER}"


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
_WORD = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[uUfF]?|\.\s*[A-Za-z_]\w*|[A-Za-z_]\w*"
# Those tokens and braces, for tracking the top level.
_TOKEN_RE = re.compile(_WORD + r"|[{}]")
# The same tokens, captured, so that re.split keeps them: text, token, text, ..., text.
_SPLIT_RE = re.compile(f"({_WORD})")
# What splits the top level into declarations and definitions.
_STRUCTURE_RE = re.compile(r"[{};]")
# Names the combined program introduces (es_which, es3_f, esS0_f): a shader's own use of one is
# renamed with the rest of its names, so it reaches neither another shader's names nor the dispatch.
_RESERVED_RE = re.compile(r"(?:es|ES)S?\d*_")
# Top-level declarations past which a body is namespaced as a whole and shares nothing: splitting
# costs about 30 us an item, and real shaders have tens.
MAX_ITEMS = 500
# A function definition's head: qualifiers and return type, name, parameters (no arrays returned).
_FUNCTION_HEAD_RE = re.compile(r"\s*(?:[A-Za-z_]\w*\s+)+([A-Za-z_]\w*)\s*\([^(){};]*\)\s*")


def _own_name(token: str) -> bool:
    """Whether a name token is one a shader can declare: not a keyword, built-in or uniform."""
    return token not in _SHARED_NAMES and not token.startswith(("gl_", "GL_", "__"))


def _is_name(token: str) -> bool:
    return token[0].isalpha() or token[0] == "_"


def _reserved(token: str) -> bool:
    return token[:2] in ("es", "ES") and _RESERVED_RE.match(token) is not None


def _global_names(code: str) -> set[str]:
    """Identifiers that appear outside every ``{}`` block (declarations, parameters, macros), and
    names reserved for the combined program wherever they appear."""
    names, depth = set(), 0
    for token in _TOKEN_RE.findall(code):
        if token == "{":
            depth += 1
        elif token == "}":
            depth = max(0, depth - 1)
        elif _is_name(token) and (depth == 0 or _reserved(token)):
            names.add(token)
    return {n for n in names if _own_name(n)}


def _rename(parts: list[str], get) -> str:
    """Join :data:`_SPLIT_RE` parts, each token replaced by ``get(token, token)``."""
    parts = parts.copy()
    parts[1::2] = map(get, parts[1::2], parts[1::2])
    return "".join(parts)


def namespace(code: str, prefix: str) -> str:
    """Prefix every global name of prepared ``code`` (not fields after a dot, not numbers)."""
    names = _global_names(code)
    if not names:
        return code
    return _rename(_SPLIT_RE.split(code), {n: prefix + n for n in names}.get)


class _Item(NamedTuple):
    """A top-level declaration or definition of a prepared body."""

    parts: list[str]  # its text split by _SPLIT_RE
    names: set[str]  # every name token in it
    function: str | None  # the function it defines, if it is a function definition


class _Function(NamedTuple):
    """A top-level function definition that may be shared with other shaders of a batch."""

    item: int  # index in the body's items
    name: str
    text: str  # whitespace normalised
    calls: tuple[str, ...]  # the shader's functions it names, all shareable and defined before it


class _Body(NamedTuple):
    names: set[str]  # its global names, as _global_names finds them
    items: list[_Item]  # its top-level declarations and definitions, in order
    own: set[str]  # every name it uses that a shader can declare
    reserved: set[str]  # the names among those reserved for the combined program


def _parse(body: str) -> _Body | None:
    """Prepared ``body`` split into top-level items, with its names; None where it has preprocessor
    lines or line continuations, braces that do not balance, or more than MAX_ITEMS items."""
    if "#" in body or "\\" in body:
        return None
    bounds = []  # (start, start of the block or -1, end)
    depth = start = head_end = 0
    for match in _STRUCTURE_RE.finditer(body):
        char = match[0]
        if char == "{":
            if depth == 0:
                head_end = match.start()
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                bounds.append((start, head_end, match.end()))
                start = match.end()
            elif depth < 0:
                return None
        elif depth == 0:
            bounds.append((start, -1, match.end()))
            start = match.end()
        if len(bounds) > MAX_ITEMS:
            return None
    if depth:
        return None
    bounds.append((start, -1, len(body)))
    top: set[str] = set()  # tokens outside every block
    spans = []
    for start, head_end, end in bounds:
        parts = _SPLIT_RE.split(body[start:end])
        tokens = set(parts[1::2])
        if head_end < 0:
            top |= tokens
            function = None
        else:
            top.update(_TOKEN_RE.findall(body, start, head_end))
            head = _FUNCTION_HEAD_RE.fullmatch(body, start, head_end)
            function = head[1] if head else None
        spans.append((parts, tokens, function))
    every = set().union(*(tokens for _, tokens, _ in spans))
    names = {t for t in every if _is_name(t)}  # not numbers or fields
    own = {n for n in names if _own_name(n)}
    reserved = {n for n in own if _reserved(n)}
    items = [_Item(parts, tokens & names, function) for parts, tokens, function in spans]
    return _Body((top & own) | reserved, items, own, reserved)


def _shareable(body: _Body) -> list[_Function]:
    """The function definitions of ``body`` that may be shared with other shaders.

    A function may be shared when nothing outside it can change its meaning: it is the only
    top-level declaration of its name, and nothing before it names it; it names no global variable,
    constant, struct or prototype of its shader, nothing reserved for the combined program, and of
    the shader's functions only shareable ones defined before it. Overloads share nothing.
    """
    defined = [item.function for item in body.items if item.function is not None]
    functions = set(defined)
    if len(functions) < len(defined) or not functions <= body.own:
        return []  # overloads, or a built-in redefined
    blocked = set().union(*(item.names for item in body.items if item.function is None))
    seen: set[str] = set()
    ok: set[str] = set()
    shareable = []
    for k, item in enumerate(body.items):
        name = item.function
        if name is not None and name != "mainImage" and name not in seen:
            mine = item.names & body.own
            calls = mine & functions
            calls.discard(name)
            if calls <= ok and not mine & blocked and not mine & body.reserved:
                ok.add(name)
                text = " ".join("".join(item.parts).split())
                shareable.append(_Function(k, name, text, tuple(sorted(calls))))
        seen |= item.names
    return shareable


# Bodies one draw of a combined program renders at once, one colour attachment each (GL 3.3 promises
# 8 draw buffers; llvmpipe has 8).
MAX_OUTPUTS = 8


def draw_groups(bodies: list[str], max_outputs: int = MAX_OUTPUTS) -> list[list[int]]:
    """Which bodies one draw of their combined program renders together, in drawing order.

    Drawn alone:
    - a body that may ``discard`` (or paste tokens together, which could spell it): discarding a
      pixel drops every output of the draw;
    - a body with loops: llvmpipe stops a shader invocation's loops after 65,535 iterations in all,
      silently, so loops of bodies drawn together would cut each other short (four bodies of 19,000
      iterations let a fifth run only 8,535 and pass the loop budget unseen).

    The rest go in order, ``max_outputs`` a draw.
    """
    groups, run = [], []
    for k, body in enumerate(bodies):
        if "discard" in body or "##" in body or has_loops(body):
            groups.append([k])
            continue
        run.append(k)
        if len(run) == max_outputs:
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    return sorted(groups)


def combine(bodies: list[str], dedupe: bool = True, groups: list[list[int]] | None = None) -> str:
    """One fragment shader holding several prepared ``mainImage`` bodies.

    The uniform ``es_which`` picks a group of bodies (``groups``, default: one body a group; see
    :func:`draw_groups`); the draw runs each body of that group and writes body ``j`` of the group to
    output ``j`` (``layout(location = j)``): its colour, and in alpha 1 + its own loop iterations.
    llvmpipe runs every branch of a program for every pixel (masked, not skipped), so a draw costs
    about the same whichever group it picks: drawing eight bodies a draw instead of one makes the
    draws of a batch several times cheaper.

    Each body's global names get their own prefix, so helpers with the same name in two shaders do
    not collide. With ``dedupe``, a helper function that several bodies define identically (the same
    text, calling helpers that are the same too; see :func:`_shareable`) is compiled once, named
    ``esS<id>_<name>``: the GLSL front end's time grows with the program's length. Compiling (and, on
    llvmpipe, JIT-compiling) once for many shaders is what makes batches fast. Line numbers inside a
    combined program are not the user's: callers fall back to single programs to report compile
    errors.
    """
    if groups is None:
        groups = [[k] for k in range(len(bodies))]
    parsed = [_parse(body) for body in bodies]
    ids: dict[tuple, int] = {}  # (text, its calls with their ids) -> id
    users: dict[int, int] = {}  # id -> how many bodies define it
    keyed: list[list[tuple[_Function, int]]] = []
    for body in parsed:
        known: dict[str, int] = {}
        mine = []
        for f in _shareable(body) if dedupe and body is not None else []:
            key = (f.text, tuple((c, known[c]) for c in f.calls))
            known[f.name] = fid = ids.setdefault(key, len(ids))
            users[fid] = users.get(fid, 0) + 1
            mine.append((f, fid))
        keyed.append(mine)

    shared: dict[int, str] = {}  # id -> the function as the combined program holds it
    namespaced = []
    for k, (body, mine) in enumerate(zip(parsed, keyed, strict=True)):
        if body is None:
            namespaced.append(namespace(bodies[k], f"es{k}_") + "\n")
            continue
        items = body.items
        renames = {f.name: f"esS{fid}_{f.name}" for f, fid in mine if users[fid] > 1}
        for f, fid in mine:
            if f.name in renames and fid not in shared:
                own = {n: renames[n] for n in (f.name, *f.calls)}
                shared[fid] = _rename(items[f.item].parts, own.get)
        cut = {f.item for f, _ in mine if f.name in renames}
        get = ({n: f"es{k}_{n}" for n in body.names} | renames).get
        namespaced.append(
            "".join("\n" if i in cut else _rename(item.parts, get) for i, item in enumerate(items))
        )
        namespaced.append("\n")

    outputs = max(len(group) for group in groups)
    parts = [HEADER, "uniform int es_which;\n"]
    parts += [f"layout(location = {j}) out vec4 es_out{j};\n" for j in range(outputs)]
    parts += [shared[fid] + "\n" for fid in sorted(shared)]  # ids grow with use: callees come first
    parts += namespaced
    parts.append("void main() {\n    vec4 es_color;\n")
    for g, group in enumerate(groups):
        parts.append(f"    {'else ' if g else ''}if (es_which == {g}) {{\n")
        for j, k in enumerate(group):
            # As in FOOTER: NaN until written, and each body's own iteration count and budget.
            parts.append(
                f"        es_color = {_NAN}; es_color.a = 1.0; es_iterations = 0;\n"
                f"        es{k}_mainImage(es_color, gl_FragCoord.xy);\n"
                f"        es_out{j} = vec4(es_color.rgb, 1.0 + float(es_iterations));\n"
            )
        parts.append("    }\n")
    parts.append("}\n")
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
