"""Interop: Hugging Face folders (export and import) and GGUF files."""
