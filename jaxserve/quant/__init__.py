"""Weight quantization: int8 (per output channel) and int4 (group-wise) weights as pytrees, their matmuls, and the
rule that picks which parameters are quantized. The int8 KV cache lives in `jaxserve.kv_cache`."""

from .config import DEFAULT_INT4_GROUP_SIZE, QuantConfig, quantize_params
from .matmul import FLOAT32_MAX_ROWS, quantized_lookup, quantized_matmul
from .quantize import SCHEMES, dequantize, pack_nibbles, quantize, unpack_halves
from .tensor import QuantizedTensor, is_quantized, param_nbytes

__all__ = ["DEFAULT_INT4_GROUP_SIZE", "FLOAT32_MAX_ROWS", "QuantConfig", "QuantizedTensor", "SCHEMES", "dequantize",
           "is_quantized", "pack_nibbles", "param_nbytes", "quantize", "quantize_params", "quantized_lookup", "quantized_matmul",
           "unpack_halves"]
