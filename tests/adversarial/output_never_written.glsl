// expect: invalid_output
void mainImage(out vec4 c, in vec2 p) {
    float unused = p.x;
}
