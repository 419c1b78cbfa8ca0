"""Training template: config, data, models, loop, checkpoints and logging, one module each."""
