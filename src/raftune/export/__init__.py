"""Export stage: merged HF model -> GGUF through llama.cpp's own converter, read back and checked."""
