// expect: ok
void mainImage(out vec4 c, in vec2 p) {
    discard;
}
