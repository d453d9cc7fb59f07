"""The language model, torch: loading, the motion vocabulary, prompts, constrained decoding, the
trace parser and the Engine that runs every request type."""
