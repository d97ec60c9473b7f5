"""Training, evaluation and the phantom generator; never imported by the daemon at run time."""
