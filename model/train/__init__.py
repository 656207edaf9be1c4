"""DAP training: the TR and RTL objectives, the training loop and its dev P@1."""
