// expect: crash
// expect-gpu: ok
void mainImage(out vec4 c, in vec2 p) {
    int a = -2147483648 / -1;
    c = vec4(float(a));
}
