// expect: compile_error
void mainImage(vec4 c) {
    c = vec4(1.0);
}
