"""Models: the GPT/Llama decoder and its kernels, BERT, encoder-decoder, LSTM, LoRA, quantized layers."""
