"""The shader dialect: checks before compilation, code extraction, loop guards, namespacing."""

from __future__ import annotations

import re

import pytest

from earthshader import glsl

VALID = "void mainImage(out vec4 fragColor, in vec2 fragCoord) { fragColor = vec4(1.0); }"


def test_check_source_accepts_valid_code():
    assert glsl.check_source(VALID) is None


@pytest.mark.parametrize(
    "code, reason",
    [
        (VALID + "//" + "x" * (33 * 1024), "larger than 32 KB"),
        (VALID + "\x00", "NUL"),
        ("float caf\u00e9 = 1.0;\n" + VALID, "non-ASCII character outside comments (line 1)"),
        ("#version 300 es\n" + VALID, "#version"),
        ("  #  extension GL_OES_standard_derivatives : enable\n" + VALID, "#extension"),
        ('#include "x.glsl"\n' + VALID, "#include"),
        ("void main() { }", "no mainImage"),
        (VALID + "\nvoid main() { }", "user-defined main"),
        ("".join(f"#define D{i} {i}\n" for i in range(257)) + VALID, "more than 256 #defines"),
    ],
)
def test_check_source_rejects_with_reason(code, reason):
    assert reason in (glsl.check_source(code) or "")


def test_check_source_allows_non_ascii_in_comments():
    code = "// \u00a9 2024 \u2014 \u00fcber\n/* \u65e5\u672c */\n" + VALID + " // \u00b5"
    assert glsl.check_source(code) is None


def test_check_source_rejects_comment_hidden_main_only_when_real():
    assert glsl.check_source(VALID + "\n// void main() {}") is None
    assert "no mainImage" in glsl.check_source("// mainImage(\nvoid f() {}")


@pytest.mark.parametrize(
    "extra",
    [
        "layout(location = 0) out vec4 mine;\n",
        "out vec4 mine;\n",
        "layout(origin_upper_left) in vec4 gl_FragCoord;\n",
    ],
)
def test_check_source_rejects_an_output_of_the_shaders_own(extra):
    # it could take the renderer's output, and with it the NaN check and the loop budget
    assert "global out or layout" in glsl.check_source(extra + VALID)


def test_check_source_allows_out_parameters_on_any_line():
    code = "void f(\n    out vec4 c,\n    inout float d) { c = vec4(d); }\n" + VALID
    assert glsl.check_source(code) is None


def test_check_source_counts_operators_in_define_expansion():
    # 2 ** 16 copies of "x+": 131,072 tokens counting the operators, half of it without
    ops = "#define A0 x+\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 17))
    assert glsl._macro_expansion_size(ops) == 2**17


def test_check_source_catches_define_expansion_bomb():
    bomb = "#define A0 x\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 30))
    assert "expansion" in glsl.check_source(bomb + VALID)
    small = "#define A0 x\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 6))
    assert glsl.check_source(small + VALID) is None


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Reasoning.\n```glsl\nvoid mainImage() {}\n```\nDone.", "void mainImage() {}"),
        ("```c\nint a;\n```\n```glsl\nfloat b;\n```", "float b;"),
        ("```\nfloat c;\n```", "float c;"),
        (
            "A circle.\n```glsl\nvoid mainImage(out vec4 c, in vec2 p) {",
            "void mainImage(out vec4 c, in vec2 p) {",
        ),
        ("  void mainImage(out vec4 c, in vec2 p) {}  ", "void mainImage(out vec4 c, in vec2 p) {}"),
        ([{"role": "assistant", "content": "x\n```glsl\nfloat d;\n```"}], "float d;"),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": "```glsl\nfloat e;\n```"}]}],
            "float e;",
        ),
    ],
)
def test_extract_code_finds_the_shader(completion, expected):
    assert glsl.extract_code(completion) == expected


def test_count_code_blocks():
    assert glsl.count_code_blocks("a\n```glsl\nx\n```\nb") == 1
    assert glsl.count_code_blocks("```glsl\nx\n```\n```glsl\ny\n```") == 2
    assert glsl.count_code_blocks("no code") == 0


