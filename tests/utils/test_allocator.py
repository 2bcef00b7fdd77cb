"""retain_freed_memory: training steps reuse freed memory instead of page-faulting it in again."""

import subprocess
import sys

import pytest

# Five SGD steps of a two-layer conv net on (8, 1, 256, 256): each layer's activation is 64 MiB,
# above glibc's 32 MiB mmap ceiling, like every full-resolution activation of a real training step.
PROBE = r"""
import resource, sys, torch
from ideal_monai.utils import retain_freed_memory
torch.set_num_threads(1)
applied = retain_freed_memory(sys.argv[1] == "on")
net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 3, padding=1))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.randn(8, 1, 256, 256)
def step():
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_training_steps_reuse_freed_memory():
    applied, retained = _faults("on")
    off, default = _faults("off")
    assert applied == "True" and off == "False"
    # glibc's default unmaps every large activation on free and faults it in again next step:
    # > 16,384 pages (64 MiB) per step; retained, the steps run on memory the heap already holds
    # (a region or two may still be faulted in once: 1-22,528 pages over repeated runs on a loaded
    # 2-core machine, against ~830,000 without it)
    assert default > 5 * 16_384
    assert retained < default / 20


def test_disabled_is_a_no_op():
    from ideal_monai.utils import retain_freed_memory

    assert retain_freed_memory(False) is False


# The resident-set helpers, in a fresh process (glibc's default allocator, so a freed 256 MiB buffer
# is unmapped): the peak sees the buffer, a reset after freeing it lowers the peak, and the
# process-wide peak keeps it.
RSS_PROBE = r"""
import numpy as np
from ideal_monai.utils.allocator import current_rss, malloc_trim, peak_rss, process_peak_rss, reset_peak_rss
before = current_rss()
buf = np.ones(256 * 2**20, dtype=np.uint8)
during = current_rss()
del buf
malloc_trim()
peak = peak_rss()
reset = reset_peak_rss()
print(before, during, peak, reset, peak_rss(), process_peak_rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status and clear_refs")
def test_rss_helpers_read_reset_and_keep_the_peak():
    out = subprocess.run([sys.executable, "-c", RSS_PROBE], capture_output=True, text=True, check=True).stdout.split()
    before, during, peak, reset, after_reset, process_peak = int(out[0]), int(out[1]), int(out[2]), out[3], int(out[4]), int(out[5])
    mib = 2**20
    # the kernel's RSS counters are cached per CPU: the two reads may differ by a few pages
    assert during - before > 250 * mib and peak > during - mib
    assert reset == "True" and after_reset < peak - 200 * mib
    assert process_peak >= peak
