"""Workloads: fio parameters (or a fio job file) and the fio command line they become."""

from __future__ import annotations

import configparser
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ConfigError

log = logging.getLogger(__name__)

RW_MODES = ("read", "write", "randread", "randwrite", "rw", "readwrite", "randrw", "trim", "randtrim")
IOENGINES = ("libaio", "io_uring", "psync", "sync", "pvsync", "pvsync2", "posixaio")
SIZE_RE = re.compile(r"^\d+[kKmMgG]?$|^\d+[kKmMgG]i?[bB]?$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Error-recovery experiments: what the lab does to the device under test while fio runs.
#   reset:      the guest writes /sys/class/nvme/nvme0/reset_controller (NVMe only)
#   io-timeout: the device's block-layer timeout is cut to 2 s and QEMU throttles its backend to
#               8 IOPS for FAULT_STALL_S seconds, so commands time out and the driver recovers (NVMe only)
#   unplug:     QMP device_del of the device (behind a PCIe root port), a hot-unplug
FAULTS = ("reset", "io-timeout", "unplug")
FAULT_DEVICES = {"reset": ("nvme",), "io-timeout": ("nvme",), "unplug": ("nvme", "virtio-blk")}
FAULT_STALL_S = 8
FAULT_IO_TIMEOUT_MS = 2000
# fio's JSON+ output carries per-job completion-latency histograms, so the lab
# can merge jobs exactly instead of averaging percentiles.
FIO_OUTPUT_FORMAT = "json+"


# What a job file may name as its target: the lab picks the disks (fio_argv sets these variables).
JOB_TARGETS = ("${LAB_DEVICE}", "${LAB_NEIGHBOUR}")


def check_job_file(path: Path) -> None:
    """Refuse a fio job file before any guest boots: fio's own parser on the host (``fio --parse-only``,
    unknown options and bad values included) and the lab's rules: every job reads and writes only the disks
    the lab names (``filename=${LAB_DEVICE}`` or ``${LAB_NEIGHBOUR}``), and has a runtime."""
    parser = configparser.ConfigParser(strict=False, allow_no_value=True, interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}: fio job file syntax error: {exc.line.strip()!r} comes before any [job] section"
        ) from exc
    except configparser.ParsingError as exc:
        line, text = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(f"{path}:{line}: fio job file syntax error: {text.strip()!r} is not option=value") from exc
    except configparser.Error as exc:
        raise ConfigError(f"{path}: fio job file syntax error: {exc}") from exc
    jobs = [name for name in parser.sections() if name != "global"]
    if not jobs:
        raise ConfigError(f"{path}: fio job file defines no job (need a [jobname] section besides [global])")
    shared = parser["global"] if parser.has_section("global") else {}
    for job in jobs:
        options = {**shared, **parser[job]}
        target = options.get("filename")
        if target is None:
            raise ConfigError(f"{path}: [{job}] names no filename; the lab picks the disk: filename=${{LAB_DEVICE}}")
        if target.strip() not in JOB_TARGETS:
            raise ConfigError(
                f"{path}: [{job}] filename={target} is not a disk the lab gives the job; use "
                "filename=${LAB_DEVICE} (the disk under test) or ${LAB_NEIGHBOUR}"
            )
        if "runtime" not in options:
            raise ConfigError(
                f"{path}: [{job}] has no runtime; the lab needs to know how long fio runs "
                "(runtime=10 with time_based=1)"
            )
    _fio_parse_only(path)