def test_guard_loops_rewrites_every_loop_form():
    code = "for(int i=0;i<3;i++){} for(;;){} do{}while(x>0); while (f(1) > 0) {}"
    out = glsl.guard_loops(code)
    assert out.count("es_loop_guard()") == 4
    assert "for(int i=0; (i<3) && es_loop_guard();i++)" in out
    assert "for(; es_loop_guard();)" in out
    assert "while((x>0) && es_loop_guard())" in out
    assert "while ((f(1) > 0) && es_loop_guard())" in out


def test_wrap_keeps_user_line_numbers():
    program = glsl.wrap("// one\nvoid mainImage(out vec4 c, in vec2 p) {\n  c = vec4(1.0);\n}")
    after = program.split("#line 1\n", 1)[1].splitlines()
    assert after[2].strip() == "c = vec4(1.0);"  # user line 3
    assert "inout vec4 c" in program and "void main()" in program


def test_namespace_prefixes_globals_not_fields_or_builtins():
    code = "#define R 0.5\nfloat x;\nfloat sd(vec2 p) { return length(p) - R + x; }\nvoid mainImage(inout vec4 c, in vec2 p) { c.x = sd(p.xy); }"
    out = glsl.namespace(code, "es3_")
    assert "#define es3_R 0.5" in out and "float es3_x;" in out
    assert "es3_sd(vec2 es3_p)" in out and "length(es3_p)" in out
    assert "es3_c.x = es3_sd(es3_p.xy)" in out  # fields after a dot keep their names
    assert "es3_length" not in out and "es3_vec2" not in out


def test_combine_holds_each_shader_once():
    a = glsl.prepare("float f() { return 1.0; }\n" + VALID)
    program = glsl.combine([a, a, a], dedupe=False)
    for k in range(3):
        assert f"es{k}_mainImage" in program and f"float es{k}_f()" in program
    assert "uniform int es_which;" in program


SHAPES = """float sdCircle(vec2 p, float r) { return length(p) - r; }
vec2 rotate(vec2 p, float a) { float c = cos(a), s = sin(a); return vec2(c * p.x + s * p.y, c * p.y - s * p.x); }
float sdBox(vec2 p, vec2 b) { vec2 d = abs(rotate(p, 0.3)) - b; return length(max(d, 0.0)); }
"""


def _shader(helpers: str, d: str) -> str:
    return glsl.prepare(helpers + f"void mainImage(out vec4 c, in vec2 p) {{ float d = {d}; c = vec4(d); }}")


def test_combine_compiles_identical_helpers_once():
    a = _shader(SHAPES, "sdCircle(p, 1.0)")
    b = _shader("// other comments, other spacing\n" + SHAPES.replace("; ", ";  "), "sdBox(p, vec2(2.0))")
    c = _shader(SHAPES.split("\n", 1)[0], "sdCircle(p, 3.0)")  # sdCircle alone
    program = glsl.combine([a, b, c])
    for name in ("sdCircle", "rotate", "sdBox"):
        assert len(re.findall(rf"\b\w+ esS\d+_{name}\(", program)) == 1, name  # one definition
        assert not re.search(rf"\bes\d_{name}\(", program), name
    for k in range(3):
        assert f"void es{k}_mainImage(" in program
    # A helper that only one shader defines stays that shader's own.
    alone = glsl.combine([a, _shader("float sdHex(vec2 p) { return p.x; }\n", "sdHex(p)")])
    assert "float es1_sdHex(" in alone and "esS" not in alone.split("float es1_sdHex(")[1].split("{")[0]


def test_combine_keeps_same_named_functions_with_different_bodies_apart():
    a = _shader("float f(vec2 p) { return 1.0; }\n", "f(p)")
    b = _shader("float f(vec2 p) { return 0.0; }\n", "f(p)")
    program = glsl.combine([a, b, a])
    assert program.count("return 1.0;") == 1 and program.count("return 0.0;") == 1
    assert "float es1_f(vec2 es1_p)" in program and "es1_f(es1_p)" in program
    shared = re.search(r"float (esS\d+_f)\(vec2 p\) \{ return 1.0; \}", program)[1]
    assert f"{shared}(es0_p)" in program and f"{shared}(es2_p)" in program


