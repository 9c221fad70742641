"""Hand-written Triton kernels and their launchers: torch.Tensor in, torch.Tensor out.

Nothing here knows about the tape; ``tritonnet.functional`` joins these to it. Every launcher
validates its arguments, allocates outputs through ``runtime.empty`` and launches through
``runtime.launch``.
"""
