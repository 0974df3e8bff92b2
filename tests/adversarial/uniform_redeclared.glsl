// expect: compile_error
uniform float iTime;
void mainImage(out vec4 c, in vec2 p) {
    c = vec4(iTime);
}
