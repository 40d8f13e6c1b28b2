"""Model weights in other forms than the checkpoint's: quantized components (``quantize``) and the GGUF
files of tests and simple conversions (``gguf_writer``)."""