def _fio_parse_only(path: Path) -> None:
    """fio's own verdict on the file (host fio; Debian's is the guest image's version), skipped with a
    warning where the host has no fio."""
    import shutil
    import subprocess

    fio = shutil.which("fio")
    if fio is None:
        log.warning("fio is not installed on this host: %s checked by the lab's rules only", path)
        return
    env = {"PATH": "/usr/bin:/bin", **{name[2:-1]: "/dev/null" for name in JOB_TARGETS}}
    result = subprocess.run(
        [fio, "--parse-only", str(path)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        said = " ".join((result.stderr + result.stdout).split())
        raise ConfigError(f"{path}: fio refuses the job file: {said[:400]}")


@dataclass(frozen=True)
class Workload:
    """One fio run on the device under test."""

    name: str
    rw: str = "randread"
    bs: str = "4k"
    iodepth: int = 1
    numjobs: int = 1
    ioengine: str = "libaio"
    runtime_s: int = 10
    size: str = "256M"
    direct: bool = True
    hipri: bool = False  # polled completions (io_uring/pvsync2), for claim C5
    job_file: Path | None = None
    fault: str = ""  # an error-recovery event during fio (FAULTS), or "" for none
    fault_after_s: int = 3  # seconds into fio when the fault is injected

    def __post_init__(self) -> None:
        where = f"workload {self.name!r}"
        if not NAME_RE.match(self.name):
            raise ConfigError(f"{where}: name must match {NAME_RE.pattern} (letters, digits, _ . -)")
        if self.fault and self.fault not in FAULTS:
            raise ConfigError(f"{where}: fault = {self.fault!r} is not one of {', '.join(FAULTS)}")
        if self.fault and not 0 < self.fault_after_s < self.runtime_s:
            raise ConfigError(
                f"{where}: fault_after = {self.fault_after_s!r} must be seconds within the run time "
                f"(0 < fault_after < {self.runtime_s})"
            )
        if self.job_file is not None:
            if not self.job_file.is_file():
                raise ConfigError(f"{where}: job_file {self.job_file.resolve()} does not exist")
            check_job_file(self.job_file)
            return
        if self.rw not in RW_MODES:
            raise ConfigError(f"{where}: rw = {self.rw!r} is not one of {', '.join(RW_MODES)}")
        if self.ioengine not in IOENGINES:
            raise ConfigError(f"{where}: ioengine = {self.ioengine!r} is not one of {', '.join(IOENGINES)}")
        for key in ("bs", "size"):
            value = getattr(self, key)
            if not SIZE_RE.match(str(value)) or int(re.match(r"\d+", str(value)).group(0)) == 0:  # type: ignore[union-attr]
                raise ConfigError(f"{where}: {key} = {value!r} must be a positive size like 4k, 256k, 1M")
        for key, low, high in (("iodepth", 1, 4096), ("numjobs", 1, 256), ("runtime_s", 1, 86400)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{where}: {key} = {value!r} must be an integer in [{low}, {high}]")
        if self.hipri and self.ioengine not in ("io_uring", "pvsync2"):
            raise ConfigError(f"{where}: hipri needs ioengine io_uring or pvsync2, not {self.ioengine!r}")

    @property
    def timeout_s(self) -> float:
        """How long fio may take before the lab gives up on it (a fault adds its recovery time)."""
        return self.runtime_s * 2 + 30 + (FAULT_STALL_S + 30 if self.fault else 0)

    def fio_argv(
        self, device: str, output: str, job_file_in_guest: str | None = None, neighbour: str | None = None
    ) -> list[str]:
        common = ["fio", f"--output-format={FIO_OUTPUT_FORMAT}", f"--output={output}"]
        if self.job_file is not None:
            # Job files name the device under test as ${LAB_DEVICE}, a slow neighbour disk as ${LAB_NEIGHBOUR}.
            env = [f"LAB_DEVICE={device}", *([f"LAB_NEIGHBOUR={neighbour}"] if neighbour else [])]
            return ["env", *env, *common, job_file_in_guest or str(self.job_file)]
        argv = [
            *common,
            f"--name={self.name}",
            f"--filename={device}",
            f"--rw={self.rw}",
            f"--bs={self.bs}",
            f"--iodepth={self.iodepth}",
            f"--numjobs={self.numjobs}",
            f"--ioengine={self.ioengine}",
            f"--size={self.size}",
            f"--runtime={self.runtime_s}",
            "--time_based=1",
            f"--direct={int(self.direct)}",
            "--randrepeat=0",
            "--group_reporting=0",
        ]
        if self.hipri:
            argv.append("--hipri=1")
        return argv

    def describe(self) -> dict[str, object]:
        return {
            "workload": self.name,
            "rw": self.rw,
            "bs": self.bs,
            "iodepth": self.iodepth,
            "numjobs": self.numjobs,
            "ioengine": self.ioengine,
            "runtime_s": self.runtime_s,
            "size": self.size,
            "hipri": self.hipri,
            "job_file": str(self.job_file) if self.job_file else "",
            # Only set when used, so the IDs of cells without a fault stay as they were.
            **({"fault": self.fault, "fault_after_s": self.fault_after_s} if self.fault else {}),
        }
