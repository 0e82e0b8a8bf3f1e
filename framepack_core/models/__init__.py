"""The model set: the one component and variant vocabulary, finding, checking, sizing, loading and moving weights, the tiny test set, text encoding, precision and devices."""
