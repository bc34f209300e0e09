"""The host inventory: a shipped example that loads, and errors that name file, line, host and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.hosts import load_hosts

EXAMPLE = Path(__file__).resolve().parents[2] / "lab" / "hosts.example.toml"


def test_the_shipped_example_loads() -> None:
    hosts = load_hosts(EXAMPLE)
    snp, tdx = hosts["snp1"], hosts["tdx1"]
    assert (snp.address, snp.port, snp.slots, snp.platforms) == ("snp1.lab.example", 22, 4, ("kvm", "sev-snp"))
    assert snp.firmware == {"sev-snp": "/usr/local/share/qemu/OVMF.amdsev.fd"}
    assert (tdx.address, tdx.port, tdx.platforms) == ("tdx1.lab.example", 2222, ("kvm", "tdx"))


GOOD = '[hosts.a]\naddress = "10.0.0.1"\nplatforms = ["kvm"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            GOOD + 'colour = "red"\n', ":4: hosts.a.colour: unknown key 'colour'; valid keys: address", id="unknown-key"
        ),
        pytest.param('[hosts.a]\nuser = "x"\n', ":1: hosts.a: address is required", id="no-address"),
        pytest.param(
            '[hosts.a]\naddress = "h:99999"\n', ":2: hosts.a.address: 'h:99999' has no valid port", id="bad-port"
        ),
        pytest.param(GOOD + "slots = 0\n", ":4: hosts.a.slots: 0 must be an integer from 1 to 256", id="zero-slots"),
        pytest.param(
            '[hosts.a]\naddress = "h"\nplatforms = ["sev"]\n',
            ":3: hosts.a.platforms: unknown platform 'sev'; valid: tcg, kvm, sev-snp, tdx",
            id="bad-platform",
        ),
        pytest.param(
            '[hosts.a]\naddress = "h"\nplatforms = ["sev-snp"]\n',
            ":3: hosts.a.platforms: platform 'sev-snp' needs firmware.sev-snp",
            id="snp-without-firmware",
        ),
        pytest.param(GOOD + "cbitpos = 7\n", ":4: hosts.a.cbitpos: 7 must be the C-bit position", id="bad-cbit"),
        pytest.param("[hosts]\n", ": no hosts; add a [hosts.NAME] table", id="empty"),
        pytest.param("[host.a]\n", ": unknown table [host]; valid: [hosts.NAME]", id="typo-table"),
        pytest.param("[hosts.a\n", ":1: malformed TOML: Expected ']'", id="malformed"),
        pytest.param(
            '[hosts.a]\naddress = "h"\nplatforms = ["tcg"\nslots = 2\n',
            ":3: malformed TOML: the array of 'platforms' that starts on line 3 is not closed",
            id="unclosed-array",  # the parser notices on line 4; the mistake is on line 3
        ),
        pytest.param(
            '[hosts.a]\naddress = "snp1 lab example"\n',
            ":2: hosts.a.address: 'snp1 lab example' is not a host name or IP address",
            id="address-with-spaces",
        ),
        pytest.param(
            GOOD + 'host_key = "not a key"\n',
            ":4: hosts.a.host_key: 'not a key' is not an SSH public key line",
            id="host-key-not-a-key",
        ),
        pytest.param(
            GOOD + 'host_key = "ssh-ed25519 AAAAC3NzaC1yc2E="\n',
            ":4: hosts.a.host_key: 'ssh-ed25519 AAAAC3NzaC1yc2E=' is not",
            id="host-key-of-another-type",
        ),
        pytest.param(
            GOOD + '[hosts.b]\naddress = "10.0.0.1:22"\n',
            ":5: hosts.b.address: 10.0.0.1:22 is hosts.a's too",
            id="one-address-twice",
        ),
    ],
)
def test_bad_inventories_name_file_line_host_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_hosts(path)
    assert f"{path}{message}" in str(error.value)


def test_a_real_host_key_and_a_second_port_on_one_machine_are_accepted(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINLgiG/MEywXhGgsmQXg088CHjguP8VP5IthkNkiI7qw lab-test"
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(GOOD + f'host_key = "{key}"\n[hosts.b]\naddress = "10.0.0.1:2222"\n')
    hosts = load_hosts(inventory)
    assert hosts["a"].host_key == key and (hosts["b"].address, hosts["b"].port) == ("10.0.0.1", 2222)
