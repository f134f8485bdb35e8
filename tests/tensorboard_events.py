"""Read the scalars of TensorBoard event files (test helper): TFRecord framing, tensorboardX's Event protobuf."""
import glob
import os
import struct

from tensorboardX.proto import event_pb2


def scalars(logdir, tag: str) -> dict:
    """{step: value} of scalar `tag` over every event file under `logdir`."""
    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, '**', 'events.*'), recursive=True)):
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = value.simple_value
    return out
