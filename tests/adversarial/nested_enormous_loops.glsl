// expect: timeout
void mainImage(out vec4 c, in vec2 p) {
    float x = 0.0;
    for (int i = 0; i < 100000; i++)
        for (int j = 0; j < 100000; j++) x += 1e-9;
    c = vec4(x);
}
