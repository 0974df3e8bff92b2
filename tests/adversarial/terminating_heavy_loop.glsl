// expect: ok
void mainImage(out vec4 c, in vec2 p) {
    float x = 0.0;
    for (int i = 0; i < 5000; i++) { x += sin(float(i) + p.x) * 1e-4; }
    c = vec4(vec3(abs(x)), 1.0);
}
