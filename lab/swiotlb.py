"""What the lab takes as given about the kernel's swiotlb (REFERENCE.md §3): the units every room counts in."""

from __future__ import annotations

SLAB_BYTES = 2048  # one slab (IO_TLB_SIZE): pools and usage are counted in these
MIN_POOL_SLABS = 512  # the kernel's minimum swiotlb pool is 1 MiB
MAX_MAPPING_SLABS = 128  # IO_TLB_SEGSIZE: the largest single mapping, and the slots of one area at least
