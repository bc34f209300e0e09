"""swiotlb-lab: boot real kernels in QEMU with forced bounce buffering and measure swiotlb under fio."""

__version__ = "0.1.0"
