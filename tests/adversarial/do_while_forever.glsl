// expect: timeout
void mainImage(out vec4 c, in vec2 p) {
    float x = 0.0;
    do { x += 1.0; } while (x > -1.0);
    c = vec4(x);
}
