"""Hypothesis strategies shared by the convolution test files."""
from hypothesis import strategies as st


@st.composite
def int_or_pair(draw, lo, hi):
    """An int or a pair of ints in [lo, hi]: how torch takes kernel_size, stride, padding, dilation."""
    a = draw(st.integers(lo, hi))
    return a if draw(st.booleans()) else (a, draw(st.integers(lo, hi)))


def pairs_of(value):
    return (value, value) if isinstance(value, int) else tuple(value)


@st.composite
def conv_options(draw, max_stride):
    """conv2d's stride, padding (ints, pairs, and "same"/"valid" where torch allows them),
    dilation and groups (1, 1 or 2), drawn."""
    stride = draw(int_or_pair(1, max_stride))
    padding = draw(st.sampled_from(["same", "valid"])) if stride in (1, (1, 1)) and draw(st.booleans()) \
        else draw(int_or_pair(0, 2))
    return dict(stride=stride, padding=padding, dilation=draw(int_or_pair(1, 2)),
                groups=draw(st.sampled_from([1, 1, 2])))
