// expect: rejected
void mainImage(out vec4 c, in vec2 p) {
    float été = 1.0;
    c = vec4(été);
}
