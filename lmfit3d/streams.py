"""Network outputs of live capture (``lmfit3d live``): Live Link Face packets over UDP and VMC bundles
over OSC, their destinations and senders.

**Live Link Face** (Unreal's LiveLinkFace plugin, the packet of Epic's Live Link Face app, version 6),
all big-endian (Unreal's network byte order serialisation)::

    uint8    packet version (6)
    int32    device id length N, then N bytes UTF-8 (no terminator)
    int32    subject name length M, then M bytes UTF-8
    int32    frame number, float32 sub-frame, int32 frame rate numerator, int32 denominator
             (Unreal's FQualifiedFrameTime)
    uint8    value count (61)
    61 x float32   the 52 ARKit blendshapes in Unreal's EARFaceBlendShape order (:data:`LIVELINK_SHAPES`:
             JawLeft before JawRight, MouthLeft before MouthRight, unlike the ARKit CSV's column
             order), then HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw/Pitch/Roll, RightEyeYaw/Pitch/Roll
             as Unreal's ARKit source maps them: degrees / 180 (-1..1 for -180..180 degrees).

**VMC** (Virtual Motion Capture protocol, OSC over UDP): one bundle per frame with ``/VMC/Ext/OK 1``,
``/VMC/Ext/T`` (seconds), ``/VMC/Ext/Root/Pos`` (``root`` at the origin), ``/VMC/Ext/Bone/Pos`` for
``Head`` (its rotation relative to facing the camera), ``LeftEye`` and ``RightEye`` (in the head),
``/VMC/Ext/Blend/Val`` for every ARKit shape (the perfect-sync names, e.g. ``JawOpen``) and
``/VMC/Ext/Blend/Apply``.  Unity axes (left-handed, metres): the camera's x is mirrored, so the
avatar, facing the viewer, moves as the person does in the (unmirrored) video: a quaternion
(x, y, z, w) in camera axes becomes (x, -y, -z, w).  python-osc (the ``live`` extra) builds the
bundles; it is imported only when a VMC output is opened.
"""
import math
import socket
import struct
import uuid

import numpy as np

from .outputs import ARKIT_NAMES, ARKIT_POSE

LIVELINK_PORT = 11111
VMC_PORT = 39539
LIVELINK_VERSION = 6
# Unreal's EARFaceBlendShape order (the Live Link Face packet)
LIVELINK_SHAPES = ARKIT_NAMES[:15] + ("JawLeft", "JawRight") + ARKIT_NAMES[17:21] + ("MouthLeft", "MouthRight") \
    + ARKIT_NAMES[23:]
LIVELINK_NAMES = LIVELINK_SHAPES + ARKIT_POSE
# ARKIT_NAMES index of each packet value
_FROM_ARKIT = np.array([ARKIT_NAMES.index(n) for n in LIVELINK_SHAPES])
_PACKET_TAIL = struct.Struct(f">ifiiB{len(LIVELINK_NAMES)}f")


