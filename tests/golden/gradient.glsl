// Red grows left to right, green bottom to top: checks orientation and pixel centres.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    fragColor = vec4(uv, 0.25, 1.0);
}
