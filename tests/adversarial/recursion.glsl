// expect: compile_error
float f(float x) { return x < 1.0 ? x : f(x - 1.0); }
void mainImage(out vec4 c, in vec2 p) {
    c = vec4(f(p.x));
}
