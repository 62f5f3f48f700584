"""Quantization core: config, quantizer, packing, GPTQ, calibration statistics, importance maths.

Plain tensor functions; knows nothing of torch.fx or of fxquant's modules.
"""
