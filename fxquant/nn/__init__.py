"""Quantized ``nn`` modules holding bit-packed integer weights, and their storage accounting."""
