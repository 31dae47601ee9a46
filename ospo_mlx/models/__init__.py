"""Model loading: mlx-lm models, the embedded SmolLM2 default, GGUF import."""
