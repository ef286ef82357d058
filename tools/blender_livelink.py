"""Receive ``lmfit3d live --livelink`` in Blender: drive shape keys named after the ARKit shapes
(``JawOpen``, ``EyeBlinkLeft`` ...) and the rotation of an object or bone from Live Link Face packets.

Run in Blender's Text Editor (Run Script) with the face mesh active; then ``lmfit3d live --camera 0
--livelink 127.0.0.1``.  Stop with ``bpy.app.timers.unregister(lmfit3d_receive)`` (or restart Blender).
Standard library only (Blender's Python); the packet layout is in lmfit3d/streams.py.
"""
import math
import socket
import struct

PORT = 11111
SHAPES = ("EyeBlinkLeft EyeLookDownLeft EyeLookInLeft EyeLookOutLeft EyeLookUpLeft EyeSquintLeft EyeWideLeft "
          "EyeBlinkRight EyeLookDownRight EyeLookInRight EyeLookOutRight EyeLookUpRight EyeSquintRight EyeWideRight "
          "JawForward JawLeft JawRight JawOpen MouthClose MouthFunnel MouthPucker MouthLeft MouthRight "
          "MouthSmileLeft MouthSmileRight MouthFrownLeft MouthFrownRight MouthDimpleLeft MouthDimpleRight "
          "MouthStretchLeft MouthStretchRight MouthRollLower MouthRollUpper MouthShrugLower MouthShrugUpper "
          "MouthPressLeft MouthPressRight MouthLowerDownLeft MouthLowerDownRight MouthUpperUpLeft MouthUpperUpRight "
          "BrowDownLeft BrowDownRight BrowInnerUp BrowOuterUpLeft BrowOuterUpRight CheekPuff CheekSquintLeft "
          "CheekSquintRight NoseSneerLeft NoseSneerRight TongueOut HeadYaw HeadPitch HeadRoll LeftEyeYaw "
          "LeftEyePitch LeftEyeRoll RightEyeYaw RightEyePitch RightEyeRoll").split()


def decode(data):
    """{name: value} of one Live Link Face packet (version 6, big-endian)."""
    n = struct.unpack_from(">i", data, 1)[0]
    off = 5 + n
    m = struct.unpack_from(">i", data, off)[0]
    off += 4 + m + 16
    count = data[off]
    return dict(zip(SHAPES, struct.unpack_from(f">{count}f", data, off + 1)))


def apply(obj, values):
    keys = obj.data.shape_keys.key_blocks if obj.data.shape_keys else {}
    for name, v in values.items():
        if name in keys:
            keys[name].value = max(0.0, min(1.0, v))
    # head rotation: degrees / 180 in the packet; Blender: x right, y forward (away from the viewer), z up
    yaw, pitch, roll = (values[k] * math.pi for k in ("HeadYaw", "HeadPitch", "HeadRoll"))
    obj.rotation_mode = "YXZ"
    obj.rotation_euler = (-pitch, roll, yaw)


def main():
    import bpy
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORT))
    sock.setblocking(False)
    obj = bpy.context.active_object

    def lmfit3d_receive():
        last = None
        while True:
            try:
                last = sock.recv(2048)
            except BlockingIOError:
                break
        if last is not None:
            apply(obj, decode(last))
        return 1 / 60

    bpy.app.timers.register(lmfit3d_receive)
    globals()["lmfit3d_receive"] = lmfit3d_receive


if __name__ == "__main__":
    main()
