// A raymarched, lit sphere over a checker floor: loops, normals, shading.
float map(vec3 p) { return min(length(p - vec3(0.0, 1.0, 0.0)) - 1.0, p.y); }
vec3 normalAt(vec3 p) {
    vec2 e = vec2(1e-3, 0.0);
    return normalize(vec3(map(p + e.xyy) - map(p - e.xyy), map(p + e.yxy) - map(p - e.yxy), map(p + e.yyx) - map(p - e.yyx)));
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (2.0 * fragCoord - iResolution.xy) / iResolution.y;
    vec3 ro = vec3(0.0, 1.5, -4.0), rd = normalize(vec3(uv, 1.5));
    float t = 0.0;
    for (int i = 0; i < 96; i++) { float d = map(ro + rd * t); if (d < 1e-3 || t > 30.0) break; t += d; }
    vec3 col = vec3(0.1, 0.12, 0.2);
    if (t < 30.0) {
        vec3 p = ro + rd * t, n = normalAt(p);
        float diff = max(dot(n, normalize(vec3(0.6, 0.8, -0.4))), 0.0);
        vec3 base = p.y < 1e-2 ? vec3(0.3 + 0.5 * mod(floor(p.x) + floor(p.z), 2.0)) : vec3(0.9, 0.4, 0.2);
        col = base * (0.15 + 0.85 * diff);
    }
    fragColor = vec4(col, 1.0);
}
