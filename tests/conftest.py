import os
import signal

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# A shell starts a background job (``make test &``, ``nohup``) with SIGINT ignored, and Python then
# keeps it ignored: the tests that deliver Ctrl-C (in this process or in the processes it spawns,
# which inherit the disposition) would see nothing. Restore Python's own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module: tiny models gain nothing from more, and on a shared
    2-core machine they only contend (the diffusers modules use it for every test)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def unet():
    """A tiny random unconditional UNet2DModel (2 channels, 8 x 8), built from config."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
