"""Compiler evidence for the max-pool kernels without a GPU: compile each kernel for sm_90 exactly
as the launcher specialises it on the GPU for the benchmark shapes (the GPU's tiles, num_warps and
the divisibility-by-16 attributes Triton derives from real argument values), then report what
ptxas made of it: registers, shared memory, global load/store widths, barriers, instruction count.

Usage: TRITON_INTERPRET=0 python3 benchmarks/pool_sass.py [--dump DIR]
(``--dump`` keeps the PTX and SASS of every specialisation). Uses Triton's own launcher binder
(``create_function_from_signature``), present in triton 3.6; nothing is launched.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sass import FakeTensor, compile_like_runtime, fake_device, summarize  # noqa: E402  (sets TRITON_INTERPRET=0)

import torch  # noqa: E402

from tritonnet.kernels import pool as P  # noqa: E402

SHAPES = {"vgg": (256, 64, 32, 32), "lenet": (256, 6, 28, 28), "optable": (512, 64, 16, 16)}
# channels-last inputs (the NHWC kernels): the VGG's three pools as its channels-last step runs them
CL_SHAPES = {"vgg1_cl": (512, 32, 32, 32), "vgg2_cl": (512, 64, 16, 16), "vgg3_cl": (512, 128, 8, 8)}


def _channels_last(dtype, shape):
    n, c, h, w = shape
    return FakeTensor(dtype, shape, (h * w * c, 1, w * c, c))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", help="directory for each specialisation's PTX and SASS")
    args = parser.parse_args(argv)
    P._INTERPRETER_TILES = False  # the GPU's tiles and hints
    from tritonnet import runtime

    for shape_name, shape in {**SHAPES, **CL_SHAPES}.items():
        cl = shape_name in CL_SHAPES
        for k in (2, 3):
            for dtype in (torch.float32, torch.bfloat16):
                x = _channels_last(dtype, shape) if cl else FakeTensor(dtype, shape)
                geo = P.pool_geometry(shape, k, 2, channels_last=cl)
                make = _channels_last if cl else FakeTensor
                with fake_device(runtime) as recorder:
                    P.max_pool2d_forward(x, k, 2)
                    P.max_pool2d_backward(make(dtype, geo.output_shape), make(geo.argmax_dtype, geo.output_shape), geo)
                for kernel, kargs, constexprs in recorder.launches:
                    label = f"{kernel.__name__.replace('max_pool2d_', '').replace('_kernel', '')} {shape_name} " \
                            f"{k}x{k} {str(dtype)[6:]}"
                    summarize(label.replace(" ", "_"), compile_like_runtime(kernel, kargs, constexprs), args.dump)


if __name__ == "__main__":
    main()
