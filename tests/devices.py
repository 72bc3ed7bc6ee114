"""The devices tests run on: the CPU always, a CUDA GPU where there is one (else those cases skip, saying so).

    @pytest.mark.parametrize('device', DEVICES)       # cpu and cuda
    @pytest.mark.parametrize('device', CUDA_ONLY)     # a CUDA variant of a test that runs on the CPU elsewhere

Every CUDA case has 'cuda' in its test id, so `pytest -k cuda` selects them (benchmarks/gpu_check.sh does).
"""
import pytest
import torch

NO_CUDA = 'needs a CUDA GPU'
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
CUDA = pytest.param('cuda', marks=needs_cuda, id='cuda')
DEVICES = ['cpu', CUDA]
CUDA_ONLY = [CUDA]
