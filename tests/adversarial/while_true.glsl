// expect: timeout
void mainImage(out vec4 c, in vec2 p) {
    while (true) { }
    c = vec4(1.0);
}
