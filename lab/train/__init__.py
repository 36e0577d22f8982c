"""Training of the tokenizer: data, losses, loop. Imports the model; nothing imports it."""
