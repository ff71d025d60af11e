"""Ascend rank tables (the RANK_TABLE_FILE JSON HCCL reads): generate one for a server, list a server's ranks.

    python -m unet_perf.rank_table generate --devices 8 --output rank_table_8p.json [--server_id IP]
    python -m unet_perf.rank_table ranks --rank_table FILE --rank_size 8 [--server_index 0]   # "rank device" lines

Layout (version 1.0, as the ModelZoo 8p scripts ship it): {"server_count": "1", "server_list": [{"server_id": ip,
"device": [{"device_id": "0", "device_ip": ip, "rank_id": "0"}, ...]}], "status": "completed", "version": "1.0"}.
Ranks are global: rank = server_index * devices_per_server + local device index; ASCEND_DEVICE_ID stays local.
Device IPs (the NICs HCCL really uses) come from `hccn_tool -i <device> -ip -g` (on PATH or in the driver's tools
folder), else from `address_<device>=` in /etc/hccn.conf (what hccn_tool configured), as MindSpore's hccl_tools.py
reads them. Without either the generator refuses: addresses are never guessed (server layouts differ), pass a rank
table instead. Errors are one line (UserError; the CLI prints it and exits 2). Nothing here imports TensorFlow.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

from unet_perf import cluster as cluster_lib
from unet_perf.errors import UserError


HCCN_CONF = "/etc/hccn.conf"
DRIVER_TOOLS = "/usr/local/Ascend/driver/tools"  # where the driver installs hccn_tool (often not on PATH)


def hccn_tool_path():
    """The hccn_tool executable: on PATH, else in DRIVER_TOOLS; None when neither has it."""
    found = shutil.which("hccn_tool")
    if found:
        return found
    candidate = os.path.join(DRIVER_TOOLS, "hccn_tool")
    return candidate if os.access(candidate, os.X_OK) else None


def probe_device_ip(device_id):
    """The device's NIC address from `hccn_tool`, or None when the tool is missing or says nothing usable."""
    tool = hccn_tool_path()
    if tool is None:
        return None
    try:
        output = subprocess.run([tool, "-i", str(device_id), "-ip", "-g"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, universal_newlines=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"ipaddr:\s*([0-9.]+)", output)
    return match.group(1) if match else None


def hccn_conf_ips(path=HCCN_CONF):
    """{device: address} from the `address_<device>=<ip>` lines of an hccn.conf; {} when it cannot be read."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (OSError, IOError):
        return {}
    return dict((int(device), address) for device, address in
                re.findall(r"^\s*address_(\d+)\s*=\s*([0-9.]+)\s*$", text, flags=re.MULTILINE))


def device_ips(devices, hccn_conf=HCCN_CONF):
    """[address of device 0..devices-1]: hccn_tool first, then `hccn_conf`; a one-line UserError naming the
    devices without an address (never a guessed one)."""
    from_conf = None
    addresses = []
    for device in range(devices):
        address = probe_device_ip(device)
        if address is None:
            from_conf = hccn_conf_ips(hccn_conf) if from_conf is None else from_conf
            address = from_conf.get(device)
        addresses.append(address)
    missing = [str(device) for device, address in enumerate(addresses) if address is None]
    if missing:
        raise UserError("no NIC address for device(s) {}: hccn_tool (PATH or {}) gave none and {} has no address_{}="
                        "; pass a rank table of this server: --rank_table FILE for tools/train_*_8p.sh, "
                        "RANK_TABLE_FILE otherwise (docs/multi_device.md)".format(
                            ",".join(missing), DRIVER_TOOLS, hccn_conf, missing[0]))
    return addresses


def generate(devices, server_id="127.0.0.1", device_ip=None, hccn_conf=HCCN_CONF):
    """A one-server rank table dict for devices 0..devices-1 (rank i = device i).

    Args:
        devices: number of devices (1..8 on a training server).
        server_id: the server's address as HCCL should see it.
        device_ip: function device_id -> NIC address; default `device_ips` (hccn_tool, then hccn_conf, else a
            UserError).
        hccn_conf: the hccn.conf to read when hccn_tool gives nothing.
    """
    if not 1 <= devices <= 16:
        raise UserError("a generated rank table needs 1..16 devices, got {}; pass --rank_table for larger "
                        "jobs".format(devices))
    addresses = [device_ip(device) for device in range(devices)] if device_ip else device_ips(devices, hccn_conf)
    return {
        "server_count": "1",
        "server_list": [{
            "server_id": server_id,
            "device": [{"device_id": str(device), "device_ip": addresses[device], "rank_id": str(device)}
                       for device in range(devices)],
        }],
        "status": "completed",
        "version": "1.0",
    }


def read(path):
    """[(rank_id, server_index, server_id, device_id)] of a rank table file, sorted by rank; UserError when it is
    not a valid table (the checks of cluster.from_rank_table, plus integer device ids)."""
    size = _device_count(path)
    cluster_lib.from_rank_table(path, 0, size)  # validates the layout and the ranks 0..size-1
    with open(path) as handle:
        table = json.load(handle)
    entries = []
    for index, server in enumerate(table["server_list"]):
        for device in server.get("device", []):
            try:
                device_id = int(device["device_id"])
            except (KeyError, TypeError, ValueError):
                raise UserError("RANK_TABLE_FILE {}: a device entry has no integer device_id: {}".format(path,
                                                                                                       device))
            entries.append((int(device["rank_id"]), index, str(server.get("server_id", "?")), device_id))
    return sorted(entries)


def _device_count(path):
    try:
        with open(path) as handle:
            table = json.load(handle)
        return sum(len(server.get("device", [])) for server in table.get("server_list", []))
    except (OSError, IOError, ValueError, AttributeError, TypeError):
        return 1  # from_rank_table reports what is wrong with the file


def server_ranks(path, rank_size, server_index=0):
    """[(rank_id, device_id)] of server `server_index` in the table at `path`, after checking that the table has
    exactly `rank_size` devices (the one-line error of a mismatched RANK_SIZE)."""
    cluster_lib.from_rank_table(path, 0, rank_size)
    entries = read(path)
    servers = sorted(set(entry[1] for entry in entries))
    if server_index not in servers:
        raise UserError("--server_index {} is out of range: RANK_TABLE_FILE {} lists {} server(s) (0..{})".format(
            server_index, path, len(servers), len(servers) - 1))
    return [(rank, device) for rank, index, _, device in entries if index == server_index]


def device_of_rank(path, rank):
    """(server_id, device_id) of global `rank` in the table at `path`."""
    for entry_rank, _, server_id, device_id in read(path):
        if entry_rank == rank:
            return server_id, device_id
    raise UserError("RANK_ID={} is not in RANK_TABLE_FILE {}".format(rank, path))


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m unet_perf.rank_table", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command")
    make = commands.add_parser("generate", help="write a one-server rank table", allow_abbrev=False)
    make.add_argument("--devices", type=int, default=8)
    make.add_argument("--output", required=True)
    make.add_argument("--server_id", default="127.0.0.1")
    make.add_argument("--hccn_conf", default=HCCN_CONF, help="read address_<device>= here when hccn_tool gives none")
    ranks = commands.add_parser("ranks", help="print 'rank device' for each rank of one server", allow_abbrev=False)
    ranks.add_argument("--rank_table", required=True)
    ranks.add_argument("--rank_size", type=int, required=True)
    ranks.add_argument("--server_index", type=int, default=0)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            table = generate(args.devices, args.server_id, hccn_conf=args.hccn_conf)
            directory = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(directory, exist_ok=True)
            with open(args.output, "w") as handle:
                json.dump(table, handle, indent=2)
            print(args.output)
        elif args.command == "ranks":
            for rank, device in server_ranks(args.rank_table, args.rank_size, args.server_index):
                print(rank, device)
        else:
            build_parser().print_usage(sys.stderr)
            return 2
    except UserError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
