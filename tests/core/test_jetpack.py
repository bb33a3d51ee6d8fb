"""The JetPack table: which line an L4T release and a CUDA driver mean."""
from __future__ import annotations

from mrcnn_edge.core.jetpack import JETPACK_LINES, line_for, parse_l4t_release

# /etc/nv_tegra_release of JetPack 6.2 (L4T 36.4.3), as the device writes it
TEGRA_RELEASE = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                 "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")


def test_the_l4t_release_and_the_driver_name_the_line():
    assert parse_l4t_release(TEGRA_RELEASE) == (36, 4, 3)
    assert parse_l4t_release("# R38 (release), REVISION: 2.0, GCID: 1") == (38, 2, 0)
    assert parse_l4t_release("Ubuntu 22.04") is None
    assert line_for((12, 6)).extra == "jetpack6"
    assert line_for((12, 9)).extra == "jetpack6"  # cuda-compat 12.9 on JetPack 6
    assert line_for((13, 0)).extra == "jetpack7" and line_for((13, 2)).extra == "jetpack72"
    assert line_for(None, (36, 4, 3)).extra == "jetpack6" and line_for(None, (38, 4, 0)).extra == "jetpack7"
    assert line_for(None, (36, 3, 0)) is None and line_for((11, 4)) is None  # JetPack 6.0 and 5: too old
    assert [ln.cuda for ln in JETPACK_LINES] == sorted(ln.cuda for ln in JETPACK_LINES)
