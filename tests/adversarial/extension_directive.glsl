// expect: rejected
#extension GL_EXT_shader_texture_lod : enable
void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0); }
