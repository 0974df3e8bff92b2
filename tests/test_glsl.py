"""The shader dialect: checks before compilation, code extraction, loop guards, namespacing."""

from __future__ import annotations

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
    program = glsl.combine([a, a, a])
    for k in range(3):
        assert f"es{k}_mainImage" in program and f"float es{k}_f()" in program
    assert "uniform int es_which;" in program
