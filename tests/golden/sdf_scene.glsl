// A circle minus a box, unioned with a ring: the kind of scene the data factory prints.
float sdCircle(vec2 p, float r) { return length(p) - r; }
float sdBox(vec2 p, vec2 b) { vec2 d = abs(p) - b; return length(max(d, 0.0)) + min(max(d.x, d.y), 0.0); }
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (2.0 * fragCoord - iResolution.xy) / iResolution.y;
    float d = max(sdCircle(uv - vec2(-0.3, 0.2), 0.45), -sdBox(uv - vec2(-0.1, 0.1), vec2(0.2)));
    d = min(d, abs(sdCircle(uv - vec2(0.5, -0.4), 0.3)) - 0.06);
    float a = 1.0 - smoothstep(0.0, 2.0 / iResolution.y, d);
    fragColor = vec4(vec3(a), 1.0);
}
