// expect: compile_error
void mainImage(out vec4 c, in vec2 p) {
    vec3 v = vec2(1.0);
    c = vec4(v, 1.0);
}
