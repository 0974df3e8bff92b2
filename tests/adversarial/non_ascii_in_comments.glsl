// expect: ok
// © 2013 by someone — “fancy” comment über alles
/* 日本語 */
void mainImage(out vec4 c, in vec2 p) {
    c = vec4(p / iResolution.xy, 0.0, 1.0); // µ
}