def test_combine_shares_no_helper_that_reads_its_shaders_globals():
    helper = "float g(vec2 p) { return K * p.x; }\n"
    a = _shader("const float K = 1.0;\n" + helper, "g(p)")
    b = _shader("const float K = 0.0;\n" + helper, "g(p)")
    program = glsl.combine([a, b])
    assert "esS" not in program
    assert "float es0_g(vec2 es0_p) { return es0_K" in program
    assert "float es1_g(vec2 es1_p) { return es1_K" in program
    # Nor one that calls a helper that differs between the shaders, nor one named before it is defined.
    c = _shader("float h() { return 1.0; }\nfloat g(vec2 p) { return h() * p.x; }\n", "g(p)")
    d = _shader("float h() { return 2.0; }\nfloat g(vec2 p) { return h() * p.x; }\n", "g(p)")
    assert "esS" not in glsl.combine([c, d])
    assert "esS" in glsl.combine([c, c])
    declared = _shader(
        "float h();\nfloat g(vec2 p) { return h() * p.x; }\nfloat h() { return 1.0; }\n", "g(p)"
    )
    assert "esS" not in glsl.combine([declared, declared])
    named_before = _shader("float a() { float h = 2.0; return h; }\nfloat h() { return 1.0; }\n", "a() + h()")
    program = glsl.combine([named_before, named_before])
    assert "esS" not in program and "float es0_h()" in program  # (a names h too: a conservative no)


def test_combine_shares_nothing_from_shaders_with_overloads_or_macros():
    overloads = "float f(float x) { return x; }\nvec2 f(vec2 x) { return x; }\n"
    a = _shader(overloads, "f(1.0) + f(p).x")
    b = _shader("float f(float x) { return x; }\n", "f(2.0)")
    program = glsl.combine([a, b, b])
    assert "float es0_f(float es0_x)" in program and "vec2 es0_f(vec2 es0_x)" in program
    assert re.search(r"float esS\d+_f\(float x\)", program)  # b's copies share theirs
    macro = _shader("#define ONE 1.0\nfloat f(float x) { return x; }\n", "f(ONE)")
    program = glsl.combine([macro, macro])
    assert "esS" not in program and "#define es0_ONE" in program


def test_combine_renames_names_reserved_for_the_program():
    a = _shader("", "float(es_which) + es1_x")
    program = glsl.combine([a, a])
    assert "float(es0_es_which) + es0_es1_x" in program


def test_combine_draws_groups_of_bodies_to_outputs():
    bodies = [_shader("", f"{k}.0") for k in range(10)]
    bodies[3] = glsl.prepare("void mainImage(out vec4 c, in vec2 p) { discard; }")
    groups = glsl.draw_groups(bodies)
    assert groups == [[0, 1, 2, 4, 5, 6, 7, 8], [3], [9]]
    assert glsl.draw_groups(bodies, max_outputs=1) == [[k] for k in range(10)]
    program = glsl.combine(bodies, groups=groups)
    assert "layout(location = 7) out vec4 es_out7;" in program and "es_out8" not in program
    assert "if (es_which == 1) {\n" in program and "es3_mainImage(es_color" in program
    assert program.count("; es_iterations = 0;") == 10  # every body counts its own loop iterations


@pytest.mark.parametrize(
    "code, ok",
    [
        ("int main() {}", False),
        ("int\n\t main (", False),
        ("xmain() {}", True),
        ("float y = 1.0;main();", True),
    ],
)
def test_check_source_finds_user_main_as_a_word(code, ok):
    assert (glsl.check_source(VALID + "\n" + code) is None) == ok


def test_prepare_matches_whole_words_only():
    code = "void mainImage(out vec4 c, in vec2 p) { xfor(1); for(;;){} _while(2); c = vec4(1.0); }"
    out = glsl.prepare(code)
    assert out.count("es_loop_guard") == 1 and "mainImage(inout vec4 c" in out
    assert glsl.prepare("void xmainImage(out vec4 c) {}") == "void xmainImage(out vec4 c) {}"
    assert glsl.check_source("void _mainImage(out vec4 c, in vec2 p) {}") == "no mainImage function"
