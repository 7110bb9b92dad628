"""Chat: the template that renders conversations, SFT data, prompt templates."""
