// expect: invalid_output
void mainImage(out vec4 c, in vec2 p) {
    if (p.x < iResolution.x * 0.5) c = vec4(1.0);
}
