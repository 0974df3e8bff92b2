// expect: timeout
void mainImage(out vec4 c, in vec2 p) {
    float x = 0.0;
    for (int i = 0; i < 2000000000; i++) { x += sin(float(i)); }
    c = vec4(x);
}
