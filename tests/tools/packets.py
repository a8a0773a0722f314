#!/usr/bin/python3
"""Crafted packets for the end-to-end tests, with scapy (Debian's python3-scapy).

Each command sends or receives a bounded number of packets and exits; nothing here loops
without a limit. Addresses come from the test, which only uses documentation and private ranges.

  packets.py lsrr SRC DST HOP PORT             IPv4 TCP SYN to DST with a loose source route via HOP
  packets.py ssrr SRC DST HOP PORT             the same with a strict source route
  packets.py srh SRC DST SEGMENT PORT          IPv6 TCP SYN to DST with a segment routing header
                                               whose next segment is SEGMENT (segments left 1)
  packets.py nd TYPE SRC DST                   ICMPv6 ND message TYPE (133-137), hop limit 255
  packets.py syn SRC DST PORT                  a plain TCP SYN (the control packet)
  packets.py ipip SRC DST INNER_DST PORT       IPv4-in-IPv4 to DST carrying a SYN to INNER_DST
  packets.py l2syn IFACE MAC SRC DST PORT       a TCP SYN in an Ethernet frame to MAC, sent on IFACE
  packets.py tun-write DEV SRC DST:PORT...     attach to TUN device DEV, write a SYN per DST:PORT
  packets.py tun-read DEV SECONDS              attach to TUN device DEV, print "DST PORT" for each
                                               TCP packet the host sends into it, for SECONDS
"""

import fcntl
import os
import select
import struct
import sys
import time

from scapy.all import IP, IPv6, TCP, ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6ND_RA, ICMPv6ND_RS
from scapy.all import ICMPv6ND_Redirect, IPOption_LSRR, IPOption_SSRR, Ether, conf, send, sendp
from scapy.layers.inet6 import IPv6ExtHdrSegmentRouting

conf.verb = 0
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SPORT = 40001


def syn(port):
    return TCP(sport=SPORT, dport=int(port), flags="S", seq=1)


def open_tun(dev):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(argv):
    command, args = argv[1], argv[2:]
    if command in ("lsrr", "ssrr"):
        src, dst, hop, port = args
        option = IPOption_LSRR if command == "lsrr" else IPOption_SSRR
        send(IP(src=src, dst=dst, options=[option(routers=[hop])]) / syn(port))
    elif command == "srh":
        src, dst, segment, port = args
        # Segments are listed last hop first: segments[segments_left] is the active one (DST).
        header = IPv6ExtHdrSegmentRouting(addresses=[segment, dst], segleft=1)
        send(IPv6(src=src, dst=dst) / header / syn(port))
    elif command == "nd":
        kind, src, dst = args
        message = {
            "133": ICMPv6ND_RS(),
            "134": ICMPv6ND_RA(),
            "135": ICMPv6ND_NS(tgt=dst),
            "136": ICMPv6ND_NA(tgt=src),
            "137": ICMPv6ND_Redirect(tgt=dst, dst=dst),
        }[kind]
        send(IPv6(src=src, dst=dst, hlim=255) / message)
    elif command == "syn":
        src, dst, port = args
        packet = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
        send(packet / syn(port))
    elif command == "ipip":
        src, dst, inner, port = args
        send(IP(src=src, dst=dst, proto=4) / IP(src=src, dst=inner) / syn(port))
    elif command == "l2syn":
        iface, mac, src, dst, port = args
        packet = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
        sendp(Ether(dst=mac) / packet / syn(port), iface=iface)
    elif command == "tun-write":
        dev, src, targets = args[0], args[1], args[2:]
        fd = open_tun(dev)
        for target in targets:
            dst, port = target.rsplit(":", 1)
            os.write(fd, bytes(IP(src=src, dst=dst) / syn(port)))
        os.close(fd)
    elif command == "tun-read":
        dev, seconds = args[0], float(args[1])
        fd = open_tun(dev)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65535)
            if data and data[0] >> 4 == 4:
                packet = IP(data)
                if packet.haslayer(TCP):
                    print(packet.dst, packet[TCP].dport, flush=True)
        os.close(fd)
    else:
        sys.exit(f"unknown command {command}; see the module docs")


if __name__ == "__main__":
    main(sys.argv)
