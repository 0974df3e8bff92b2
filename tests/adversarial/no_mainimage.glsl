// expect: rejected
void render(out vec4 c, in vec2 p) {
    c = vec4(1.0);
}