def parse_destination(text, default_port, option):
    """(host, port, sockaddr) of ``HOST``, ``HOST:PORT`` or ``:PORT`` (host 127.0.0.1); ValueError
    naming ``option`` when the port is not 1-65535 or the host does not resolve."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host, port = port, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"{option} {text!r}: port must be a number 1-65535") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{option} {text!r}: port {port} out of range 1-65535")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"{option} {text!r}: cannot resolve host {host!r} ({exc})") from None
    return host, port, info[0]


class UdpSender:
    """A non-blocking UDP socket sending datagrams to one destination (``parse_destination``); a
    datagram the network refuses (no receiver, full buffer) is counted in ``errors``, never waited on."""

    def __init__(self, destination):
        family, kind, proto, _, self.addr = destination
        self.sock = socket.socket(family, kind, proto)
        self.sock.setblocking(False)
        self.sent = 0
        self.errors = 0

    def send(self, data):
        try:
            self.sock.sendto(data, self.addr)
            self.sent += 1
        except OSError:
            self.errors += 1

    def close(self):
        self.sock.close()


def livelink_values(weights, angles_deg):
    """The 61 packet values (float32) from the 52 ARKit weights in ``ARKIT_NAMES`` order and the 9
    head/eye yaw, pitch, roll in degrees (``ARKIT_POSE`` order)."""
    out = np.empty(len(LIVELINK_NAMES), np.float32)
    out[:52] = np.asarray(weights)[_FROM_ARKIT]
    out[52:] = np.asarray(angles_deg) / 180.0
    return out


def encode_livelink(values, frame, fps, subject="lmfit3d", device_id=None, subframe=0.0):
    """One Live Link Face packet (bytes, layout in the module docstring).

    Parameters
    ----------
    values : (61,) float, :func:`livelink_values`.
    frame : int, frame number at ``fps``; fps : float, the frame rate (sent as a fraction n/1000 when
        not whole).
    subject, device_id : str (device id: a random UUID string when None).
    """
    values = np.asarray(values, np.float32)
    if values.shape != (len(LIVELINK_NAMES),):
        raise ValueError(f"expected {len(LIVELINK_NAMES)} values, got shape {values.shape}")
    dev = (device_id or str(uuid.uuid4())).encode("utf-8")
    name = subject.encode("utf-8")
    num, den = (int(round(fps)), 1) if abs(fps - round(fps)) < 1e-6 else (int(round(fps * 1000)), 1000)
    return (struct.pack(">Bi", LIVELINK_VERSION, len(dev)) + dev + struct.pack(">i", len(name)) + name
            + _PACKET_TAIL.pack(int(frame), float(subframe), num, den, len(LIVELINK_NAMES), *values.tolist()))


def decode_livelink(data):
    """Parse a Live Link Face packet: dict with version, device_id, subject, frame, subframe, fps
    (numerator / denominator), values (61,) float32 and names; ValueError when malformed."""
    try:
        version, n = struct.unpack_from(">Bi", data, 0)
        off = 5
        dev = bytes(data[off:off + n]).decode("utf-8")
        off += n
        (m,) = struct.unpack_from(">i", data, off)
        subject = bytes(data[off + 4:off + 4 + m]).decode("utf-8")
        off += 4 + m
        frame, sub, num, den, count = struct.unpack_from(">ifiiB", data, off)
        off += 17
        vals = np.frombuffer(data, ">f4", count, off).astype(np.float32)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed Live Link Face packet ({exc})") from None
    if off + 4 * count != len(data):
        raise ValueError(f"Live Link Face packet has {len(data) - off - 4 * count} trailing bytes")
    return dict(version=version, device_id=dev, subject=subject, frame=frame, subframe=sub, fps=num / den,
                values=vals, names=LIVELINK_NAMES[:count])


def axis_angle_quaternion(w):
    """Unit quaternion (x, y, z, w) of an axis-angle vector w (3,) radians."""
    a = float(np.linalg.norm(w))
    if a < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    s = math.sin(a / 2) / a
    return np.array([w[0] * s, w[1] * s, w[2] * s, math.cos(a / 2)])


def to_unity(q):
    """A rotation quaternion (x, y, z, w) in camera axes as Unity's (x mirrored, see the module docstring)."""
    return (float(q[0]), -float(q[1]), -float(q[2]), float(q[3]))


def vmc_bundle(weights, head, eyes, t):
    """One VMC frame as OSC bundle bytes (python-osc).

    Parameters
    ----------
    weights : (52,) ARKit weights in ``ARKIT_NAMES`` order.
    head : (4,) quaternion (x, y, z, w), the head's rotation in camera axes (identity: facing the camera).
    eyes : (2, 4) quaternions of the left and right eye in the head.
    t : float, seconds since capture started.
    """
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder

    def msg(address, *args):
        m = OscMessageBuilder(address=address)
        for a in args:
            m.add_arg(a)
        return m.build()

    b = OscBundleBuilder(IMMEDIATELY)
    b.add_content(msg("/VMC/Ext/OK", 1))
    b.add_content(msg("/VMC/Ext/T", float(t)))
    b.add_content(msg("/VMC/Ext/Root/Pos", "root", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    for bone, q in (("Head", head), ("LeftEye", eyes[0]), ("RightEye", eyes[1])):
        b.add_content(msg("/VMC/Ext/Bone/Pos", bone, 0.0, 0.0, 0.0, *to_unity(q)))
    for name, w in zip(ARKIT_NAMES, np.asarray(weights).tolist()):
        b.add_content(msg("/VMC/Ext/Blend/Val", name, float(w)))
    b.add_content(msg("/VMC/Ext/Blend/Apply"))
    return b.build().dgram
