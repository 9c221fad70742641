"""tritonnet: a small deep-learning framework made of hand-written Triton kernels."""
from . import runtime  # first: chooses GPU or interpreter before triton is imported
from .runtime import set_float32_matmul_precision, get_float32_matmul_precision
from .tape import Tensor, no_grad, is_grad_enabled
# ``tn.profile`` is the context manager; this binding shadows the submodule attribute of the same
# name, while ``from tritonnet.profile import ...`` still reaches the module (see its docstring).
from .profile import profile

__all__ = ["Tensor", "no_grad", "is_grad_enabled", "set_float32_matmul_precision",
           "get_float32_matmul_precision", "runtime", "profile"]
__version__ = "0.1.0"
