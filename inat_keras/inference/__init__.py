"""A trained model at work: a checkpoint loaded with its class names, the forward pass, the test report. Training's
final test and every serving command use these."""
