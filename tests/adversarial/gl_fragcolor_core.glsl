// expect: compile_error
void mainImage(out vec4 c, in vec2 p) {
    gl_FragColor = vec4(1.0);
}
