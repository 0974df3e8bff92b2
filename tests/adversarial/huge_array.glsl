// expect: crash
// expect-gpu: compile_error
void mainImage(out vec4 c, in vec2 p) {
    float a[100000000];
    a[int(p.x)] = 1.0;
    c = vec4(a[int(p.y)]);
}
