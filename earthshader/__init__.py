"""EarthShader: teach vision-language models to write the GLSL shaders that render an image."""

__version__ = "0.1.0"
